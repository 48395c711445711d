"""Training further from a finished run: new data, the dropped prefix kept dropped.

The paper names data that arrives over time as where Learn & Drop helps most:
stages that stopped learning on the first data stay dropped, so on new data
their output maps are computed once and only the head trains.

`Start` is what one strategy's run begins with: its variables and its drop
state. `start_from_run(run_path, strategy)` reads a finished run (its
`weights.safetensors`, `config.json` and `summary.json`) and gives the start
of a run that continues it on other data:

- the variables are the run's final weights;
- for Freeze and Drop the cut stays where the run left it, and the
  standardized scores of the dropped stages stay the reference of later
  decisions (Eq. 4's median test); a Drop run's first epoch computes the
  dropped prefix's features of the new data once (the pending extraction of
  Algorithm 1's save_features epoch) and every later epoch reads them; a
  Freeze run keeps those stages frozen in the forward pass; SGD trains all;
- drop events, the warm-up and the epochs are the new run's own: with
  `--warmup 0` the new run may drop further from its first epoch on.
- optimizer states start fresh (the learning-rate schedule is the new run's);
- inputs are normalized with the first data's mean and std (recorded in
  config.json), not the new data's, so the dropped prefix sees its inputs on
  the scale it learned.

`stream_chunks(spec)` splits `--data-schedule` into its datasets. A stream
trains on each chunk in order for `--epochs` epochs, each chunk a run that
continues the previous chunk's (`ldjax.train.compare.run_stream`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ldjax import settings
from ldjax.data.datasets import Dataset
from ldjax.errors import UsageError
from ldjax.jsonio import read_json
from ldjax.models.staged import StagedModel
from ldjax.models.zoo import ModelSettings
from ldjax.strategy import Strategy
from ldjax.train.decisions import DropState
from ldjax.weights import WEIGHTS_FILE, init_from


@settings.group("start", "where the weights start from")
class StartSettings:
  """The weights a run starts from: a fresh init, given weights, or a finished run."""
  init_from: str | None = settings.setting(
      None, "start from these weights: an ldjax run's (its weights.safetensors) or "
      "torchvision's / timm's ResNet and VGG state dicts saved as .safetensors; a classifier "
      "for another number of classes is re-initialised (see --keep-classifier); Learn & "
      "Drop's warm-up and decisions run as usual", metavar="RUN_DIR|FILE.safetensors",
      common=True)
  keep_classifier: bool = settings.setting(
      False, "with --init-from or --continue-from: refuse weights whose classifier has "
      "another number of classes instead of re-initialising it")
  continue_from: str | None = settings.setting(
      None, "train a finished run further on --dataset: its final weights, and for "
      "freeze/drop its dropped stages stay dropped (their features of the new data are "
      "computed once, then only the head trains); model, width and batch norm default to "
      "that run's; a comparison directory continues each strategy from its own run",
      metavar="RUN_DIR")

  def check(self):
    settings.check_text(self.init_from, "start.init_from")
    settings.check_text(self.continue_from, "start.continue_from")
    settings.check_bool(self.keep_classifier, "start.keep_classifier")
    if self.init_from is not None and self.continue_from is not None:
      raise UsageError("start.init_from and start.continue_from both give the initial "
                       "weights; use one of them")
    if self.keep_classifier and self.init_from is None and self.continue_from is None:
      raise UsageError("start.keep_classifier applies to start.init_from or "
                       "start.continue_from only")


@dataclasses.dataclass(frozen=True)
class Start:
  """The variables and drop state one strategy's run starts from."""
  variables: list[dict]
  drop: DropState | None = None           # None: nothing dropped (a fresh start)
  source: str | None = None               # the run it continues
  data_seen: tuple[str, ...] = ()         # the datasets trained on before, in order
  # The input normalization (mean, std per channel) the weights were trained with.
  normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def run_path_for(path: str | Path, strategy: str) -> Path:
  """The finished run `path` names for `strategy`: `path` itself if it is one run,
  else its subdirectory of that strategy (a comparison's work directory)."""
  path = Path(path)
  if not path.is_dir():
    raise UsageError(f"start.continue_from {str(path)!r} is not a directory; give the work "
                     "directory of a finished run")
  if (path / "config.json").exists() and not (path / strategy / "config.json").exists():
    return path
  if (path / strategy / "config.json").exists():
    return path / strategy
  raise UsageError(f"start.continue_from {str(path)!r} holds no run of {strategy!r}; give a run "
                   "directory, or a comparison directory with a subdirectory per strategy")


