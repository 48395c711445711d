"""Training to a compute budget (`--budget B`): the fair protocol of "No Train No Gain".

A strategy is given B *reference epochs*: B times the cost of one epoch of
the whole model. Every step is charged its cost from a `CostTable`, and so
is every extraction pass that fills a feature store; Drop's cheaper epochs
therefore buy it more of them, and SGD's schedule is compressed to the same
budget. The learning-rate schedule is indexed by the fraction of the budget
spent (`progress`, in base steps: the budget's spent share times B x steps
per epoch), so a cosine or linear decay reaches its end exactly when the
budget is spent.

Costs are deterministic within a comparison: they come from a table, never
from a clock during the run, so a resumed run and a rerun with the same
table take the same decisions and end with the same weights. Tables:

- "macs" (the default): training multiply-accumulates per example
  (`ldjax.models.costs`): a step with stages [0, s) stored, [s, c) frozen and
  [c, L) trained costs sum(m[s:c]) + 3 sum(m[c:]); an extraction of stages
  [a, b) costs sum(m[a:b]) per stored view (of the padded image with the
  window crop store).
- "measure": the same entries in seconds per example, each the median time
  of a few steps of the compiled program, measured once at the start of a
  comparison, interleaved, and shared by its strategies (`measure`).
- a file: a table a run wrote (`cost_table.json` in its work directory);
  it must be for the same model, input shape and store layout.

The run records its table in its work directory and config.json. Wall time
is still measured and reported beside the reference cost.

Epochs and the last one: decisions come at epoch ends, as in Algorithm 1.
Before an epoch starts, its cost is known (its extraction, if any, and its
steps at the current cut); when the budget left does not cover all its
steps, the epoch is the last and runs only the steps the budget covers (a
partial epoch, at least one step): it is evaluated like any last epoch and
takes no decision.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ldjax import settings
from ldjax.data.augment import ViewSource
from ldjax.errors import UsageError
from ldjax.models.staged import StagedModel
from ldjax.train import scoring, steps
from ldjax.train.programs import Programs

TABLE_FILE = "cost_table.json"
SOURCES = ("macs", "measure")



@settings.group("budget", "training to a compute budget")
class BudgetSettings:
  """A run's length as a compute budget (instead of run.epochs), and what charges it."""
  reference_epochs: float | None = settings.setting(
      None, "train each strategy to a compute budget of B reference epochs (B times the cost "
      "of one epoch of the whole model, from --cost-table) instead of --epochs; the "
      "learning-rate schedule follows the fraction of the budget spent and ends with it, so "
      "cheaper epochs buy more of them (the fair comparison of No Train No Gain)",
      flat="budget", metavar="B", common=True)
  cost_table: str = settings.setting(
      "macs", "the costs --budget charges: macs (training multiply-accumulates, "
      "deterministic; default), measure (median step times measured once at the start, "
      "interleaved, shared by the strategies) or a JSON file written by a run "
      "(cost_table.json)", metavar="macs|measure|FILE")

  def check(self):
    if self.reference_epochs is not None:
      settings.check_float(self.reference_epochs, "budget.reference_epochs",
                           "a finite number >= 1 (reference epochs; every strategy's first "
                           "epoch trains the whole model)", lambda v: v >= 1)
    if not isinstance(self.cost_table, str) or not self.cost_table:
      raise UsageError(f"budget.cost_table must be macs, measure or a file, got "
                       f"{self.cost_table!r}")


