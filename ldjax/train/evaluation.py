"""Test-set evaluation of a staged model, with the dropped prefix's outputs cached.

After a drop the dropped stages are frozen, so their outputs on the test set
are computed once (float32) and later evaluations run only the head on them:
the same model, without recomputing the frozen prefix every epoch. The cache
counts against store.memory_gb, after an in-memory training store; without
room the whole model runs. Where the devices have room for it beside the
training input (`ldjax.train.device_input`, store.device_memory_gb), it stays
there, as the extraction's output batches; else it is kept in host memory.

Each batch is sharded over the devices of the Net's placement
(`ldjax.train.sharding`); the batch is rounded up to a multiple of the device
count, the padded rows masked out, like those of a last, short batch.
"""

from __future__ import annotations

import concurrent.futures
import time

import jax
import numpy as np

from ldjax import settings
from ldjax.data.batching import pad_rows
from ldjax.data.datasets import Dataset
from ldjax.store.features import FeatureStore
from ldjax.train import programs, steps
from ldjax.train.device_input import DeviceInput


@settings.group("eval", "evaluation")
class EvalSettings:
  """How often and in which batches the test and validation sets are evaluated."""
  batch_size: int = settings.setting(
      1000, "batch size of test evaluation (1000; 250 for the embedded data)",
      flat="eval_batch_size", resumable=True)
  every: int = settings.setting(
      1, "evaluate on the test set every N epochs and after the last (default 1: every "
      "epoch, which the accuracy-per-epoch figure shows; evaluation is not part of T)",
      flat="eval_every", metavar="N", resumable=True)
  test_every_epoch: bool = settings.setting(
      False, "with --val-size: evaluate the test set whenever the validation split is, too")

  def check(self):
    settings.check_int(self.batch_size, "eval.batch_size", "an integer > 0", lambda v: v > 0)
    settings.check_int(self.every, "eval.every", "an integer > 0", lambda v: v > 0)
    settings.check_bool(self.test_every_epoch, "eval.test_every_epoch")


def evaluators(net: programs.Net, data: Dataset, variables: list[dict], *, batch_size: int,
               memory_bytes: int) -> tuple[Evaluator, Evaluator | None]:
  """The `Evaluator`s of `data`'s test set and of its validation split (None without
  one), each with its compiled whole-model evaluation; `batch_size` and `memory_bytes`
  as `Evaluator`'s."""
  room = dict(batch_size=batch_size, memory_bytes=memory_bytes, variables=variables)
  test = Evaluator(net, data.x_test, data.y_test, **room)
  val = None if data.x_val is None else Evaluator(net, data.x_val, data.y_val, split="val",
                                                  **room)
  return test, val


