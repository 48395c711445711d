"""The life cycle of a run's feature stores: create, fill, replace, retire, reopen, rebuild.

A `StoreKeeper` holds the store the head reads (`current`), the stores it
replaced (kept until a checkpoint that no longer needs them is on disk) and
the record of drops whose store could not be written (`fallbacks`: those
stages stayed in the forward pass, frozen). The extraction arrives as a
callable, so this module knows nothing of models or training.

A store is held in memory when it fits `memory_budget_bytes`, otherwise in a
memory-mapped file under `directory` whose space is reserved before the
first write; without room either way the keeper warns, records a fallback
and returns None instead of a store.

With several processes each keeps its own store of its own examples, and
`agree` (`ldjax.runs.cluster.agree`) makes every outcome the same in all of
them: a store one process cannot make, write or verify is made, written or
rebuilt by none or by all, and a process whose write failed goes on running
the extraction (without writing) so that the others' collective programs
find it there.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ldjax import settings
from ldjax.data.batching import pad_rows
from ldjax.errors import DISK_FULL, UsageError
from ldjax.store.features import (FeatureStore, StoreError, open_store,
                                  storage_dtype)

# (batch index, rows extracted before it) -> None; may raise to stop the extraction.
OnBatch = Callable[[int, int], None]
# A padded batch of the source -> the new stages' output for it.
Extract = Callable[[np.ndarray], object]


STORE_DTYPES = ("float32", "bfloat16")


@settings.group("store", "the feature store")
class StoreSettings:
  """The dtype of the stored maps, and how much of them stays in host and device memory."""
  dtype: str = settings.setting(
      "float32", "dtype of the cached feature maps (float32; bfloat16 halves their bytes and "
      "is the strong recipe's; Freeze then rounds its frozen maps where Drop stores them)",
      flat="feature_dtype")
  memory_gb: float = settings.setting(
      4.0, "feature stores up to this many GB (4) stay in host memory; larger ones are "
      "memory-mapped .npy files in the work directory. Drop also caches the dropped stages' "
      "test-set outputs (float32) within what an in-memory store leaves; without room it "
      "evaluates the whole model", flat="feature_memory_gb", resumable=True)
  device_memory_gb: float | None = settings.setting(
      None, "GB per device that the training input may take on the devices (the feature "
      "store's rows, or the training images), gathered, cropped and flipped there by a "
      "jitted reader; what does not fit is read on the host. 0: always on the host. "
      "Default: 40 percent of an accelerator's memory, 0 on CPUs (whose device memory is the "
      "host's). The same batches either way", flat="device_memory_gb", metavar="GB",
      resumable=True)

  def check(self):
    settings.check_choice(self.dtype, "store.dtype", STORE_DTYPES)
    settings.check_float(self.memory_gb, "store.memory_gb", "a finite number >= 0",
                         lambda v: v >= 0)
    if self.device_memory_gb is not None:
      settings.check_float(self.device_memory_gb, "store.device_memory_gb",
                           "a finite number >= 0 (or unset)", lambda v: v >= 0)

  @property
  def memory_bytes(self) -> int:
    return int(self.memory_gb * (1 << 30))


class StoreKeeper:
  """The feature stores of one run of `num_examples` training examples."""

  def __init__(self, num_examples: int, stage_shapes: Sequence[tuple], dtype: str, *,
               memory_budget_bytes: int, directory: Path | None,
               agree: Callable[[bool], bool] | None = None):
    self.num_examples = num_examples
    # Whether a condition holds in every process (None: one process).
    self.agree, self.lockstep = agree or bool, agree is not None
    self.stage_shapes = list(stage_shapes)   # output shape of each stage (no batch)
    self.dtype_name, self.dtype = dtype, storage_dtype(dtype)
    self.memory_budget_bytes = memory_budget_bytes
    self.directory = directory
    self.current: FeatureStore | None = None
    self.retired: list[FeatureStore] = []
    self.fallbacks: list[dict] = []     # {"stage_stop", "reason"} per store not written
    self.disk_reserve_bytes = 0         # other writes to come on the same disk (checkpoints)

  def nbytes(self, stop: int) -> int:
    """Bytes of a store of stages [0, stop)."""
    return self.num_examples * int(np.prod(self.stage_shapes[stop - 1])) * self.dtype.itemsize

  def new(self, stop: int) -> FeatureStore | None:
    """An empty store for stages [0, stop), or None (with a warning) if it cannot fit
    (in any process)."""
    store = self._new(stop)
    if not self.agree(store is not None) and store is not None:
      store.delete()
      return self._cannot_store(stop, "another process cannot store its part")
    return store

  def _new(self, stop: int) -> FeatureStore | None:
    nbytes = self.nbytes(stop)
    if nbytes > self.memory_budget_bytes:
      if self.directory is None:
        return self._cannot_store(stop, f"{nbytes / 1e9:.2f} GB exceed store.memory_gb "
                                  "and there is no work directory to spill to")
      try:
        self.directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
      except OSError as e:
        return self._cannot_store(stop, str(e) or type(e).__name__)
      needed = nbytes * 1.05 + self.disk_reserve_bytes
      if needed > free:
        return self._cannot_store(
            stop, f"no space left on {self.directory}: {nbytes / 1e9:.2f} GB needed (plus "
            f"{self.disk_reserve_bytes / 1e9:.2f} GB for checkpoints), {free / 1e9:.2f} GB "
            "free on disk")
    try:   # a disk store reserves its space here: a full disk is an OSError, not a SIGBUS
      return FeatureStore(self.num_examples, self.stage_shapes[stop - 1], self.dtype_name,
                          (0, stop), directory=self.directory,
                          memory_budget_bytes=self.memory_budget_bytes)
    except OSError as e:   # ENOSPC's message already says "no space left on <directory>"
      return self._cannot_store(stop, (e.errno in DISK_FULL and e.strerror) or str(e)
                                or type(e).__name__)
    except MemoryError as e:
      return self._cannot_store(stop, str(e) or type(e).__name__)

  def _cannot_store(self, stop: int, why: str) -> None:
    warnings.warn(f"cannot store the features of stages 0-{stop - 1} ({why}); "
                  f"those stages stay in the forward pass, frozen; {self.what_to_change(stop)}",
                  stacklevel=3)
    self.fallbacks.append({"stage_stop": stop, "reason": why})
    return None

  def what_to_change(self, stop: int) -> str:
    """The bytes of the store of stages [0, stop) and the settings that make room for it."""
    nbytes = self.nbytes(stop)
    gb = math.ceil(nbytes / (1 << 30) * 100) / 100   # store.memory_gb's unit, rounded up
    where = (f"free {nbytes / 1e9:.2f} GB on the disk of {self.directory}"
             if self.directory is not None else "give the run a work directory to spill it to")
    half = "" if self.dtype_name == "bfloat16" else ", or halve it with store.dtype bfloat16"
    return (f"the store needs {nbytes:,} bytes: raise store.memory_gb to {gb:g} or more, "
            f"{where}{half}")

  def fill(self, store: FeatureStore, extract: Extract,
           read: Callable[[np.ndarray], np.ndarray], batch_size: int,
           on_batch: OnBatch | None = None) -> FeatureStore | None:
    """Runs `extract` over every example, in order, into `store`.

    `read(indices)` gives the extraction's input rows (images, or the
    previous store). Each batch is written while the next one runs. Returns
    the finalized store, or None (with a warning) when a write failed.
    """
    stop, queued = store.stage_range[1], None
    for i, start in enumerate(range(0, self.num_examples, batch_size)):
      if on_batch is not None:
        on_batch(i, start)
      idx = np.arange(start, min(start + batch_size, self.num_examples))
      x = extract(pad_rows(read(idx), batch_size))
      if queued is not None and store is not None:
        store = self.write(store, *queued)
      if store is None and not self.lockstep:
        return None
      queued = (idx, x)
    if store is not None:
      store = self.write(store, *queued)
    if store is not None:
      try:
        store.finalize()
      except OSError as e:
        store.delete()
        store = self._cannot_store(stop, f"finalize failed: {e}")
    if not self.agree(store is not None) and store is not None:
      store.delete()
      store = self._cannot_store(stop, "another process could not write its part")
    return store

  def write(self, store: FeatureStore, idx: np.ndarray, x) -> FeatureStore | None:
    """Writes one batch (its first len(idx) rows); on an I/O error, abandons the store."""
    try:
      store.write(idx, np.asarray(x)[:len(idx)])
      return store
    except OSError as e:
      store.delete()
      return self._cannot_store(store.stage_range[1], f"write failed: {e}")

  def replace(self, store: FeatureStore) -> None:
    """Makes `store` current. The old one is retired, not deleted: until the next
    checkpoint is on disk a resume may still need it."""
    if self.current is not None:
      self.retired.append(self.current)
    self.current = store

  def delete_retired(self) -> None:
    for store in self.retired:
      store.delete()
    self.retired = []

  def delete(self) -> None:
    """Frees the current store (a cache: once the run is complete it has no use)."""
    if self.current is not None:
      self.current.delete()
      self.current = None

  def clean_directory(self, store_cut: int) -> None:
    """Removes store files a killed run left behind (temporaries, superseded stores)."""
    if self.directory is None or not self.directory.exists():
      return
    keep = f"features_0-{store_cut}"
    for p in self.directory.iterdir():
      if p.is_dir():   # another process count's stores (features/process-I)
        shutil.rmtree(p)
      elif not p.name.startswith(keep + ".") or ".tmp" in p.name:
        p.unlink()

  def rebuild(self, stop: int, extract: Extract, images: np.ndarray, batch_size: int,
              on_batch: OnBatch | None = None) -> float:
    """Recomputes the store of stages [0, stop) from `images`; returns seconds.

    Raises UsageError when it cannot be written.
    """
    t0 = time.perf_counter()
    store = self.new(stop)
    if store is not None:
      store = self.fill(store, extract, images.__getitem__, batch_size, on_batch)
    if store is None:
      raise UsageError(f"the feature store of stages 0-{stop - 1} cannot be written; "
                       f"{self.what_to_change(stop)}")
    self.replace(store)
    return time.perf_counter() - t0

  def reopen(self, stop: int, on_disk: bool, rebuild: Callable[[], float]) -> None:
    """Opens the store of stages [0, stop) a checkpoint refers to after verifying it, or
    calls `rebuild` (see `rebuild`) when it is missing or damaged.

    Tried even when the checkpoint's store was in memory: a later process may
    have rebuilt it on disk before being killed.
    """
    shape = (self.num_examples, *self.stage_shapes[stop - 1])
    error = None
    try:
      if self.directory is None:
        raise StoreError("there is no work directory")
      self.current = open_store(self.directory, (0, stop), shape, self.dtype_name)
    except StoreError as e:
      error = e if on_disk else StoreError(
          "missing: it was held in memory, which ends with the process")
    if not self.agree(error is None) and error is None:
      self.current, error = None, StoreError("another process's part cannot be used")
    if error is not None:
      warnings.warn(f"feature store of stages 0-{stop - 1} cannot be used ({error}); "
                    "rebuilding it from the dropped stages' weights", stacklevel=3)
      seconds = rebuild()
      warnings.warn(f"rebuilt the feature store in {seconds:.1f} s", stacklevel=3)