@dataclasses.dataclass(frozen=True)
class CostTable:
  """Per-example costs of a model's steps and extractions, in `unit`.

  `train[(s, c)]`: a train step with stages [0, s) read from a store, [s, c)
  frozen and [c, L) trained; `extract[(a, b)]`: stages [a, b) in inference on
  one stored view. Entries missing from a measured table are derived from the
  nearest measured ones (`train_cost`, `extract_cost`).
  """
  source: str
  unit: str
  model: str
  stage_names: tuple[str, ...]
  image_shape: tuple[int, ...]
  view_shape: tuple[int, ...]
  train: dict[tuple[int, int], float]
  extract: dict[tuple[int, int], float]

  @classmethod
  def from_macs(cls, model: str, stage_names: Sequence[str], image_shape, view_shape,
                macs: Sequence[int], view_macs: Sequence[int]) -> CostTable:
    """The deterministic table of training MACs (see the module docstring)."""
    n = len(macs)
    train = {(s, c): float(sum(macs[s:c]) + 3 * sum(macs[c:]))
             for c in range(n) for s in range(c + 1)}
    extract = {(a, b): float(sum(view_macs[a:b])) for b in range(1, n + 1) for a in range(b)}
    return cls("macs", "MACs per example", model, tuple(stage_names), tuple(image_shape),
               tuple(view_shape), train, extract)

  def train_cost(self, store_cut: int, cut: int) -> float:
    if (store_cut, cut) in self.train:
      return self.train[store_cut, cut]
    # Not measured (a store at s that could not move to c): the head's step at c plus
    # the frozen stages [s, c) in inference, as their extraction costs.
    return self.train[cut, cut] + self.extract_cost(store_cut, cut)

  def extract_cost(self, start: int, stop: int) -> float:
    if (start, stop) in self.extract:
      return self.extract[start, stop]
    return self.extract[0, stop] - self.extract[0, start]

  def epoch_cost(self, num_examples: int) -> float:
    """One reference epoch: the whole model trained on every example."""
    return num_examples * self.train_cost(0, 0)

  def to_json(self) -> dict:
    return {"source": self.source, "unit": self.unit, "model": self.model,
            "stage_names": list(self.stage_names), "image_shape": list(self.image_shape),
            "view_shape": list(self.view_shape),
            "train": {f"{s},{c}": v for (s, c), v in sorted(self.train.items())},
            "extract": {f"{a},{b}": v for (a, b), v in sorted(self.extract.items())}}

  @classmethod
  def from_json(cls, d: dict, where: str) -> CostTable:
    try:
      pairs = lambda m: {tuple(int(i) for i in k.split(",")): float(v)   # noqa: E731
                         for k, v in m.items()}
      table = cls(str(d["source"]), str(d["unit"]), str(d["model"]),
                  tuple(str(s) for s in d["stage_names"]), tuple(int(i) for i in d["image_shape"]),
                  tuple(int(i) for i in d["view_shape"]), pairs(d["train"]), pairs(d["extract"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise UsageError(f"budget.cost_table {where}: not a cost table ({type(e).__name__}: {e}); "
                       "give a cost_table.json that a run wrote, or macs") from None
    values = [*table.train.values(), *table.extract.values()]
    if (0, 0) not in table.train or not all(math.isfinite(v) and v >= 0 for v in values) \
        or table.train[0, 0] <= 0:
      raise UsageError(f"budget.cost_table {where}: needs a positive whole-model step cost (0,0) "
                       "and finite costs >= 0")
    return table

  def check_for(self, model: str, stage_names: Sequence[str], num_conv: int, image_shape,
                view_shape, where: str) -> None:
    """UsageError unless the table was made for this model, input and store layout."""
    mine = (self.model, list(self.stage_names), list(self.image_shape), list(self.view_shape))
    theirs = (model, list(stage_names), list(image_shape), list(view_shape))
    if mine != theirs:
      raise UsageError(f"budget.cost_table {where} was made for {self.model} on "
                       f"{'x'.join(map(str, self.image_shape))} inputs (views "
                       f"{'x'.join(map(str, self.view_shape))}), this run is {model} on "
                       f"{'x'.join(map(str, image_shape))} (views "
                       f"{'x'.join(map(str, view_shape))}); use macs or measure")
    n = num_conv   # cuts 1 .. num_conv - 1 (the last conv stage is never dropped)
    need = [(0, 0)] + [(0, c) for c in range(1, n)] + [(c, c) for c in range(1, n)]
    missing = [k for k in need if k not in self.train]
    missing += [(0, b) for b in range(1, n) if (0, b) not in self.extract]
    if missing:
      raise UsageError(f"budget.cost_table {where} lacks entries {missing[:3]}; give a table "
                       "of this model's every cut")


def load_table(spec: str) -> CostTable:
  """A cost table file (`--cost-table FILE`); UsageError if missing or malformed."""
  path = Path(spec)
  if path.is_dir():
    path = path / TABLE_FILE
  if not path.is_file():
    raise UsageError(f"budget.cost_table {spec}: no such file; give macs, measure or the "
                     f"{TABLE_FILE} of a run")
  try:
    d = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UsageError(f"budget.cost_table {spec}: not readable JSON ({e})") from None
  if not isinstance(d, dict):
    raise UsageError(f"budget.cost_table {spec}: not a cost table (a JSON object is expected)")
  return CostTable.from_json(d, spec)


@dataclasses.dataclass
class Budget:
  """A run's budget and what it has spent, in the table's unit."""
  table: CostTable
  reference_epochs: float     # B
  num_examples: int           # of one epoch (all processes)
  batch_size: int
  spent: float = 0.0

  @property
  def total(self) -> float:
    return self.reference_epochs * self.table.epoch_cost(self.num_examples)

  @property
  def base_step(self) -> float:
    """One step of the whole model at --batch-size: the schedule's unit."""
    return self.batch_size * self.table.train_cost(0, 0)

  @property
  def total_steps(self) -> int:
    """The schedule's length in base steps (B x steps per epoch)."""
    return max(1, round(self.total / self.base_step))

  @property
  def done(self) -> bool:
    # Less than one step of the cheapest head is not an epoch.
    return self.total - self.spent < 1e-9 * self.total

  def spent_epochs(self) -> float:
    return self.spent / self.table.epoch_cost(self.num_examples)

  def step_cost(self, store_cut: int, cut: int, batch: int) -> float:
    return batch * self.table.train_cost(store_cut, cut)

  def extraction_cost(self, start: int, stop: int, views: int) -> float:
    return views * self.num_examples * self.table.extract_cost(start, stop)

  def steps_left(self, step_cost: float, after: float = 0.0) -> int:
    """Whole steps of `step_cost` the budget covers after spending `after` more."""
    left = self.total - self.spent - after
    return max(0, math.floor(left / step_cost + 1e-9))

  def progress(self) -> float:
    """The schedule's position: base steps' worth spent."""
    return self.spent / self.base_step

  def to_json(self) -> dict:
    return {"reference_epochs": self.reference_epochs, "spent": self.spent,
            "spent_reference_epochs": self.spent_epochs(), "unit": self.table.unit,
            "source": self.table.source}


def table_for(spec: str, model: StagedModel, programs: Programs) -> CostTable:
  """The table of `--cost-table` `spec` for `model`'s `programs`: training MACs ("macs",
  also what "measure" starts from) or a file, checked against them."""
  image_shape, view_shape = programs.net.image_shape, programs.view_net.image_shape
  if spec not in SOURCES:
    table = load_table(spec)
    table.check_for(model.name, model.stage_names, model.num_conv, image_shape, view_shape,
                    spec)
    return table
  return CostTable.from_macs(model.name, model.stage_names, image_shape, view_shape,
                             programs.macs, programs.view_macs)


def budget_for(table: CostTable, reference_epochs: float | None,
               programs: Programs) -> tuple[Budget | None, Programs]:
  """(budget, programs): the budget of `reference_epochs` (None: no budget) charged from
  `table`, and `programs` with the learning-rate schedule it sets."""
  if reference_epochs is None:
    return None, programs.with_budget(None)
  budget = Budget(table, reference_epochs, programs.n_train, programs.batch_size)
  return budget, programs.with_budget(budget.total_steps)


def measure(model: StagedModel, programs: Programs, variables: Sequence[dict],
            opt_states: Sequence, source: ViewSource, *, seed: int, local_batch: int,
            repeats: int = 5) -> CostTable:
  """The "measure" table of `model`'s `programs`: seconds per example of each program,
  with the host work that feeds it.

  `variables` and `opt_states` are a run's (on the programs' devices); `source` is
  this process's training images as its stores' views (`ViewSource`), augmented with
  `seed` as a run's first epoch; `local_batch` this process's rows of a batch.

  Compiles the whole model's step, Freeze's step at each cut (0, c), Drop's head
  step at each cut (c, c) and the extraction of stages [0, c), runs each once to
  warm up, then `repeats` rounds that time one call of every program in turn
  (interleaved, so a slow moment of the machine touches them all alike), and keeps
  each program's median. What is timed is what a run does per batch:
  - a step on images: the batch's augmented images made on the host, put on the
    devices, the step;
  - a head step: its rows gathered from a store-sized array of features (random
    rows, as an epoch reads them), put, the step;
  - an extraction: the stored views made from the images (`source`), put, the
    stages, the output brought back to the host and written into a store array.
  The values are zeros: a step's time does not depend on them. Nothing of
  `variables` and `opt_states` changes (they are copied before the steps donate them).
  Compile times are not in the table (they depend on the machine and its cache; a
  run reports them beside the budget).
  """
  n = model.num_conv
  batch = local_batch
  placement = programs.placement
  put = placement.put_local
  key = placement.replicate(jax.random.key(seed))
  images, augment = source.images, source.augment
  rng = np.random.default_rng(0)
  idx = rng.choice(len(images), batch, replace=False)
  draws = augment.draws(seed, 0, len(images))
  calls = {}
  for cut_pair in [(0, 0)] + [(0, c) for c in range(1, n)] + [(c, c) for c in range(1, n)]:
    store_cut, cut = cut_pair
    step = programs.step(store_cut, cut).fn
    if store_cut == 0:
      read = lambda: draws.images(images, idx)   # noqa: E731
    else:   # a store of up to 64 MB: its rows read at random
      shape = programs.shapes[store_cut - 1]
      row_bytes = int(np.prod(shape)) * programs.feature_dtype.itemsize
      rows = max(batch, min(augment.views * len(images), (64 << 20) // row_bytes))
      feats = np.zeros((rows, *shape), programs.feature_dtype)
      read = lambda f=feats: f[np.sort(rng.choice(len(f), batch, replace=False))]  # noqa: E731
    y = put(np.zeros(batch, np.int32))
    state = jax.tree.map(jnp.copy, steps.head_state(variables, opt_states, cut))
    carry = [state, placement.replicate(scoring.init(state.params))]
    frozen = variables[store_cut:cut]

    def call(step=step, carry=carry, frozen=frozen, read=read, y=y):
      state, scores, m = step(*carry, frozen, put(read()), y, key, np.int32(0),
                              np.float32(0))
      carry[:] = [state, scores]
      jax.block_until_ready(m)
    calls["train", cut_pair] = call
  view_rows = np.arange(batch) % len(source)
  for c in range(1, n):
    extract = programs.extraction(0, c)
    on_devices = placement.local_rows(functools.partial(extract.fn, variables[:c]))
    dest = np.empty((batch, *programs.view_net.shapes[c - 1]), programs.feature_dtype)

    def call(f=on_devices, dest=dest):
      dest[...] = np.asarray(f(source[view_rows]))
    calls["extract", (0, c)] = call
  per = {k: v / programs.batch_size for k, v in _medians(calls, repeats).items()}
  return CostTable("measure", "seconds per example", model.name, tuple(model.stage_names),
                   tuple(programs.net.image_shape), tuple(programs.view_net.image_shape),
                   {k: v for (kind, k), v in per.items() if kind == "train"},
                   {k: v for (kind, k), v in per.items() if kind == "extract"})


def _medians(calls: dict, repeats: int) -> dict:
  """{key: median seconds of calls[key]()}: each called once to warm up, then `repeats`
  rounds that call every one in turn (interleaved)."""
  times = {k: [] for k in calls}
  for call in calls.values():
    call()
  for _ in range(repeats):
    for k, call in calls.items():
      t0 = time.perf_counter()
      call()
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}
