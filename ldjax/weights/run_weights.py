"""A run's final weights in its work directory, and finding the weights a path names.

`save_run_weights(run_dir, model, variables, meta)` writes

  RUN_DIR/weights.safetensors   ldjax's weights file (`ldjax.weights.ldjax_format`)
  RUN_DIR/weights/              the same arrays as an orbax checkpoint (StandardCheckpointer),
                                a list with one {"params", "batch_stats"} dict per stage

each to a temporary name first and renamed when complete, so a reader sees
the old copy or the new one, never half of one.

`weights_path(path, strategy)` is what `load_weights`, `init_from` and
`python -m ldjax.predict` accept: a `.safetensors` file; a run's work
directory (holding weights.safetensors); or a comparison's work directory
(one subdirectory per strategy, `ldjax.train.compare`), where `strategy`
picks one, or the path of the strategy's subdirectory is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ldjax.errors import UsageError
from ldjax.models.staged import StagedModel
from ldjax.strategy import NAMES as STRATEGIES
from ldjax.weights.ldjax_format import file_meta, load_safetensors, save_safetensors

WEIGHTS_FILE = "weights.safetensors"
ORBAX_DIR = "weights"


def save_run_weights(run_dir: str | os.PathLike, model: StagedModel,
                     variables: Sequence[Mapping], meta: Mapping[str, Any]) -> Path:
  """Writes RUN_DIR/weights.safetensors and the orbax copy RUN_DIR/weights/; returns the
  file's path. `meta` as for `save_safetensors` (``width`` and ``image_shape`` needed)."""
  run_dir = Path(run_dir)
  file_meta(model, variables, meta)   # a bad meta fails before anything is written
  host = [jax.tree.map(np.asarray, dict(v)) for v in variables]
  save_orbax(run_dir / ORBAX_DIR, host)
  return save_safetensors(run_dir / WEIGHTS_FILE, model, host, meta)


def save_orbax(path: Path, variables: list[dict]) -> None:
  """The orbax copy, written under a temporary name and renamed over the old one.

  By this process alone, also when it is one of several (`jax.distributed`)."""
  import orbax.checkpoint as ocp
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  old = path.with_name(f".{path.name}.old-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=alone)
  try:
    checkpointer.save(tmp.absolute(), variables)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  if path.exists():
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)


def load_orbax(path: str | os.PathLike, template: Sequence[Mapping]) -> list[dict]:
  """The orbax copy (RUN_DIR/weights, or RUN_DIR itself) restored into `template`'s structure."""
  import orbax.checkpoint as ocp
  path = Path(path)
  if (path / ORBAX_DIR).is_dir():
    path = path / ORBAX_DIR
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), list(template))
  checkpointer = ocp.StandardCheckpointer()
  try:
    return list(checkpointer.restore(path.absolute(), abstract))
  finally:
    checkpointer.close()


def strategy_dirs(path: Path) -> list[str]:
  """The strategies of a comparison directory that have weights, in strategy order."""
  return [s for s in STRATEGIES if (path / s / WEIGHTS_FILE).is_file()]


def weights_path(path: str | os.PathLike, strategy: str | None = None) -> Path:
  """The `.safetensors` file `path` names (see the module doc); UsageError if none."""
  path = Path(path)
  if not path.exists():
    raise UsageError(f"weights {str(path)!r} do not exist; give a .safetensors file or a "
                     "run's work directory")
  if not path.is_dir():
    if strategy is not None:
      raise UsageError(f"a strategy ({strategy}) picks a run of a comparison directory; "
                       f"{path} is a file")
    return path
  if strategy is not None:
    if (path / strategy / WEIGHTS_FILE).is_file():
      return path / strategy / WEIGHTS_FILE
    if (path / WEIGHTS_FILE).is_file() and not strategy_dirs(path):
      return path / WEIGHTS_FILE
    raise UsageError(f"{path} has no weights of strategy {strategy!r}"
                     + (f" (it has {', '.join(strategy_dirs(path))})" if strategy_dirs(path)
                        else ""))
  if (path / WEIGHTS_FILE).is_file():
    return path / WEIGHTS_FILE
  found = strategy_dirs(path)
  if len(found) == 1:
    return path / found[0] / WEIGHTS_FILE
  if found:
    raise UsageError(f"{path} is a comparison of {', '.join(found)}; pick one: "
                     f"{path / found[-1]} (or choose the strategy)")
  why = ("the run has not finished" if (path / "config.json").exists()
         else "not a run's work directory")
  raise UsageError(f"{path} holds no {WEIGHTS_FILE} ({why}); give a .safetensors file or "
                   "the work directory of a finished run")


def load_weights(path: str | os.PathLike, *, strategy: str | None = None
                 ) -> tuple[list[dict], dict[str, Any]]:
  """(per-stage variables as numpy arrays, metadata) of ldjax weights: a `.safetensors`
  file or a run's work directory (see `weights_path`). torchvision / timm files load
  into a model with `init_from`."""
  return load_safetensors(weights_path(path, strategy))
