"""The feature store: cached output maps of the dropped stages, keyed by example index.

Row i holds the tail's output for training example i, so each epoch's
shuffle is just a permutation of indices. A store lives in host memory when
it fits `memory_budget_bytes`, otherwise in a memory-mapped `.npy` file in
the work directory (random access, no pickle). bfloat16 halves the bytes;
on disk it is kept as its uint16 bit pattern so the `.npy` loads anywhere.

A store is written once (`write` per batch, then `finalize`), then only
read. On disk, writing goes to a temporary name; `finalize` computes per-chunk
CRC32 checksums, renames the file into place and writes a JSON manifest
(shape, dtype, stage range, checksums) by write-and-rename, so a half-written
store is never mistaken for a complete one.

The file's whole size is reserved on disk when the store is created, before
the first write: a memory-mapped write into a sparse file on a full disk is
a SIGBUS that kills the process, not an OSError. `os.posix_fallocate`
reserves the blocks; where the filesystem does not support it, zeros are
written instead (in `ZERO_CHUNK_BYTES` pieces). Without room the partial file
is removed and the constructor raises OSError(ENOSPC) naming the bytes needed
and the directory.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

from ldjax.errors import DISK_FULL
from ldjax.jsonio import write_json_atomic

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CHUNK_BYTES = 64 << 20  # checksum granularity: a damaged chunk is found without reading all
ZERO_CHUNK_BYTES = 16 << 20   # writes that reserve a store where posix_fallocate cannot
# posix_fallocate's errors for "this filesystem cannot do it" (ENOTSUP is EOPNOTSUPP on Linux).
NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def storage_dtype(name: str) -> np.dtype:
  if name not in DTYPES:
    raise ValueError(f"feature dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def store_path(directory: str | os.PathLike, stage_range: Sequence[int]) -> Path:
  """Where the on-disk store of stages [start, stop) lives in `directory`."""
  return Path(directory) / f"features_{stage_range[0]}-{stage_range[1]}.npy"


def _disk_view(a: np.ndarray) -> np.ndarray:
  return a.view(np.uint16) if a.dtype == DTYPES["bfloat16"] else a


def chunk_checksums(a: np.ndarray) -> list[int]:
  flat = np.ascontiguousarray(_disk_view(a)).reshape(-1).view(np.uint8)
  return [zlib.crc32(flat[i:i + CHUNK_BYTES]) for i in range(0, max(flat.size, 1), CHUNK_BYTES)]


class FeatureStore:
  """Features of stages [start, stop) for `num_examples` training examples."""

  def __init__(self, num_examples: int, feature_shape: Sequence[int], dtype: str,
               stage_range: tuple[int, int], *, directory: str | os.PathLike | None = None,
               memory_budget_bytes: int = 4 << 30):
    self.dtype_name = dtype
    self.dtype = storage_dtype(dtype)
    self.shape = (int(num_examples), *map(int, feature_shape))
    self.stage_range = tuple(stage_range)
    self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
    self.in_memory = directory is None or self.nbytes <= memory_budget_bytes
    self.path = None if self.in_memory else store_path(directory, self.stage_range)
    self.complete = False
    self._memmap = None
    if self.in_memory:
      self._array = np.empty(self.shape, self.dtype)
    else:
      self._create_file()

  def _create_file(self) -> None:
    """The memory-mapped temporary file, its whole size reserved on disk.

    Raises OSError (ENOSPC when the disk is full) after removing the partial file.
    """
    disk_dtype = np.uint16 if self.dtype_name == "bfloat16" else self.dtype
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._memmap = np.lib.format.open_memmap(self._tmp_path, mode="w+", dtype=disk_dtype,
                                               shape=self.shape)
      reserve(self._tmp_path, start=self._memmap.offset)
    except OSError as e:
      self._memmap = None
      self._tmp_path.unlink(missing_ok=True)
      if e.errno in DISK_FULL:
        raise OSError(e.errno, f"no space left on {self.path.parent}: "
                      f"{self.nbytes / 1e6:.1f} MB needed for {self.path.name}") from e
      raise
    self._array = self._memmap.view(self.dtype)

  @classmethod
  def _opened(cls, array: np.ndarray, dtype: str, stage_range: Sequence[int], path: Path,
              manifest: dict) -> "FeatureStore":
    """A complete, read-only store around an array already checked by `open_store`."""
    store = cls.__new__(cls)
    store.dtype_name, store.dtype = dtype, storage_dtype(dtype)
    store.shape, store.stage_range = tuple(array.shape), tuple(stage_range)
    store.nbytes = int(array.nbytes)
    store.in_memory, store.path, store.complete = False, path, True
    store._array, store._memmap, store.manifest = array, None, manifest
    return store

  @property
  def _tmp_path(self) -> Path:
    return self.path.with_name(self.path.stem + ".tmp.npy")

  @property
  def manifest_path(self) -> Path | None:
    return None if self.path is None else self.path.with_suffix(".json")

  def write(self, indices: np.ndarray, values: np.ndarray) -> None:
    self._array[indices] = values

  def read(self, indices: np.ndarray) -> np.ndarray:
    return self._array[indices]

  def finalize(self) -> dict:
    """Marks the store complete; on disk, flushes, renames and writes the manifest."""
    manifest = {"shape": list(self.shape), "dtype": self.dtype_name,
                "stage_range": list(self.stage_range),
                "backing": "memory" if self.in_memory else "npy"}
    if not self.in_memory:   # checksums guard the file on disk; memory dies with the run
      manifest |= {"chunk_bytes": CHUNK_BYTES, "checksums": chunk_checksums(self._array)}
      self._memmap.flush()
      self._memmap = self._array = None
      os.replace(self._tmp_path, self.path)
      self._array = load_array(self.path, self.dtype_name)
      manifest["file"] = self.path.name
      write_json_atomic(self.manifest_path, manifest)
    self.complete = True
    self.manifest = manifest
    return manifest

  def delete(self) -> None:
    """Frees the memory or removes the files (also a half-written temporary)."""
    self._array = self._memmap = None
    if self.path is not None:
      for p in (self.path, self._tmp_path, self.manifest_path):
        if p.exists():
          p.unlink()


def reserve(path: str | os.PathLike, start: int = 0) -> None:
  """Allocates every block of bytes [start, end) of the file at `path`, so that
  later writes there through a memory map cannot hit a full disk.

  Uses posix_fallocate; where the filesystem does not support it, writes
  zeros over those bytes (the file's data before `start`, e.g. a header, is
  kept). Raises OSError (ENOSPC) when the disk is full.
  """
  fd = os.open(path, os.O_RDWR)
  try:
    size = os.fstat(fd).st_size
    if size > start:
      _allocate(fd, start, size)
  finally:
    os.close(fd)


def _allocate(fd: int, start: int, stop: int) -> None:
  """posix_fallocate of bytes [start, stop), or zeros written where the filesystem
  (or the platform: macOS has no posix_fallocate) does not support it."""
  try:
    os.posix_fallocate(fd, start, stop - start)
  except AttributeError:
    _write_zeros(fd, start, stop)
  except OSError as e:
    if e.errno not in NO_FALLOCATE:
      raise
    _write_zeros(fd, start, stop)


def _write_zeros(fd: int, start: int, stop: int) -> None:
  """Writes zeros over bytes [start, stop) of `fd` and syncs them to the disk."""
  zeros = memoryview(bytes(min(ZERO_CHUNK_BYTES, stop - start)))
  offset = start
  while offset < stop:
    offset += os.pwrite(fd, zeros[:min(len(zeros), stop - offset)], offset)
  os.fsync(fd)


class StoreError(Exception):
  """A store on disk is missing, incomplete, damaged or of another configuration."""


def open_store(directory: str | os.PathLike, stage_range: tuple[int, int],
               shape: Sequence[int], dtype: str) -> "FeatureStore":
  """Opens a finalized on-disk store after checking its manifest and checksums.

  Raises StoreError saying what is wrong; a store that fails any check must
  be rebuilt, never used.
  """
  path = store_path(directory, stage_range)
  manifest_path = path.with_suffix(".json")
  if not manifest_path.exists() or not path.exists():
    raise StoreError(f"{path.name} or its manifest is missing")
  try:
    manifest = json.loads(manifest_path.read_text())
  except (OSError, ValueError) as e:
    raise StoreError(f"manifest {manifest_path.name} is unreadable ({e})") from None
  if not isinstance(manifest, dict):
    raise StoreError(f"manifest {manifest_path.name} is not a JSON object")
  expected = {"shape": [int(s) for s in shape], "dtype": dtype,
              "stage_range": list(stage_range)}
  for key, value in expected.items():
    if manifest.get(key) != value:
      raise StoreError(f"{path.name} was made with {key}={manifest.get(key)} "
                       f"but {value} is needed")
  try:
    array = load_array(path, dtype)
  except (OSError, ValueError) as e:
    raise StoreError(f"{path.name} cannot be read ({e})") from None
  if list(array.shape) != expected["shape"]:
    raise StoreError(f"{path.name} holds shape {list(array.shape)}, expected {expected['shape']}")
  if chunk_checksums(array) != manifest.get("checksums"):
    raise StoreError(f"{path.name} fails its checksum (damaged on disk)")
  return FeatureStore._opened(array, dtype, stage_range, path, manifest)


def load_array(path: str | os.PathLike, dtype: str) -> np.ndarray:
  """Memory-maps a store file read-only, without pickle."""
  a = np.load(path, mmap_mode="r", allow_pickle=False)
  return a.view(DTYPES["bfloat16"]) if dtype == "bfloat16" else a
