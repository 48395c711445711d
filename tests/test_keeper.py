"""The feature stores' life cycle (ldjax.store.keeper), with a numpy extraction.

The keeper never sees a model: `extract` here maps a padded uint8 batch to
float features, so each row's expected value is known.
"""

import warnings

import numpy as np
import pytest

from ldjax.errors import UsageError
from ldjax.store.keeper import StoreKeeper

N, BATCH = 37, 8            # the last batch has 5 rows
SHAPES = [(4, 4, 3), (2, 2, 6)]
IMAGES = np.arange(N * 48, dtype=np.int64).reshape(N, 4, 4, 3).astype(np.uint8)


def extract(x):
  """Stage 0's 'output': the image as float32, times 2."""
  return x.astype(np.float32) * 2


def keeper(tmp_path=None, budget=1 << 30, dtype="float32"):
  return StoreKeeper(N, SHAPES, dtype, memory_budget_bytes=budget,
                     directory=None if tmp_path is None else tmp_path / "features")


@pytest.mark.parametrize("on_disk", [False, True])
def test_fill_writes_every_row_in_order(tmp_path, on_disk):
  k = keeper(tmp_path, budget=0 if on_disk else 1 << 30)
  store = k.new(1)
  assert store.in_memory is not on_disk
  seen = []
  out = k.fill(store, extract, IMAGES.__getitem__, BATCH, lambda i, done: seen.append((i, done)))
  assert out is store and out.complete
  np.testing.assert_array_equal(out.read(np.arange(N)), IMAGES.astype(np.float32) * 2)
  assert seen == [(i, i * BATCH) for i in range(5)]   # progress: rows done before each batch
  assert (out.path is not None) is on_disk
  assert k.fallbacks == []


def test_on_batch_can_stop_the_fill(tmp_path):
  class Stop(Exception):
    pass

  def stop_at_2(i, done):
    if i == 2:
      raise Stop()
  k = keeper(tmp_path, budget=0)
  with pytest.raises(Stop):
    k.fill(k.new(1), extract, IMAGES.__getitem__, BATCH, stop_at_2)


def test_no_room_without_a_work_directory_falls_back():
  k = keeper(None, budget=0)
  with pytest.warns(UserWarning, match="stay in the forward pass, frozen"):
    assert k.new(1) is None
  assert k.fallbacks[0]["stage_stop"] == 1
  assert "no work directory" in k.fallbacks[0]["reason"]


def test_free_space_check_counts_the_checkpoints_to_come(tmp_path):
  k = keeper(tmp_path, budget=0)
  k.disk_reserve_bytes = 1 << 60   # more than any disk
  with pytest.warns(UserWarning, match="for checkpoints"):
    assert k.new(1) is None
  k.disk_reserve_bytes = 0
  assert k.new(1) is not None


def test_a_directory_that_cannot_be_made_falls_back(tmp_path):
  (tmp_path / "features").write_text("a file where the directory should be")
  k = keeper(tmp_path, budget=0)
  with pytest.warns(UserWarning, match="frozen"):
    assert k.new(1) is None
  assert len(k.fallbacks) == 1


def test_replace_retires_then_deletes(tmp_path):
  k = keeper(tmp_path, budget=0)
  first = k.fill(k.new(1), extract, IMAGES.__getitem__, BATCH)
  k.replace(first)
  second = k.fill(k.new(2), lambda x: x.reshape(len(x), 2, 2, 12)[..., :6].astype(np.float32),
                  first.read, BATCH)
  k.replace(second)
  assert k.current is second and k.retired == [first]
  assert first.path.exists()          # a resume from the last checkpoint may still need it
  k.delete_retired()
  assert not first.path.exists() and k.retired == [] and second.path.exists()
  k.delete()
  assert k.current is None and not second.path.exists()


def test_clean_directory_keeps_only_the_current_store(tmp_path):
  k = keeper(tmp_path, budget=0)
  k.replace(k.fill(k.new(2), lambda x: np.zeros((len(x), 2, 2, 6), np.float32),
                   IMAGES.__getitem__, BATCH))
  d = tmp_path / "features"
  for name in ("features_0-1.npy", "features_0-1.json", "features_0-2.tmp.npy"):
    (d / name).write_bytes(b"left by a killed run")
  k.clean_directory(2)
  assert sorted(p.name for p in d.iterdir()) == ["features_0-2.json", "features_0-2.npy"]


