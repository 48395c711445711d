"""The background reader (ldjax.train.reader): the same batches in the same order, bounded,
errors in the loop's thread, a clean stop; and a fit with it ends with the same weights
as one that reads every batch in the loop's thread."""

import threading
import time

import jax
import numpy as np
import pytest

import ldjax
from ldjax.errors import Interrupted
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.train.assembly import trainer_for
from ldjax.train.reader import ReadAhead


def reader_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name.startswith("ldjax-read")]


class Bar:
  def set_postfix_str(self, text):
    pass

  def update(self, n):
    pass


@pytest.mark.parametrize("threads, depth", [(0, 1), (1, 1), (2, 3), (4, 2)])
def test_same_items_in_order(threads, depth):
  items = [np.arange(i, i + 5) for i in range(20)]
  load = lambda idx: (time.sleep(0.002 * (idx[0] % 3)), idx * 2)[1]   # noqa: E731
  with ReadAhead(load, items, threads=threads, depth=depth) as r:
    got = [r.next() for _ in range(len(r))]
    with pytest.raises(IndexError):
      r.next()
  for g, idx in zip(got, items):
    np.testing.assert_array_equal(g, idx * 2)
  assert r.wait_s >= 0
  assert not reader_threads()


def test_bounded_ahead_and_close_cancels():
  started = []
  lock = threading.Lock()

  def load(i):
    with lock:
      started.append(i)
    return i

  r = ReadAhead(load, range(100), threads=2, depth=4)
  assert [r.next() for _ in range(3)] == [0, 1, 2]
  time.sleep(0.1)
  assert len(started) <= 3 + 4   # never more than `depth` ahead of the loop
  r.close()
  n = len(started)
  time.sleep(0.05)
  assert len(started) == n < 100 and not reader_threads()
  with pytest.raises(RuntimeError, match="closed"):
    r.next()


def test_a_worker_error_is_the_loops_error_and_nothing_hangs():
  def load(i):
    if i == 3:
      raise OSError(5, "Input/output error reading the store")
    return i

  with ReadAhead(load, range(10), threads=2) as r:
    assert [r.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(OSError, match="Input/output error"):
      r.next()
  assert not reader_threads()


def test_waits_counted_without_threads():
  r = ReadAhead(lambda i: time.sleep(0.01) or i, range(3), threads=0)
  assert [r.next() for _ in range(3)] == [0, 1, 2]
  assert r.wait_s >= 0.03


@pytest.mark.parametrize("kw", [dict(threads=-1), dict(threads=1.5), dict(threads=True),
                                dict(depth=0)])
def test_bad_settings(kw):
  with pytest.raises(ValueError, match="reader"):
    ReadAhead(lambda i: i, range(3), **kw)


# --- in the training loop ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_trainer(tiny_data):
  model = build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  cfg = TrainConfig(model="vgg11", width=0.0625, epochs=2, warmup=1, batch_size=64, lr=0.05)
  return trainer_for(model, tiny_data, cfg, "sgd",
                      model.init(jax.random.key(0), tiny_data.image_shape), None)


def test_stop_mid_epoch_leaves_no_reader_thread(vgg_trainer):
  polls = iter(range(100))
  with pytest.raises(Interrupted):
    vgg_trainer.run_epoch(0, Bar(), should_stop=lambda: next(polls) >= 3)
  assert not reader_threads()


def test_a_read_error_stops_the_epoch_with_that_error(vgg_trainer):
  class Broken:
    def __init__(self, x):
      self.x = x

    def __len__(self):
      return len(self.x)

    def __getitem__(self, idx):
      raise OSError(5, "Input/output error")

  good = vgg_trainer.x_train
  vgg_trainer.x_train = Broken(good)
  try:
    with pytest.raises(OSError, match="Input/output error"):
      vgg_trainer.run_epoch(0, Bar())
  finally:
    vgg_trainer.x_train = good
  assert not reader_threads()


def test_fit_with_the_reader_equals_the_loops_own_reads(tiny_data, tmp_path):
  """Drop with an exact crop store on disk (a memory-mapped file): same weights, and
  metrics.jsonl records the input wait."""
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  cfg = TrainConfig(model="resnet18", width=0.0625, epochs=3, warmup=1, batch_size=64,
                    lr=0.02, augment="flip,crop", drop_at="1:2", feature_memory_gb=0.0)
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  out = {}
  for threads in (0, 2):
    records = []
    summary = ldjax.fit(model, tiny_data, cfg.replace(reader_threads=threads), "drop",
                        start=ldjax.Start(variables), run_dir=RunDir(tmp_path / str(threads)),
                        hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                          progress=False))
    out[threads] = summary, records
  (a, ra), (b, rb) = out[0], out[2]
  assert a["drop_events"] == b["drop_events"] and a["final_store_cut"] == 2
  assert [r["store"]["backing"] for r in ra if r["store"]] == ["npy"]
  assert a["param_l2"] == b["param_l2"]
  for x, y in zip(jax.tree.leaves(a["variables"]), jax.tree.leaves(b["variables"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for r in ra + rb:
    assert 0 <= r["time"]["input_wait_s"] <= r["time"]["train_s"]
  assert not reader_threads()
