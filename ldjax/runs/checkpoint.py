"""Per-epoch checkpoints of a run, with orbax's CheckpointManager.

Each checkpoint holds two items: `state`, the arrays (all stage variables,
trainable and BatchNorm statistics, and the per-stage optimizer states), and
`meta`, a JSON object with everything else the run needs to continue: the
epoch, the drop state (cut, stored scores of dropped stages, drop events),
a pending extraction, elapsed times and MAC totals, the feature store's
manifest path, and the settings that must not change across a resume.
Orbax writes each step to a temporary directory and renames it when
complete, so a checkpoint is either whole or absent. Saving is asynchronous:
`save` copies the arrays to host memory (the next train step donates the
device buffers) and orbax writes them in a background thread while training
goes on; the next `save`, `wait` and `close` wait for it to be committed.

Randomness needs no saved state: data order is a function of (seed, epoch)
and each step's key is `fold_in(key(seed), step)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ldjax.errors import UsageError

KEEP = 3  # last checkpoints kept


class Checkpointer:
  """Saves and restores one run's checkpoints under `directory`."""

  def __init__(self, directory: str | os.PathLike, keep: int = KEEP):
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=True),
        item_names=("state", "meta"))

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state: Any, meta: dict) -> None:
    """Starts writing checkpoint `epoch`; returns once `state` is copied to the host."""
    host = jax.tree.map(lambda a: np.array(a, copy=True), jax.device_get(state))
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    """Blocks until the last `save` is committed."""
    self.manager.wait_until_finished()

  def restore_meta(self, epoch: int | None = None) -> dict:
    """The JSON item of `epoch` (default: the latest), without reading any array."""
    epoch = self.latest_epoch() if epoch is None else epoch
    out = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, like: Any, epoch: int | None = None) -> Any:
    """The arrays of `epoch` (default: the latest), in the structure of `like`.

    Check `restore_meta(...)["fingerprint"]` first: arrays of another
    configuration fail inside orbax with a less helpful message.
    """
    epoch = self.latest_epoch() if epoch is None else epoch
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return out["state"]

  def close(self) -> None:
    """Waits for a save in flight, then releases orbax's resources."""
    self.manager.wait_until_finished()
    self.manager.close()


def check_compatible(saved: dict, current: dict) -> None:
  """UsageError naming the first setting that differs between a checkpoint and this run."""
  for key, value in current.items():
    if key in saved and _normalize(saved[key]) != _normalize(value):
      raise UsageError(
          f"cannot resume: the checkpoint was made with {key}={saved[key]!r} but this run has "
          f"{key}={value!r}; use the original settings or another --workdir")


def _normalize(v):
  if isinstance(v, (list, tuple)):
    return [_normalize(x) for x in v]
  if isinstance(v, np.generic):
    return v.item()
  return v
