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

A write that fails (a full disk, an I/O error, in this thread or in orbax's)
raises `ldjax.errors.CheckpointError` with one line, for a full disk "no
space left on DEVICE: N MB needed; free space and rerun with --resume"
(DEVICE: the mount point of the checkpoint directory). `save` first
compares the checkpoint's size with the free space, so a disk that is
already full is refused before orbax writes anything. A disk that fills
during the write makes orbax raise a ValueError from tensorstore
("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']");
the failed step's temporary directory is then removed, so its space is free
again and the last complete checkpoint stays the latest. Orbax logs that
error with tracebacks from its threads (left out while a `Checkpointer` is
open), and the writes still in flight end in orbax's closed event loop,
each printing "RuntimeError: Event loop is closed" through
`sys.unraisablehook` or asyncio's "Task (or Future) exception was never
retrieved";
from the first `Checkpointer` on, those leftovers of orbax's writes are not
printed (`_ignore_failed_write_leftovers`): the error reaches the caller
in its one line.

Randomness needs no saved state: data order is a function of (seed, epoch)
and each step's key is `fold_in(key(seed), step)`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ldjax.errors import DISK_FULL, CheckpointError, UsageError

KEEP = 3  # last checkpoints kept
# How a full disk reads inside the messages of orbax's (tensorstore's) errors.
DISK_FULL_TEXT = tuple(os.strerror(e) for e in DISK_FULL)
TMP_MARK = ".orbax-checkpoint-tmp"   # in the name of a step's directory until it is committed
SLACK_BYTES = 64 << 10   # orbax's metadata files beyond the arrays and 10%


class Checkpointer:
  """Saves and restores one run's checkpoints under `directory`."""

  def __init__(self, directory: str | os.PathLike, keep: int = KEEP):
    self.directory = Path(directory).absolute()
    self._in_flight = (None, 0)   # (epoch, bytes) of the last save started
    self._failed = False
    self._quiet = _QuietOrbaxErrors()
    logging.getLogger("absl").addFilter(self._quiet)
    _ignore_failed_write_leftovers()
    try:
      with self._writing():
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=True),
            item_names=("state", "meta"))
    except CheckpointError:
      logging.getLogger("absl").removeFilter(self._quiet)
      raise

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state: Any, meta: dict) -> None:
    """Starts writing checkpoint `epoch`; returns once `state` is copied to the host.

    Raises CheckpointError when this or the previous checkpoint cannot be written.
    """
    host = jax.tree.map(lambda a: np.array(a, copy=True), jax.device_get(state))
    self.wait()   # the previous one: orbax would wait too, but its error is that one's
    self._in_flight = (epoch, _approx_bytes(host, meta))
    with self._writing():
      self._check_free_space()
      self.manager.save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    """Blocks until the last `save` is committed; CheckpointError if it failed."""
    with self._writing():
      self.manager.wait_until_finished()

  def _check_free_space(self) -> None:
    """OSError(ENOSPC) when the disk cannot hold the checkpoint about to be written.

    Nothing is in flight here (the previous save is committed), so the free
    space is exact; orbax deletes the oldest checkpoint only after the new
    one is committed. Refused early, the write never starts, and no half
    of it has to be cleaned up.
    """
    needed = self._in_flight[1] + self._in_flight[1] // 10 + SLACK_BYTES
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return   # cannot tell: let the write itself find out
    if free < needed:
      self._in_flight = (self._in_flight[0], needed)
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))

  @contextlib.contextmanager
  def _writing(self):
    """Turns any failure of a write into a one-line CheckpointError, after removing
    the failed step's temporary directory."""
    try:
      yield
    except Exception as e:
      self._failed = True
      self._remove_temporaries()
      raise CheckpointError(self._failure_message(e)) from e

  def _failure_message(self, e: BaseException) -> str:
    epoch, nbytes = self._in_flight
    if is_disk_full(e):
      return (f"no space left on {mount_point(self.directory)}: "
              f"{max(nbytes / 1e6, 0.1):.1f} MB needed; free space and rerun with --resume")
    what = "the checkpoint directory" if epoch is None else f"checkpoint {epoch}"
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return (f"cannot write {what} in {self.directory} ({type(e).__name__}: {cause}); "
            "the last complete checkpoint is kept; fix this and rerun with --resume")

  def _remove_temporaries(self) -> None:
    """Removes uncommitted step directories (orbax's own are named `<step>{TMP_MARK}...`)."""
    with contextlib.suppress(OSError):
      for p in self.directory.iterdir():
        if TMP_MARK in p.name:
          shutil.rmtree(p, ignore_errors=True)

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
    """Waits for a save in flight, then releases orbax's resources.

    Raises CheckpointError if that save failed; after an earlier failure
    (already raised) it only releases the resources.
    """
    try:
      if not self._failed:
        self.wait()
    finally:
      with contextlib.suppress(Exception):
        self.manager.close()
      if self._failed:   # writes of the failed step that were still running are done now
        self._remove_temporaries()
      logging.getLogger("absl").removeFilter(self._quiet)