def test_reopen_verifies_and_rebuilds(tmp_path):
  k = keeper(tmp_path, budget=0)
  k.replace(k.fill(k.new(1), extract, IMAGES.__getitem__, BATCH))
  path = k.current.path
  rebuilt = []

  def rebuild():
    rebuilt.append(True)
    return 0.0
  fresh = keeper(tmp_path, budget=0)
  fresh.reopen(1, True, rebuild)
  assert not rebuilt
  np.testing.assert_array_equal(fresh.current.read(np.arange(N)), IMAGES * 2.0)
  # One flipped byte: the checksum fails, so the store is rebuilt, never used.
  with open(path, "r+b") as f:
    f.seek(-1, 2)
    byte = f.read(1)
    f.seek(-1, 2)
    f.write(bytes([byte[0] ^ 0xFF]))
  damaged = keeper(tmp_path, budget=0)
  with pytest.warns(UserWarning, match="checksum"):
    damaged.reopen(1, True, rebuild)
  assert rebuilt == [True]


def test_reopen_of_a_store_held_in_memory_rebuilds(tmp_path):
  k = keeper(tmp_path)
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    k.reopen(1, False, lambda: 1.5)
  text = " ".join(str(x.message) for x in w)
  assert "held in memory" in text and "rebuilt the feature store in 1.5 s" in text


def test_rebuild_fills_from_the_images_or_says_what_to_do(tmp_path):
  k = keeper(tmp_path, budget=0)
  seconds = k.rebuild(1, extract, IMAGES, BATCH)
  assert seconds >= 0 and k.current.complete
  np.testing.assert_array_equal(k.current.read(np.arange(N)), IMAGES * 2.0)
  with pytest.warns(UserWarning), pytest.raises(UsageError, match="store.memory_gb"):
    keeper(None, budget=0).rebuild(1, extract, IMAGES, BATCH)


def test_bfloat16_store_halves_the_bytes():
  assert keeper(dtype="bfloat16").nbytes(1) * 2 == keeper().nbytes(1) == N * 48 * 4


# --- several processes: `agree` makes each outcome the same in all of them ------------------


def agreeing(others_ok: bool, calls: list):
  """An `agree` whose other processes answer `others_ok` (the collective, stood in for)."""
  def agree(ok):
    calls.append(ok)
    return bool(ok) and others_ok
  return agree


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_store_another_process_cannot_make_is_made_by_none(tmp_path, on_disk):
  calls = []
  k = StoreKeeper(N, SHAPES, "float32", memory_budget_bytes=0 if on_disk else 1 << 30,
                  directory=tmp_path / "features", agree=agreeing(False, calls))
  with pytest.warns(UserWarning, match="another process cannot store its part"):
    assert k.new(1) is None
  assert calls == [True] and k.fallbacks[0]["stage_stop"] == 1
  assert not on_disk or not list((tmp_path / "features").iterdir())   # its file removed


def test_a_store_another_process_could_not_write_is_dropped_by_all(tmp_path):
  calls = []
  k = StoreKeeper(N, SHAPES, "float32", memory_budget_bytes=0, directory=tmp_path / "features",
                  agree=agreeing(True, calls))
  store = k.new(1)
  k.agree = agreeing(False, calls)   # room everywhere; a write fails elsewhere
  with pytest.warns(UserWarning, match="another process could not write its part"):
    assert k.fill(store, extract, IMAGES.__getitem__, BATCH) is None
  assert calls == [True, True] and not list((tmp_path / "features").iterdir())


def test_after_a_failed_write_a_process_keeps_running_the_extraction(tmp_path):
  # The others' extraction is a collective program: this process must call it as often.
  calls, batches = [], []
  k = StoreKeeper(N, SHAPES, "float32", memory_budget_bytes=0, directory=tmp_path / "features",
                  agree=agreeing(True, calls))
  store = k.new(1)

  def failing_write(store, idx, x):
    store.delete()
    return k._cannot_store(1, "write failed: test")
  k.write = failing_write

  def counting(x):
    batches.append(len(x))
    return extract(x)
  with pytest.warns(UserWarning, match="write failed"):
    assert k.fill(store, counting, IMAGES.__getitem__, BATCH) is None
  assert len(batches) == 5 and calls == [True, False]
  # With one process (no `agree`) it stops at the failure instead.
  k1, batches[:] = keeper(tmp_path / "one", budget=0), []
  store = k1.new(1)
  k1.write = lambda store, idx, x: (store.delete(), k1._cannot_store(1, "write failed"))[1]
  with pytest.warns(UserWarning, match="write failed"):
    assert k1.fill(store, counting, IMAGES.__getitem__, BATCH) is None
  assert len(batches) == 2


def test_a_store_another_process_cannot_verify_is_rebuilt_by_all(tmp_path):
  calls = []
  k = StoreKeeper(N, SHAPES, "float32", memory_budget_bytes=0, directory=tmp_path / "features",
                  agree=agreeing(True, calls))
  k.replace(k.fill(k.new(1), extract, IMAGES.__getitem__, BATCH))
  k.current = None
  rebuilt = []
  k.agree = agreeing(False, calls)
  with pytest.warns(UserWarning, match="another process's part cannot be used"):
    k.reopen(1, True, lambda: rebuilt.append(1) or 0.0)
  assert rebuilt == [1]
