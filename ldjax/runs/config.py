"""A run's settings: `Config`, nested groups owned by the modules that use them.

    Config
      run       RunSettings       here: epochs, batch size, seed, devices, TensorBoard,
                                  reader threads
      model     ModelSettings     ldjax.models.zoo
      data      DataSettings      ldjax.data.datasets
      folder    FolderOptions     ldjax.data.folder
      augment   AugmentSettings   ldjax.data.augment
      optim     OptimSettings     ldjax.train.optim
      drop      DropSettings      ldjax.train.decisions
      store     StoreSettings     ldjax.store.keeper
      eval      EvalSettings      ldjax.train.evaluation
      budget    BudgetSettings    ldjax.train.budget
      adaptive  AdaptiveSettings  ldjax.train.adaptive
      start     StartSettings     ldjax.train.continuation

Each group checks its own values when it is made and `Config` the rules that
join groups, so a `Config` that exists is valid; the checks that need the data
(`check_data`) and the strategies (`check_strategies`) run where those are
known. Errors name settings by their dotted paths (`optim.lr`); the command
line shows its flags instead (`flag_words`).

Every setting also has a flat name (`lr`), the key of config.json and of
`TrainConfig(**flat)`, which builds a Config from flat keywords as earlier
versions did. Presets (the paper's protocols, the embedded default, the
strong recipe) are TOML files in `ldjax/presets`; `load_file` reads them, a
user's TOML file, or a run's config.json.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import re
import tomllib
from pathlib import Path

from ldjax import settings
from ldjax.data.augment import AugmentSettings
from ldjax.data.batching import check_batch_split, shard_count
from ldjax.data.datasets import DataSettings, check_val_size
from ldjax.data.folder import FolderOptions
from ldjax.errors import UsageError
from ldjax.models.zoo import ModelSettings
from ldjax.store.keeper import StoreSettings
from ldjax.strategy import Strategy
from ldjax.train import reader
from ldjax.train.adaptive import AdaptiveSettings
from ldjax.train.budget import BudgetSettings
from ldjax.train.continuation import StartSettings
from ldjax.train.decisions import DropSettings
from ldjax.train.evaluation import EvalSettings
from ldjax.train.optim import OptimSettings
from ldjax.train.sharding import device_count


@settings.group("run", "the run")
class RunSettings:
  """How long a run trains, in which batches, from which seed, on how many devices."""
  epochs: int = settings.setting(
      60, "total epochs, warm-up included (ignored with --budget)", common=True)
  batch_size: int = settings.setting(256, "training batch size", common=True)
  seed: int = settings.setting(
      0, "seed of the initial weights, data order and dropout", common=True)
  devices: int | None = settings.setting(
      None, "data parallelism over the first N visible devices (default: all): each batch is "
      "split over them, weights and scores replicated; --batch-size must divide by N",
      metavar="N", resumable=True)
  tensorboard: bool = settings.setting(
      False, "also write TensorBoard event files into each run's directory (open them with "
      "'tensorboard --logdir WORKDIR'); metrics.csv is always written", resumable=True)
  reader_threads: int | None = settings.setting(
      None, "threads that read the next batches ahead while the devices compute (0: in the "
      f"loop's thread; default {reader.DEFAULT_THREADS}); the same batches either way",
      metavar="N", resumable=True)

  def check(self):
    settings.check_int(self.epochs, "run.epochs", "an integer > 0", lambda v: v > 0)
    settings.check_int(self.batch_size, "run.batch_size", "an integer > 0", lambda v: v > 0)
    settings.check_int(self.seed, "run.seed", "an integer >= 0", lambda v: v >= 0)
    if self.devices is not None:   # against the visible devices: `Config.resolved`
      settings.check_int(self.devices, "run.devices", "an integer > 0 (or unset for all)",
                         lambda v: v > 0)
    settings.check_bool(self.tensorboard, "run.tensorboard")
    if self.reader_threads is not None:
      settings.check_int(self.reader_threads, "run.reader_threads",
                         "an integer >= 0 (or unset for the default)", lambda v: v >= 0)

  @property
  def threads(self) -> int:
    """`reader_threads`, or `ldjax.train.reader.DEFAULT_THREADS` when unset."""
    return reader.DEFAULT_THREADS if self.reader_threads is None else self.reader_threads


GROUPS = {"run": RunSettings, "model": ModelSettings, "data": DataSettings,
          "folder": FolderOptions, "augment": AugmentSettings, "optim": OptimSettings,
          "drop": DropSettings, "store": StoreSettings, "eval": EvalSettings,
          "budget": BudgetSettings, "adaptive": AdaptiveSettings, "start": StartSettings}
FIELDS = [f for cls in GROUPS.values() for f in settings.fields_of(cls)]
BY_FLAT = {f.flat: f for f in FIELDS}
BY_PATH = {f.path: f for f in FIELDS}
assert len(BY_FLAT) == len(FIELDS), "two settings share a flat name"


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of one run, in groups (see the module docstring)."""
  run: RunSettings = dataclasses.field(default_factory=RunSettings)
  model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
  data: DataSettings = dataclasses.field(default_factory=DataSettings)
  folder: FolderOptions = dataclasses.field(default_factory=FolderOptions)
  augment: AugmentSettings = dataclasses.field(default_factory=AugmentSettings)
  optim: OptimSettings = dataclasses.field(default_factory=OptimSettings)
  drop: DropSettings = dataclasses.field(default_factory=DropSettings)
  store: StoreSettings = dataclasses.field(default_factory=StoreSettings)
  eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
  budget: BudgetSettings = dataclasses.field(default_factory=BudgetSettings)
  adaptive: AdaptiveSettings = dataclasses.field(default_factory=AdaptiveSettings)
  start: StartSettings = dataclasses.field(default_factory=StartSettings)

  def __post_init__(self):
    for name, cls in GROUPS.items():
      if not isinstance(getattr(self, name), cls):
        raise TypeError(f"Config.{name} must be a {cls.__name__}")
    self._check_joined()

  def _check_joined(self) -> None:
    """The rules that join groups."""
    length, where = self.length
    if not self.optim.warmup_lr_epochs < length:
      raise UsageError(f"optim.warmup_lr_epochs must be an integer in [0, {where}) = "
                       f"[0, {length}), got {self.optim.warmup_lr_epochs!r}")
    if self.data.shards is not None:
      check_batch_split(self.run.batch_size, self.data.shards)
    if (self.adaptive.max_batch_size is not None
        and self.adaptive.max_batch_size < self.run.batch_size):
      raise UsageError(f"adaptive.max_batch_size must be an integer >= run.batch_size "
                       f"({self.run.batch_size}), got {self.adaptive.max_batch_size!r}")
    if self.adaptive.max_batch_size is not None and not self.adaptive.enabled:
      raise UsageError("adaptive.max_batch_size caps adaptive.enabled; enable it or drop the "
                       "setting")
    schedule = self.drop.schedule
    if schedule and not max(schedule) < self.run.epochs:
      raise UsageError(f"drop.drop_at {self.drop.drop_at!r} needs epochs in [1, run.epochs) "
                       f"= [1, {self.run.epochs}), e.g. 2:3,4:5")
    given = self.folder.given
    if given and not self.data.name.startswith("folder:"):
      raise UsageError(f"{given[0]} applies to data.name folder:DIR only")

  @property
  def length(self) -> tuple[float, str]:
    """How long the run is, and the setting that says it: the budget, or the epochs."""
    if self.budget.reference_epochs is not None:
      return self.budget.reference_epochs, "budget.reference_epochs"
    return self.run.epochs, "run.epochs"

  def check_data(self, num_train: int, image_shape=None) -> None:
    """UsageError if the settings do not fit `num_train` training examples (before a
    validation split) of `image_shape`."""
    batch = self.run.batch_size
    if batch > num_train:
      raise UsageError(f"run.batch_size {batch} is larger than the training set "
                       f"({num_train} examples); use a smaller batch or more data")
    if self.data.val_size is not None:
      check_val_size(self.data.val_size, num_train)
      if num_train - self.data.val_size < batch:
        raise UsageError(f"data.val_size {self.data.val_size} leaves "
                         f"{num_train - self.data.val_size} training examples, fewer than "
                         f"run.batch_size {batch}")
    if image_shape is not None:
      self.augment.for_images(image_shape)

  def check_strategies(self, strategies) -> list[Strategy]:
    """The strategies parsed; UsageError for an unknown one, or a warm-up that leaves
    freeze/drop no epoch to decide in."""
    parsed = [Strategy.parse(s) for s in strategies]
    length, where = self.length
    if any(s.decides for s in parsed) and self.drop.warmup >= length:
      raise UsageError(f"drop.warmup ({self.drop.warmup}) must be smaller than {where} "
                       f"({length}) for freeze/drop to take any decision")
    return parsed

  def resolved(self) -> Config:
    """The devices and data blocks a run uses set (what config.json records): all
    devices and one block per process unless given."""
    return self.replace(devices=device_count(self.run.devices, self.run.batch_size),
                        data_shards=shard_count(self.data.shards))

  # Flat names: config.json and TrainConfig(**flat).

  @classmethod
  def from_flat(cls, **flat) -> Config:
    """A Config from flat names (`lr=0.05`, `dataset="mnist"`); UsageError for an unknown
    name (naming the closest) or a bad value."""
    groups: dict[str, dict] = {name: {} for name in GROUPS}
    for key, value in flat.items():
      f = BY_FLAT.get(key)
      if f is None:
        raise UsageError(f"unknown setting {key!r}{closest(key, BY_FLAT)}")
      groups[f.group][f.name] = value
    return cls(**{name: GROUPS[name](**values) for name, values in groups.items()})

  @classmethod
  def from_file(cls, path: str | Path) -> Config:
    """A Config from a TOML file or a run's config.json (`load_file`), the defaults
    elsewhere (no preset: the command line adds the dataset's under the file)."""
    return cls.from_flat(**load_file(path)[0])

  def flat(self) -> dict:
    """{flat name: value} of every setting (config.json's keys)."""
    return {f.flat: _plain(getattr(getattr(self, f.group), f.name)) for f in FIELDS}

  def replace(self, **changes) -> Config:
    """This Config with settings changed, by flat name or dotted path (as keywords
    `lr=0.1`, or `**{"optim.lr": 0.1}`); checked again."""
    groups = {name: {} for name in GROUPS}
    for key, value in changes.items():
      f = BY_FLAT.get(key) or BY_PATH.get(key)
      if f is None:
        raise UsageError(f"unknown setting {key!r}{closest(key, {**BY_FLAT, **BY_PATH})}")
      groups[f.group][f.name] = value
    return Config(**{name: dataclasses.replace(getattr(self, name), **values)
                     if values else getattr(self, name) for name, values in groups.items()})

  def nested(self) -> dict:
    """{group: {name: value}}: the form of a TOML config file."""
    return {name: {f.name: _plain(getattr(getattr(self, name), f.name))
                   for f in settings.fields_of(cls)} for name, cls in GROUPS.items()}


