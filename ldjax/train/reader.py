"""The training loop's input, read ahead in background threads: `ReadAhead`.

Every step of an epoch needs its batch: the augmented images of its examples,
or their rows of the feature store (host memory or a memory-mapped file),
gathered on the host with numpy and put on the devices. Done in the loop's
own thread, the devices wait for that every step. `ReadAhead` prepares the
next batches in worker threads while the devices run the current step, and
the loop takes them in order; it waits only when the host cannot keep up.

- The same batches, in the same order: a batch is a pure function of its
  examples' indices (the epoch's draws and the store are fixed before the
  epoch), so which thread prepares it changes nothing, and a run with the
  reader ends with the same weights as one without (`threads=0`).
- Bounded: at most `depth` batches are prepared ahead (host and device
  memory for that many batches); a worker never blocks on a queue, so no
  thread can be left waiting.
- In parallel: with several threads several batches are gathered at once
  (numpy's copies release the GIL), and each is put on the devices by its
  worker (`jax.device_put` is asynchronous and thread-safe), so the loop gets
  a batch already on its way.
- Errors: an exception in a worker is raised in the loop's thread by `next`,
  as the error of that batch.
- Stopping: `close` (or leaving the `with` block, also by an exception or a
  Ctrl-C) cancels the batches not started and waits for those being
  prepared (at most one per thread), so an interrupted epoch leaves no thread
  behind and a resumed run starts from a clean epoch.

`wait_s` is the time the loop spent waiting for input: in `next`, blocked on a
batch not ready yet, or (without threads) preparing it itself.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_THREADS = 2   # gathers in flight; more rarely helps a host with few cores
DEFAULT_DEPTH = 3     # batches prepared ahead of the loop


class ReadAhead:
  """`load(item)` for each of `items`, in order, prepared up to `depth` items ahead by
  `threads` worker threads (`threads=0`: in the caller's thread, when asked)."""

  def __init__(self, load: Callable[[Any], Any], items: Sequence, *,
               threads: int = DEFAULT_THREADS, depth: int = DEFAULT_DEPTH):
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
      raise ValueError(f"reader threads must be an integer >= 0, got {threads!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
      raise ValueError(f"reader depth must be an integer >= 1, got {depth!r}")
    self.load, self.items = load, list(items)
    self.threads, self.depth = threads, max(depth, threads)
    self.wait_s = 0.0
    self._closed = False
    self._next = 0          # the next item to hand out
    self._submitted = 0     # items handed to the workers so far
    self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
    self._pool = (concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ldjax-read")
                  if threads else None)
    self._fill()

  def __len__(self) -> int:
    return len(self.items)

  def _fill(self) -> None:
    while self._pool is not None and self._submitted < len(self.items) \
        and len(self._pending) < self.depth:
      self._pending.append(self._pool.submit(self.load, self.items[self._submitted]))
      self._submitted += 1

  def next(self) -> Any:
    """The next item's `load`; raises its worker's exception; IndexError past the end."""
    if self._closed:
      raise RuntimeError("the reader was closed")
    if self._next >= len(self.items):
      raise IndexError(f"all {len(self.items)} batches were read")
    t0 = time.perf_counter()
    try:
      if self._pool is None:
        return self.load(self.items[self._next])
      future = self._pending.popleft()
      try:
        return future.result()
      finally:
        self._fill()
    finally:
      self._next += 1
      self.wait_s += time.perf_counter() - t0

  def close(self) -> None:
    """Cancels the items not started; waits for those being prepared."""
    self._closed = True
    if self._pool is not None:
      for future in self._pending:
        future.cancel()
      self._pending.clear()
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self) -> ReadAhead:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