class Evaluator:
  """Evaluates a run's variables on one held-out split (`x`, `y`: the test set, or the
  validation images held out of the training set); owns that split's feature cache.
  Results are keyed "{split}_loss" and "{split}_accuracy"."""

  def __init__(self, net: programs.Net, x: np.ndarray, y: np.ndarray, *, batch_size: int,
               memory_bytes: int, variables: list[dict], split: str = "test"):
    """`batch_size`: of the evaluation batches; `memory_bytes`: room for the cached
    features, shared with an in-memory training store."""
    self.net, self.x, self.y, self.split = net, x, y, split
    self.memory_bytes = memory_bytes
    self.put = net.placement.put_batch
    self.batch = net.placement.round_up(min(batch_size, len(x)))
    self.eval_fn = programs.evaluation(net, variables, 0, self.batch)
    self.compile_s = self.eval_fn.seconds   # all evaluation programs so far
    # Test-set outputs of stages [0, test_cut) and the head's evaluation from there.
    self.test_features: np.ndarray | None = None
    self.test_cut = 0
    self.head_eval_fn: steps.Compiled | None = None
    # ((start, stop), future of `_compile`) started by `prefetch`.
    self._prefetched = None

  def evaluate(self, variables: list[dict], cut: int, store: FeatureStore | None,
               device: DeviceInput | None = None) -> dict:
    """Test loss and accuracy; stages [0, cut) are frozen and may be cached.

    `store` is the training store, whose bytes count against the cache's
    budget when it is held in memory. With `device`, a new cache stays on the
    devices (as the extraction's padded output batches) when it fits its budget.
    """
    if cut > self.test_cut and self._fits(cut, store):
      self._extend_cache(cut, variables, device)
    if self.test_cut == 0:
      return self._batches(self.eval_fn.fn, variables, self.x)
    return self._batches(self.head_eval_fn.fn, variables[self.test_cut:], self.test_features)

  def prefetch(self, pool: concurrent.futures.Executor, stop: int, variables: list[dict],
               store: FeatureStore | None) -> None:
    """Compiles in `pool` what the first evaluation with `stop` frozen stages will need."""
    if self._fits(stop, store):
      key = (self.test_cut, stop)
      self._prefetched = key, pool.submit(self._compile, *key, programs.structs(variables))

  def _batch(self, x, i: int) -> jax.Array:
    """Rows [i, i + batch) of `x` padded, on the devices (`x`: host rows, or a list of
    batches already there)."""
    if isinstance(x, list):
      return x[i // self.batch]
    return self.put(pad_rows(x[i:i + self.batch], self.batch))

  def _batches(self, fn, variables, x) -> dict:
    y, bs = self.y, self.batch
    outs = []
    for i in range(0, len(y), bs):
      n = len(y[i:i + bs])
      outs.append(fn(variables, self._batch(x, i), self.put(pad_rows(y[i:i + bs], bs)),
                     self.put(np.arange(bs) < n)))
    outs = jax.device_get(outs)
    return {f"{self.split}_loss": sum(float(o["loss"]) for o in outs) / len(y),
            f"{self.split}_accuracy": 100.0 * sum(int(o["correct"]) for o in outs) / len(y)}

  def _fits(self, stop: int, store: FeatureStore | None) -> bool:
    """Whether float32 test features of stage stop-1 fit in `memory_bytes` next to
    `store` (counted when it is held in memory)."""
    nbytes = len(self.x) * int(np.prod(self.net.shapes[stop - 1])) * 4
    in_memory = 0 if store is None or not store.in_memory else store.nbytes
    return nbytes <= self.memory_bytes - in_memory

  def _compile(self, start: int, stop: int,
               variables: list) -> tuple[steps.Compiled, steps.Compiled]:
    """Extraction of stages [start, stop) on test batches (float32) and evaluation of the
    head from `stop`. `variables` may be shapes only (`programs.structs`): then a
    background thread can compile while the train step donates the arrays."""
    extract = programs.extraction(self.net, variables, start, stop, self.batch,
                                  in_dtype=np.float32, out_dtype=np.float32)
    return extract, programs.evaluation(self.net, variables, stop, self.batch)

  def _extend_cache(self, stop: int, variables: list[dict],
                    device: DeviceInput | None = None) -> None:
    """Extends the test-set features from stages [0, test_cut) to [0, stop): on the
    devices when `device` has room for them, else in host memory."""
    start, bs = self.test_cut, self.batch
    x = self.x if start == 0 else self.test_features
    prefetched, self._prefetched = self._prefetched, None
    if prefetched is not None and prefetched[0] == (start, stop):
      t0 = time.perf_counter()
      extract, head_eval = prefetched[1].result()
      self.compile_s += time.perf_counter() - t0   # the wait, as for the train step
    else:
      extract, head_eval = self._compile(start, stop, variables)
      self.compile_s += extract.seconds + head_eval.seconds
    n_test, shape = len(self.y), self.net.shapes[stop - 1]
    padded = -(-n_test // bs) * bs   # rows on the devices: whole batches
    on_device = device is not None and device.claim(
        self.split, padded * int(np.prod(shape)) * 4 // self.net.placement.devices)
    out = [] if on_device else np.empty((n_test, *shape), np.float32)
    for i in range(0, n_test, bs):
      features = extract.fn(variables[start:stop], self._batch(x, i))
      if on_device:
        out.append(features)
      else:
        out[i:i + bs] = np.asarray(features)[:n_test - i]
    self.test_features, self.test_cut, self.head_eval_fn = out, stop, head_eval