class _QuietOrbaxErrors(logging.Filter):
  """Leaves out the error logs (with tracebacks) of orbax's threads: each such
  error also reaches `Checkpointer`'s caller, as a one-line CheckpointError."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (from_orbax and record.levelno >= logging.ERROR and record.exc_info)


def _ignore_failed_write_leftovers() -> None:
  """Installs (once) what keeps the leftovers of a failed orbax write from printing:
  an unraisable hook that drops tensorstore's callbacks into a closed asyncio
  loop and full-disk errors nobody retrieved, and a filter on asyncio's log for orbax's tasks whose error nobody
  retrieved (the first error of the write reaches the caller)."""
  previous = sys.unraisablehook
  if getattr(previous, "ldjax_closed_loop", False):
    return
  logging.getLogger("asyncio").addFilter(_unretrieved_orbax_task)

  def hook(unraisable):
    error = unraisable.exc_value
    if not (_is_closed_loop_callback(unraisable)
            or (error is not None and is_disk_full(error))):
      previous(unraisable)
  hook.ldjax_closed_loop = True
  sys.unraisablehook = hook


def _is_closed_loop_callback(unraisable) -> bool:
  """RuntimeError("Event loop is closed") from asyncio's call_soon_threadsafe."""
  if unraisable.exc_type is not RuntimeError or str(unraisable.exc_value) != \
      "Event loop is closed":
    return False
  tb = unraisable.exc_traceback
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    tb = tb.tb_next
  return False


def _unretrieved_orbax_task(record: logging.LogRecord) -> bool:
  """False (leave out) for asyncio's "Task (or Future) exception was never retrieved"
  of an orbax task, or of a future that tensorstore failed with a full disk (such a
  future names no orbax file, and its exception has no traceback: it prints as a
  bare "ValueError: RESOURCE_EXHAUSTED ..." line)."""
  message = record.getMessage()
  if not message.startswith(("Task exception was never retrieved",
                             "Future exception was never retrieved")):
    return True
  error = record.exc_info[1] if record.exc_info else None
  return not (f"{os.sep}orbax{os.sep}" in message or (error is not None and is_disk_full(error)))


def is_disk_full(e: BaseException) -> bool:
  """Whether `e`, or an exception it wraps or groups, says the disk (or quota) is full."""
  seen, todo = set(), [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.errno in DISK_FULL:
      return True
    if any(text in str(x) for text in DISK_FULL_TEXT):
      return True
    todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
  return False


def mount_point(path: str | os.PathLike) -> Path:
  """The mount point of the filesystem that holds `path` (or would, once created)."""
  p = Path(path).absolute()
  try:
    while not p.exists() and p != p.parent:
      p = p.parent
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
      p = p.parent
  except OSError:   # the path itself names the disk well enough
    pass
  return p


def _approx_bytes(host: Any, meta: dict) -> int:
  """About what a checkpoint of these arrays and this JSON takes on disk."""
  arrays = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(host))
  return arrays + len(json.dumps(meta, default=str))


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