def previous_run(run_path: Path) -> tuple[dict, dict]:
  """(config.json, summary.json) of a finished run; UsageError if it is not one."""
  if not (run_path / "summary.json").exists():
    raise UsageError(f"{run_path} is not a finished run (no summary.json); finish it with "
                     "--resume first, or continue from another run")
  if not (run_path / WEIGHTS_FILE).exists():
    raise UsageError(f"{run_path} has no {WEIGHTS_FILE} (written by ldjax runs since "
                     "weights are saved); rerun it, or start with start.init_from a weights file")
  return read_json(run_path / "config.json"), read_json(run_path / "summary.json")


def continued_drop_state(summary: dict, strategy: str) -> DropState | None:
  """The drop state a run continuing `summary`'s run starts with (see the module doc)."""
  s = Strategy(strategy)
  state = summary.get("drop_state")
  if not s.decides or state is None:
    return None
  before = DropState.from_json(state)
  # Stages whose store could not be written stayed frozen (a fallback): their cut holds.
  cut = before.cut
  if cut == 0:
    return DropState(dropped_std_scores=before.dropped_std_scores)
  return DropState(cut=cut, store_cut=0, dropped_std_scores=before.dropped_std_scores,
                   pending=(0, cut) if s.caches else None)


def data_seen(config: dict, summary: dict) -> tuple[str, ...]:
  """The datasets a run and the runs it continued trained on, oldest first."""
  return tuple(summary.get("data_seen") or [config.get("dataset", "?")])


def check_same_model(config: dict, run_path: Path, *, model: str, width: float,
                     batch_norm: bool, image_shape: Sequence[int]) -> None:
  """UsageError unless the new run has the previous run's architecture and input shape."""
  wanted = {"model": config.get("model"), "width": config.get("width"),
            "batch_norm": config.get("batch_norm", True)}
  got = {"model": model, "width": width, "batch_norm": batch_norm}
  for key in wanted:
    if wanted[key] is not None and wanted[key] != got[key]:
      raise UsageError(f"start.continue_from {run_path} was trained with {key} {wanted[key]}, "
                       f"this run has {got[key]}; drop the flag or match it")
  before = config.get("image_shape")
  if before is not None and list(before) != list(image_shape):
    raise UsageError(f"start.continue_from {run_path} was trained on "
                     f"{'x'.join(map(str, before))} inputs, the new data is "
                     f"{'x'.join(map(str, image_shape))}; continue on data of the same shape")


def stream_chunks(spec: str) -> list[str]:
  """The datasets of `--data-schedule` ("A,B,C" or "A;B;C" when a spec holds commas)."""
  parts = [p.strip() for p in (spec.split(";") if ";" in spec else spec.split(","))]
  if not spec.strip() or any(not p for p in parts):
    raise UsageError(f"--data-schedule {spec!r} has an empty chunk; give datasets "
                     "separated by commas, e.g. idx:DIR1,idx:DIR2 (or ';' if a path has commas)")
  if len(parts) < 2:
    raise UsageError("--data-schedule needs at least two chunks; for one dataset use --dataset")
  return parts


def starts_from(start: StartSettings, arch: ModelSettings, strategies: Sequence[str],
                model: StagedModel, data: Dataset, variables: list[dict]) -> dict[str, Start]:
  """{strategy: its Start} for a run continuing `start.continue_from` on `data`, with the
  architecture `arch`.

  `variables`: a fresh `model.init`, the template the weights are loaded into
  (a classifier for another number of classes keeps its fresh init, unless
  `start.keep_classifier`). UsageError for an unfinished run, another
  architecture or input shape, or weights that do not fit."""
  starts = {}
  for strategy in strategies:
    run_path = run_path_for(start.continue_from, strategy)
    config, summary = previous_run(run_path)
    check_same_model(config, run_path, model=arch.name, width=arch.width,
                     batch_norm=arch.batch_norm, image_shape=data.image_shape)
    loaded, _ = init_from(run_path / WEIGHTS_FILE, model, variables,
                          keep_classifier=start.keep_classifier)
    norm = None if config.get("input_mean") is None else (
        tuple(config["input_mean"]), tuple(config["input_std"]))
    starts[strategy] = Start(loaded, continued_drop_state(summary, strategy), str(run_path),
                             data_seen(config, summary), norm)
  return starts


def with_normalization(data: Dataset, starts: dict[str, Start]) -> Dataset:
  """`data` normalized as the weights it starts from were trained (the first data's
  mean and std, or ImageNet's for torchvision's weights), so the stages see their
  inputs on the scale they learned."""
  norms = {s.normalization for s in starts.values()} - {None}
  if len(norms) > 1:
    raise UsageError("the runs start.continue_from names were trained with different input "
                     "normalizations; continue them one at a time")
  if not norms:
    return data
  mean, std = norms.pop()
  return dataclasses.replace(data, mean=mean, std=std)