def TrainConfig(**flat) -> Config:   # noqa: N802 - the name earlier versions' scripts use
  """`Config.from_flat`: a Config from the flat names of earlier versions."""
  return Config.from_flat(**flat)


def _plain(value):
  return list(value) if isinstance(value, tuple) else value


def closest(name: str, known) -> str:
  """"; did you mean X?" for the known name most like `name`, or ""."""
  match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  if not match:   # a flat name given where a path is expected, or the other way round
    f = BY_FLAT.get(name) or BY_PATH.get(name.rpartition(".")[2])
    match = [] if f is None else [f.path if f.path in known else f.flat]
  return f"; did you mean {match[0]}?" if match else ""


def flag_words(message: str) -> str:
  """`message` with every dotted setting path replaced by its command-line flag."""
  def flag(m):
    f = BY_PATH.get(m.group(0))
    return f.flag if f is not None else m.group(0)
  return re.sub(r"\b(?:" + "|".join(GROUPS) + r")\.[a-z_]+\b", flag, message)


# Config files: TOML tables named as the groups, or a run's config.json (flat).

RECORD_KEYS = ("strategy", "strategies", "model_name", "stage_names", "num_train",
               "num_test", "image_shape", "num_classes", "input_mean", "input_std",
               "class_names", "git_revision")   # what a run's config.json records besides


