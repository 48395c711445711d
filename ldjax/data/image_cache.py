"""The decoded-images cache: images decoded once, in parallel, into memory-mapped `.npy`
files that later runs open at once.

An entry is a directory ``CACHE/<name>/`` holding, per split, ``x_<split>.npy``
(uint8 [N, H, W, C]) and ``y_<split>.npy`` (int32 [N]), ``files.json`` (each
row's file, relative to the folder) and ``meta.json`` (classes, size,
channels, the training set's mean and std, what was skipped). Its name ends
with a key over the file list, each file's size and modification time, and
the settings (`entry_name`), so a changed folder or other settings make a new
entry and the old one is deleted once the new one is complete.

An entry is filled in ``CACHE/.partial-<host>-<pid>-<name>/`` and renamed into
place when every file is written and synced: a decode interrupted by Ctrl-C
(removed at once) or SIGKILL (removed by the next fill) never leaves a
directory under an entry's name, so nothing half-written is ever opened.
Rows are written with `os.pwrite` into files whose whole size was reserved
first (`os.posix_fallocate`), so a full disk is an error at the start, never
a SIGBUS in the middle.

Decoding runs in a thread pool (Pillow releases the GIL while it decodes and
resizes), chunk by chunk, in file order, with a progress bar of images
decoded out of N.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ldjax import writable
from ldjax.data import images
from ldjax.data.stats import PixelSums
from ldjax.errors import UsageError

FORMAT_VERSION = 1
ENV = "LDJAX_IMAGE_CACHE"   # the cache directory, what --image-cache defaults to
CHUNK = 32                  # images per task of the pool
_PARTIAL = ".partial-"


def cache_root(path: str | os.PathLike | None) -> Path:
  """The cache directory: `path`, else $LDJAX_IMAGE_CACHE, else ~/.cache/ldjax/images."""
  if path:
    return Path(path).expanduser()
  if os.environ.get(ENV):
    return Path(os.environ[ENV]).expanduser()
  return Path.home() / ".cache" / "ldjax" / "images"


def workers() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
  return tqdm(total=total, desc=desc, unit="image", disable=not progress, file=sys.stderr,
              dynamic_ncols=True, leave=True)


def parallel(fn: Callable, items: Sequence, bar: tqdm) -> Iterator:
  """fn(chunk) for chunks of CHUNK items, in order, computed by a thread pool; `bar`
  counts the items. Leaving the loop early (an error, Ctrl-C) cancels what is queued
  and waits for the chunks in flight."""
  chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
  pool = concurrent.futures.ThreadPoolExecutor(workers())
  try:
    futures = [pool.submit(fn, c) for c in chunks]
    for chunk, future in zip(chunks, futures):
      yield future.result()
      bar.update(len(chunk))
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class Request:
  """What to decode: per split, the files (absolute) in row order and their labels."""
  files: dict[str, list[Path]]
  labels: dict[str, np.ndarray]
  size: tuple[int, int]     # (H, W)
  channels: int


@dataclasses.dataclass(frozen=True)
class Entry:
  """A complete cache entry, its arrays memory-mapped (read-only)."""
  path: Path
  x: dict[str, np.ndarray]
  y: dict[str, np.ndarray]
  meta: dict


def entry_name(folder: Path, settings: dict, files: Sequence[tuple]) -> str:
  """``<folder name>-<8 hex of folder and settings>-<16 hex of the file list>``.

  `files`: (split, relative path, label, size in bytes, mtime in ns) of every file."""
  head = json.dumps({"version": FORMAT_VERSION, "folder": str(folder.resolve()),
                     "policy": images.POLICY, "settings": settings}, sort_keys=True)
  h1 = hashlib.sha256(head.encode()).hexdigest()[:8]
  h2 = hashlib.sha256(json.dumps([list(f) for f in files]).encode()).hexdigest()[:16]
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder.resolve().name)
  return f"{safe[:40] or 'folder'}-{h1}-{h2}"


def open_entry(root: Path, name: str) -> Entry | None:
  """The entry `name` if it is complete and consistent; None if there is none. An entry
  whose files were damaged or deleted since is removed (and then decoded again)."""
  path = root / name
  if not (path / "meta.json").is_file():
    return None
  try:
    meta = json.loads((path / "meta.json").read_text())
    x, y = {}, {}
    for split, n in meta["counts"].items():
      x[split] = np.load(path / f"x_{split}.npy", mmap_mode="r", allow_pickle=False)
      y[split] = np.load(path / f"y_{split}.npy", allow_pickle=False)
      want = (n, *meta["image_size"], meta["channels"])
      if x[split].shape != want or x[split].dtype != np.uint8 or y[split].shape != (n,):
        raise ValueError(f"x_{split}.npy is {x[split].shape}, the entry says {want}")
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(f"warning: image cache entry {path} is damaged ({e}); decoding again",
          file=sys.stderr)
    shutil.rmtree(path, ignore_errors=True)
    return None
  return Entry(path, x, y, meta)


def check_writable(root: Path) -> None:
  """UsageError unless the cache directory can be created and written."""
  try:
    writable.probe(root)
  except OSError as e:
    raise UsageError(f"cannot write the image cache {str(root)!r} ({e.strerror or e}); "
                     f"choose another with folder.cache_dir (or ${ENV})") from None


def remove_stale(root: Path, keep_prefix: str, keep: str) -> None:
  """Removes partial entries of dead processes on this host, and the entries of the same
  folder and settings (`keep_prefix`) other than `keep`: outdated by a changed folder."""
  host = socket.gethostname()
  for child in root.iterdir():
    if child.name.startswith(f"{_PARTIAL}{host}-"):
      pid = child.name[len(_PARTIAL) + len(host) + 1:].split("-", 1)[0]
      if pid.isdigit() and not _alive(int(pid)):
        shutil.rmtree(child, ignore_errors=True)
    elif child.name.startswith(keep_prefix) and child.name != keep and child.is_dir():
      shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class _Rows:
  """An `.npy` file of uint8 rows written in place with pwrite (its size reserved first)."""

  def __init__(self, path: Path, n: int, shape: tuple[int, ...]):
    self.path, self.n, self.shape = path, n, shape
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    del header   # writes the header; the body is a hole until reserved
    self.row_bytes = int(np.prod(shape))
    self.offset = path.stat().st_size - n * self.row_bytes
    self.fd = os.open(path, os.O_RDWR)
    try:
      os.posix_fallocate(self.fd, 0, path.stat().st_size)
    except OSError as e:
      if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        os.close(self.fd)
        raise

  def write(self, row: int, pixels: np.ndarray) -> None:
    data = np.ascontiguousarray(pixels, np.uint8).tobytes()
    os.pwrite(self.fd, data, self.offset + row * self.row_bytes)

  def close(self) -> None:
    os.fsync(self.fd)
    os.close(self.fd)


def _decode_chunk(rows: _Rows, size, channels, sums: bool, chunk):
  """Decodes (row, path) pairs into `rows`; returns (pixel sums or None, [(row, path,
  BadImage or TooSmall)])."""
  acc = PixelSums.zeros(channels) if sums else None
  failed = []
  for row, path in chunk:
    try:
      pixels = images.load_image(path, size, channels)
    except (images.BadImage, images.TooSmall) as e:
      failed.append((row, path, e))
      continue
    rows.write(row, pixels)
    if acc is not None:
      acc.add(pixels)
  return acc, failed


def fill(root: Path, name: str, request: Request, meta: dict, *, progress: bool,
         on_bad: Callable[[Path, Exception], None]) -> Entry:
  """Decodes `request` into the entry `name` (see the module doc) and opens it.

  A bad image calls `on_bad(path, error)`, which raises to stop (the partial entry is
  removed) or returns to skip the image. `meta` is stored in meta.json with the counts,
  the training set's mean and std and the skipped files added."""
  partial = root / f"{_PARTIAL}{socket.gethostname()}-{os.getpid()}-{name}"
  shutil.rmtree(partial, ignore_errors=True)
  shape = (*request.size, request.channels)
  total = sum(len(f) for f in request.files.values()) * int(np.prod(shape))
  free = shutil.disk_usage(root).free
  if total > free:
    raise UsageError(f"the image cache needs {total / 1e9:.2f} GB, {str(root)!r} has "
                     f"{free / 1e9:.2f} GB free; free space or choose another folder.cache_dir")
  bar = progress_bar(sum(len(f) for f in request.files.values()), "decoding", progress)
  try:
    partial.mkdir()
    t0 = time.perf_counter()
    kept, skipped, sums = {}, list(meta.get("skipped", [])), PixelSums.zeros(request.channels)
    for split, files in request.files.items():
      rows = _Rows(partial / f"x_{split}.npy", len(files), shape)
      try:
        bad_rows = []
        work = list(enumerate(files))
        decode = functools.partial(_decode_chunk, rows, request.size, request.channels,
                                   split == "train")
        with contextlib.closing(parallel(decode, work, bar)) as results:
          for acc, failed in results:
            for row, path, error in failed:
              on_bad(path, error)
              bad_rows.append(row)
              skipped.append([_relative(path, meta), str(error)])
            if acc is not None:
              sums.merge(acc)
      finally:
        rows.close()
      keep = np.setdiff1d(np.arange(len(files)), bad_rows)
      if bad_rows:
        _compact(partial / f"x_{split}.npy", keep, shape)
      kept[split] = keep
      _save_synced(partial / f"y_{split}.npy", request.labels[split][keep].astype(np.int32))
    seconds = time.perf_counter() - t0
    decoded = sum(len(k) for k in kept.values())
    mean, std = sums.mean_std()
    meta = dict(meta, version=FORMAT_VERSION, policy=images.POLICY,
                image_size=list(request.size), channels=request.channels,
                counts={s: int(len(k)) for s, k in kept.items()}, mean=mean, std=std,
                skipped=skipped, decode_s=seconds, images_per_s=decoded / max(seconds, 1e-9))
    (partial / "files.json").write_text(json.dumps(
        {s: [_relative(request.files[s][i], meta) for i in k] for s, k in kept.items()}))
    _write_synced(partial / "meta.json", json.dumps(meta, indent=1))
    try:
      os.rename(partial, root / name)
    except OSError as e:   # another process completed the same entry first: use it
      if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
        raise
      shutil.rmtree(partial, ignore_errors=True)
    _sync_dir(root)
  except BaseException:   # an error, a bad image, Ctrl-C: nothing half-written stays
    shutil.rmtree(partial, ignore_errors=True)
    raise
  finally:
    bar.close()
  entry = open_entry(root, name)
  if entry is None:
    raise UsageError(f"the image cache entry {root / name} could not be read back; "
                     "choose another folder.cache_dir")
  return entry


def _relative(path: Path, meta: dict) -> str:
  return os.path.relpath(path, meta["folder"]) if meta.get("folder") else str(path)


def _compact(path: Path, keep: np.ndarray, shape) -> None:
  """Rewrites `path` with rows `keep` only (after images were skipped), chunk by chunk."""
  src = np.load(path, mmap_mode="r")
  tmp = path.with_name(path.name + ".compact")
  dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *shape))
  for i in range(0, len(keep), 1024):
    dst[i:i + 1024] = src[keep[i:i + 1024]]
  dst.flush()
  del dst, src
  with open(tmp, "rb+") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _save_synced(path: Path, array: np.ndarray) -> None:
  with open(path, "wb") as f:
    np.save(f, array, allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())


def _write_synced(path: Path, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