def load_file(path: str | Path) -> tuple[dict, str | None]:
  """(flat settings, strategies or None) from a TOML file (tables named as the groups, and
  an optional top-level `strategy = "sgd,drop"`) or a run's config.json. UsageError for a
  missing or malformed file, or an unknown key (naming the closest)."""
  path = Path(path)
  where = str(path)
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise UsageError(f"config file {where!r} does not exist") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"config file {where!r} cannot be read: {e}") from None
  if path.suffix == ".json":
    try:
      raw = json.loads(text)
    except json.JSONDecodeError as e:
      raise UsageError(f"config file {where!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
      raise UsageError(f"config file {where!r} must hold a JSON object of settings")
    flat, strategy = {}, None
    for key, value in raw.items():
      if key in BY_FLAT:
        flat[key] = value
      elif key == "strategy":   # the run's own (of a comparison, one of its strategies)
        strategy = value
      elif key not in RECORD_KEYS:
        raise UsageError(f"config file {where!r}: unknown key {key!r}{closest(key, BY_FLAT)}")
    return flat, strategy
  try:
    raw = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise UsageError(f"config file {where!r} is not valid TOML: {e}") from None
  flat, strategy = {}, raw.pop("strategy", None)
  if strategy is not None and not isinstance(strategy, str):
    raise UsageError(f"config file {where!r}: strategy must be a string such as "
                     f"\"sgd,drop\", got {strategy!r}")
  for name, table in raw.items():
    if name not in GROUPS or not isinstance(table, dict):
      hint = (closest(name, GROUPS) if isinstance(table, dict) or name not in BY_FLAT
              else f"; put it in the [{BY_FLAT[name].group}] table")
      raise UsageError(f"config file {where!r}: unknown table {name!r}{hint} (tables: "
                       f"{', '.join(GROUPS)})")
    for key, value in table.items():
      f = BY_PATH.get(f"{name}.{key}")
      if f is None:
        raise UsageError(f"config file {where!r}: unknown key {name}.{key}"
                         f"{closest(f'{name}.{key}', BY_PATH)}")
      if f.optional and isinstance(value, str) and value.lower() == "none":
        value = None   # TOML has no null: "none" unsets an optional setting
      flat[f.flat] = value
  return flat, strategy


def parse_set(assignment: str) -> tuple[str, object]:
  """("flat name", value) of `--set group.name=value`; UsageError if malformed or unknown."""
  path, eq, text = assignment.partition("=")
  path = path.strip()
  if not eq:
    raise UsageError(f"--set {assignment!r} must be PATH=VALUE, e.g. --set optim.lr=0.05")
  f = BY_PATH.get(path)
  if f is None:
    raise UsageError(f"--set: unknown setting {path!r}{closest(path, BY_PATH)}")
  return f.flat, f.from_text(text)


# Presets: TOML files shipped in the package.

PRESETS_PACKAGE = "ldjax.presets"


def preset_names() -> list[str]:
  files = importlib.resources.files(PRESETS_PACKAGE).iterdir()
  return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
  """The file of preset `name`; UsageError naming the presets if there is none."""
  path = Path(str(importlib.resources.files(PRESETS_PACKAGE) / f"{name}.toml"))
  if not path.is_file():
    raise UsageError(f"unknown preset {name!r}{closest(name, preset_names())}; presets: "
                     f"{', '.join(preset_names())}")
  return path


def preset_summary(name: str) -> str:
  """The first comment line of a preset's file."""
  for line in preset_path(name).read_text().splitlines():
    if line.startswith("#"):
      return line.lstrip("# ").strip()
  return ""


def load_preset(name: str) -> dict:
  return load_file(preset_path(name))[0]


RECIPES = ("paper", "strong")   # paper: the dataset's preset alone; strong: its file on top


def recipe(name: str) -> dict:
  """The flat settings of a training recipe, applied over a dataset's preset."""
  settings.check_choice(name, "recipe", RECIPES)
  return {} if name == "paper" else load_preset(name)


def preset_for(dataset: str) -> dict:
  """The flat settings of a dataset's preset: the paper's protocol (MNIST's for MNIST-like
  data), or the embedded data's CPU-sized default."""
  name = dataset.split(":", 1)[0].split("/", 1)[0]
  if name == "embedded":
    return load_preset("embedded")
  if name in ("mnist", "fashion_mnist", "idx", "npz"):
    return load_preset("paper-mnist")
  if name in ("cifar10", "imagenette"):
    return load_preset(f"paper-{name}")
  return {}
