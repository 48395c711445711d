"""Tests for ldjax.data, ldjax.idx, ldjax.tfds_source and ldjax.prepare.

Everything runs offline and without TensorFlow: TFDS reading is checked both
under `tfds.testing.mock_data` and against small real array_record datasets
written here by a throwaway builder (array_record writing works without
TensorFlow when images are handed over already PNG-encoded).
"""

import gzip
import importlib.util
import io
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from ldjax import prepare
from ldjax.data import batching, datasets as data, idx
from ldjax.errors import UsageError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, magic=None, compress=False):
  """Writes a uint8 IDX file (gzipped if `compress`)."""
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = 0x00000800 | array.ndim
  payload = (magic.to_bytes(4, "big")
             + np.asarray(array.shape, ">u4").tobytes() + array.tobytes())
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(payload)


def write_idx_dir(directory, n_train=12, n_test=5, compress=False, seed=0):
  """Writes a complete little MNIST-style directory; returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = {
      "train": (rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
                (np.arange(n_train) % 3).astype(np.uint8)),
      "test": (rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
               (np.arange(n_test) % 3).astype(np.uint8)),
  }
  suffix = ".gz" if compress else ""
  for split, (images, labels) in arrays.items():
    write_idx(os.path.join(directory, idx.FILES[(split, "images")] + suffix),
              images, compress=compress)
    write_idx(os.path.join(directory, idx.FILES[(split, "labels")] + suffix),
              labels, compress=compress)
  return arrays


# --- IDX ---------------------------------------------------------------------


def test_idx_real_fashion_mnist():
  if not os.path.isdir(FASHION_DIR):
    pytest.skip(f"{FASHION_DIR} not installed (Debian dataset-fashion-mnist)")
  ds = data.load_dataset(f"idx:{FASHION_DIR}")
  assert ds.name == f"idx:{FASHION_DIR}"
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.image_shape == (28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  # The published Fashion-MNIST training statistics.
  assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4)
  assert ds.std[0] == pytest.approx(0.3530, abs=1e-4)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_plain_and_gzipped(tmp_path, compress):
  arrays = write_idx_dir(tmp_path, compress=compress)
  ds = data.load_dataset(f"idx:{tmp_path}")
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train"][0])
  np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays["test"][0])
  assert ds.num_classes == 3
  assert ds.image_shape == (6, 5, 1)


def test_idx_wrong_magic(tmp_path):
  write_idx_dir(tmp_path)
  bad = tmp_path / idx.FILES[("train", "images")]
  write_idx(bad, np.zeros((12, 6, 5)), magic=0x00000801 + 2 * 0x100)
  with pytest.raises(UsageError, match=bad.name + " has magic number"):
    data.load_dataset(f"idx:{tmp_path}")
  # Labels where images are expected: also a magic mismatch.
  with pytest.raises(UsageError, match="magic"):
    idx.read_idx(str(tmp_path / idx.FILES[("train", "labels")]),
                 idx.IMAGES_MAGIC)


@pytest.mark.parametrize("cut", [2, 9, 100])
def test_idx_truncated(tmp_path, cut):
  write_idx_dir(tmp_path)
  path = tmp_path / idx.FILES[("test", "images")]
  path.write_bytes(path.read_bytes()[:cut])
  with pytest.raises(UsageError, match=f"{path.name} is truncated"):
    data.load_dataset(f"idx:{tmp_path}")


def test_idx_extra_bytes_and_bad_gzip(tmp_path):
  write_idx_dir(tmp_path)
  path = tmp_path / idx.FILES[("test", "labels")]
  path.write_bytes(path.read_bytes() + b"\0")
  with pytest.raises(UsageError, match=f"{path.name} has 1 bytes more"):
    data.load_dataset(f"idx:{tmp_path}")
  path.unlink()
  (tmp_path / (path.name + ".gz")).write_bytes(b"not gzip at all")
  with pytest.raises(UsageError, match=f"cannot read IDX file .*{path.name}"):
    data.load_dataset(f"idx:{tmp_path}")


def test_idx_missing_file_and_dir(tmp_path):
  write_idx_dir(tmp_path)
  os.remove(tmp_path / idx.FILES[("train", "labels")])
  with pytest.raises(UsageError, match="missing IDX file .*train-labels"):
    data.load_dataset(f"idx:{tmp_path}")
  with pytest.raises(UsageError, match="does not exist"):
    data.load_dataset(f"idx:{tmp_path / 'nope'}")


def test_idx_count_mismatch(tmp_path):
  write_idx_dir(tmp_path)
  write_idx(tmp_path / idx.FILES[("train", "labels")], np.zeros(11))
  with pytest.raises(UsageError, match="12 images but .* 11 labels"):
    data.load_dataset(f"idx:{tmp_path}")


# --- npz ---------------------------------------------------------------------


def small_arrays(grey=True, seed=0):
  rng = np.random.default_rng(seed)
  shape = (7, 4, 3) if grey else (7, 4, 3, 3)
  return {
      "x_train": rng.integers(0, 256, shape, dtype=np.uint8),
      "y_train": np.array([0, 1, 2, 3, 0, 1, 2], np.int64),
      "x_test": rng.integers(0, 256, (2,) + shape[1:], dtype=np.uint8),
      "y_test": np.array([3, 1], np.uint8),
  }


@pytest.mark.parametrize("grey", [True, False])
def test_npz_round_trip(tmp_path, grey):
  arrays = small_arrays(grey)
  path = tmp_path / "d.npz"
  np.savez(path, **arrays)
  ds = data.load_dataset(f"npz:{path}")
  channels = 1 if grey else 3
  assert ds.x_train.shape == (7, 4, 3, channels)
  assert ds.image_shape == (4, 3, channels)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.x_train.reshape(arrays["x_train"].shape),
                                arrays["x_train"])
  np.testing.assert_array_equal(ds.y_test, [3, 1])
  assert ds.num_classes == 4
  assert len(ds.mean) == len(ds.std) == channels
  expected = arrays["x_train"].reshape(-1, channels) / 255.0
  np.testing.assert_allclose(ds.mean, expected.mean(0), rtol=1e-12)
  np.testing.assert_allclose(ds.std, expected.std(0), rtol=1e-12)


def test_npz_integer_pixels_converted(tmp_path):
  arrays = small_arrays()
  arrays["x_train"] = arrays["x_train"].astype(np.int64)
  np.savez(tmp_path / "d.npz", **arrays)
  ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
  assert ds.x_train.dtype == np.uint8


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "lacks array.*y_test"),
    (lambda a: a.update(x_train=a["x_train"][0]), "x_train .*shape"),
    (lambda a: a.update(y_train=np.zeros((7, 3))), "y_train .*shape"),
    (lambda a: a.update(y_train=a["y_train"][:5]), "7 x_train images but 5"),
    (lambda a: a.update(x_test=a["x_test"][:, :2]), "same \\(H, W, C\\)"),
    (lambda a: a.update(x_train=a["x_train"] / 255.0), "dtype float64"),
    (lambda a: a.update(x_train=np.full((7, 4, 3), 256, np.int32)),
     "values 256..256"),
    (lambda a: a.update(y_train=a["y_train"] - 1), "values -1..2"),
])
def test_npz_errors(tmp_path, change, message):
  arrays = small_arrays()
  change(arrays)
  np.savez(tmp_path / "d.npz", **arrays)
  with pytest.raises(UsageError, match=message):
    data.load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_bad_files(tmp_path):
  with pytest.raises(UsageError, match="does not exist"):
    data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")
  (tmp_path / "junk.npz").write_bytes(b"garbage, not a zip")
  with pytest.raises(UsageError, match="cannot read"):
    data.load_dataset(f"npz:{tmp_path / 'junk.npz'}")
  np.save(tmp_path / "one.npy", np.zeros(3))
  with pytest.raises(UsageError, match="single array"):
    data.load_dataset(f"npz:{tmp_path / 'one.npy'}")
  arrays = small_arrays()
  arrays["y_test"] = np.array([3, None], dtype=object)  # Would need pickle.
  np.savez(tmp_path / "obj.npz", **arrays)
  with pytest.raises(UsageError, match="cannot load array y_test"):
    data.load_dataset(f"npz:{tmp_path / 'obj.npz'}")


# --- embedded ----------------------------------------------------------------


def test_embedded():
  ds = data.load_dataset("embedded")
  assert ds.name == "embedded"
  assert ds.x_train.shape == (6000, 28, 28, 1)
  assert ds.x_test.shape == (1000, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.y_train), [600] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
  # Close to the full Fashion-MNIST statistics (0.2860, 0.3530).
  assert 0.27 < ds.mean[0] < 0.30
  assert 0.34 < ds.std[0] < 0.37


def test_embedded_subset_sizes():
  ds = data.load_dataset("embedded", train_size=100, test_size=10)
  assert ds.x_train.shape == (100, 28, 28, 1) and len(ds.y_test) == 10
  assert ds.num_classes == 10  # From the full data, not the subset.
  full = data.load_dataset("embedded")
  assert ds.mean != full.mean  # Statistics follow the subset actually used.
  with pytest.raises(UsageError, match="train_size=6001 is larger"):
    data.load_dataset("embedded", train_size=6001)
  with pytest.raises(UsageError, match="test_size=0 must be positive"):
    data.load_dataset("embedded", test_size=0)


# --- subset, permutations, stats ---------------------------------------------


def test_subset():
  x = np.arange(100) * 10
  y = np.arange(100)
  xs, ys = data.subset(x, y, 30, seed=3)
  xs2, ys2 = data.subset(x, y, 30, seed=3)
  np.testing.assert_array_equal(xs, xs2)
  np.testing.assert_array_equal(xs, ys * 10)  # Pairs stay together.
  assert len(np.unique(ys)) == 30 and np.all(np.diff(ys) > 0)  # Sorted.
  assert not np.array_equal(data.subset(x, y, 30, seed=4)[1], ys)
  assert data.subset(x, y, None)[0] is x
  np.testing.assert_array_equal(data.subset(x, y, 100)[1], y)
  for bad in (0, -1, 101, 2.5, True):
    with pytest.raises(UsageError):
      data.subset(x, y, bad)
  with pytest.raises(UsageError):
    data.subset(x, y[:5], 3)


def test_epoch_permutation():
  p = batching.epoch_permutation(1, 0, 1000)
  assert p.dtype == np.int64
  np.testing.assert_array_equal(np.sort(p), np.arange(1000))
  np.testing.assert_array_equal(p, batching.epoch_permutation(1, 0, 1000))
  assert not np.array_equal(p, batching.epoch_permutation(1, 1, 1000))
  assert not np.array_equal(p, batching.epoch_permutation(2, 0, 1000))
  # Pinned: the order must not change across numpy versions or refactors.
  expected = np.random.default_rng(
      np.random.SeedSequence([1, 0])).permutation(1000)
  np.testing.assert_array_equal(p, expected)
  assert len(batching.epoch_permutation(0, 0, 0)) == 0
  with pytest.raises(UsageError, match="seed must be >= 0"):
    batching.epoch_permutation(-1, 0, 10)


def test_one_block_is_the_epoch_permutation():
  b = batching.Blocks(1003)
  batches = b.batches(1, 2, 100)
  assert batches.shape == (10, 100) and (b.start, b.stop, b.used) == (0, 1003, 1003)
  np.testing.assert_array_equal(batches.ravel(), batching.epoch_permutation(1, 2, 1003)[:1000])
  np.testing.assert_array_equal(b.local(batches), batches)


def test_blocks_give_each_process_its_own_examples():
  n, shards, batch = 1003, 4, 40          # blocks of 250; 3 examples left out
  one = batching.Blocks(n, shards)          # one process holding the 4 blocks
  batches = one.batches(0, 3, batch)
  assert batches.shape == (250 // 10, batch) and one.used == 1000
  assert len(np.unique(batches)) == batches.size   # no example twice in an epoch
  for s in range(shards):   # batch columns 10s..10s+9 come from block s, all of it per epoch
    part = batches[:, 10 * s:10 * (s + 1)]
    np.testing.assert_array_equal(np.sort(part.ravel()), np.arange(250 * s, 250 * (s + 1)))
  assert not np.array_equal(batches, one.batches(0, 4, batch))
  np.testing.assert_array_equal(batches, one.batches(0, 3, batch))
  # Two processes make the same batches; each holds two blocks and reads only them.
  procs = [batching.Blocks(n, shards, 2, i) for i in range(2)]
  assert [(p.start, p.stop) for p in procs] == [(0, 500), (500, 1000)]
  parts = []
  for p in procs:
    np.testing.assert_array_equal(p.batches(0, 3, batch), batches)
    local = p.local(batches)
    assert local.min() >= 0 and local.max() < p.local_size
    parts.append(local + p.start)
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), batches)


def test_bad_blocks():
  with pytest.raises(UsageError, match="data.shards must be an integer > 0"):
    batching.Blocks(100, 0)
  with pytest.raises(UsageError, match="data.shards 3 does not divide by the 2 processes"):
    batching.Blocks(100, 3, 2, 0)
  with pytest.raises(UsageError, match="does not divide by data.shards 4"):
    batching.Blocks(100, 4).check_batch(30)
  with pytest.raises(UsageError, match="which hold 25"):
    batching.Blocks(100, 4).check_batch(120)
  with pytest.raises(UsageError, match="more than the 3 training"):
    batching.Blocks(3, 4)


def test_keep_train_block():
  full = data.load_dataset("embedded", train_size=100, test_size=20)
  block = data.keep_train_block(full, 40, 70)
  assert (block.train_start, len(block.x_train), block.num_train) == (40, 30, 100)
  np.testing.assert_array_equal(block.x_train, full.x_train[40:70])
  np.testing.assert_array_equal(block.y_train, full.y_train[40:70])
  assert block.mean == full.mean and block.x_test is full.x_test and full.num_train == 100
  with pytest.raises(ValueError, match="one block"):
    data.hold_out(block, 10)
  with pytest.raises(ValueError, match="one block"):
    data.keep_train_block(block, 0, 10)


def test_channel_stats_chunked_matches_float():
  rng = np.random.default_rng(0)
  # 3 * 700 * 2000 values > one 4M-value chunk, so several chunks are summed.
  x = rng.integers(0, 256, (700, 40, 50, 3), dtype=np.uint8)
  mean, std = data.channel_stats(x)
  flat = x.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, flat.std(0), rtol=1e-10)
  _, std0 = data.channel_stats(np.full((2, 2, 2, 1), 7, np.uint8))
  assert std0 == (1.0,)  # Constant channel: no division by zero later.


def test_normalize():
  x = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)  # [1, 2, 2, 1]
  out = data.normalize(x, (0.2,), (0.4,))
  assert out.dtype == jnp.float32 and out.shape == x.shape
  np.testing.assert_allclose(
      np.asarray(out)[0, ..., 0], [[-0.5, 2.0], [0.0, 0.5]], atol=1e-6)
  rgb = jnp.full((2, 1, 1, 3), 255, jnp.uint8)
  jitted = jax.jit(lambda a: data.normalize(a, (0.0, 0.5, 1.0),
                                            (1.0, 0.5, 2.0)))(rgb)
  assert jitted.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(jitted)[0, 0, 0], [1.0, 1.0, 0.0],
                             atol=1e-6)


def test_unknown_spec():
  for spec in ("imagenet", "idx:", "npz:", "", "MNIST"):
    with pytest.raises(UsageError, match="unknown dataset.*embedded"):
      data.load_dataset(spec)


def test_dataset_is_hashable_by_identity():
  ds = data.load_dataset("embedded", train_size=10, test_size=10)
  assert ds == ds and hash(ds) == hash(ds)


# --- TFDS --------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [
    ("mnist", (28, 28, 1)),
    ("cifar10", (32, 32, 3)),
    ("imagenette/160px-v2", (160, 160, 3)),  # Mock images are ~30px: resized.
])
def test_tfds_mock_data(tmp_path, name, shape):
  tfds = pytest.importorskip("tensorflow_datasets")
  had_tf = "tensorflow" in sys.modules
  with tfds.testing.mock_data(num_examples=9):
    ds = data.load_dataset(name, data_dir=str(tmp_path))
  assert ds.x_train.shape == (9, *shape) and ds.x_test.shape == (9, *shape)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10 and ds.y_train.max() < 10
  assert len(ds.mean) == shape[-1]
  # Reading must not pull in TensorFlow (it is not even a dependency).
  assert had_tf or "tensorflow" not in sys.modules


def _fake_mnist_builder(tfds, n_train, n_test):
  """A builder that writes a real, tiny "mnist" in array_record format."""

  class FakeMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "mnist"
    VERSION = tfds.builder_cls("mnist").VERSION  # So tfds.builder finds it.

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(28, 28, 1)),
              "label": tfds.features.ClassLabel(num_classes=10),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(n_train, 0),
              "test": self._generate_examples(n_test, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        # Pre-encoded PNG: encoding numpy images would need TensorFlow.
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        # Pixels (0, 0) and (0, 1) record the example's position.
        pixels[0, :2] = i % 256, i // 256
        PIL.Image.fromarray(pixels).save(buf, format="png")
        yield i, {"image": buf.getvalue(), "label": i % 10}

  return FakeMnist


def pretend_tfrecord(builder):
  """Marks a prepared dataset as written in TFDS's default tfrecord format.

  Writing real tfrecord files needs TensorFlow; only the recorded format
  matters to the code under test.
  """
  info_path = os.path.join(builder.data_dir, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info["fileFormat"] = "tfrecord"
  with open(info_path, "w") as f:
    json.dump(info, f)


def test_tfds_real_array_record(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  builder_cls = _fake_mnist_builder(tfds, n_train=1500, n_test=30)
  builder_cls(data_dir=str(tmp_path),
              file_format="array_record").download_and_prepare()
  had_tf = "tensorflow" in sys.modules
  ds = data.load_dataset("mnist", data_dir=str(tmp_path), test_size=20)
  assert ds.x_train.shape == (1500, 28, 28, 1)  # > one 1024-example chunk.
  assert ds.x_test.shape == (20, 28, 28, 1)
  # tfds shuffles examples when writing; labels must still follow images.
  position = ds.x_train[:, 0, 0, 0] + 256 * ds.x_train[:, 0, 1, 0].astype(int)
  np.testing.assert_array_equal(np.sort(position), np.arange(1500))
  np.testing.assert_array_equal(ds.y_train, position % 10)
  assert ds.num_classes == 10
  assert had_tf or "tensorflow" not in sys.modules


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(UsageError) as info:
    data.load_dataset("cifar10", data_dir=str(tmp_path))
  assert str(info.value) == (
      f"dataset 'cifar10' is not prepared in {tmp_path}; run: python -m "
      f"ldjax.prepare cifar10 --data-dir {tmp_path}  (needs internet and "
      "`pip install ldjax[prepare]`)")
  assert not list(tmp_path.iterdir())  # Checking created nothing.


def test_tfds_prepared_as_tfrecord(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  builder = _fake_mnist_builder(tfds, n_train=3, n_test=2)(
      data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  pretend_tfrecord(builder)
  with pytest.raises(UsageError, match="prepared as tfrecord.*ldjax.prepare"):
    data.load_dataset("mnist", data_dir=str(tmp_path))


def test_resize_center_crop():
  from ldjax.data import tfds_source  # pylint: disable=g-import-not-at-top
  wide = np.zeros((160, 213, 3), np.uint8)
  wide[:, 26:186] = 255  # The central 160 columns.
  out = tfds_source.resize_center_crop(wide, 160)
  assert out.shape == (160, 160, 3) and out.min() == 255
  small = np.arange(40 * 20, dtype=np.uint8).reshape(40, 20, 1)
  assert tfds_source.resize_center_crop(small, 160).shape == (160, 160, 1)


# --- prepare CLI -------------------------------------------------------------


def test_prepare_unknown_name(capsys):
  assert prepare.main(["imagenet"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: unknown dataset")


def test_prepare_without_tensorflow(capsys, tmp_path):
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed; this checks the message without it")
  assert prepare.main(["cifar10", "--data-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {prepare.NEEDS_TF}\n"


def test_prepare_existing_data(tmp_path, monkeypatch, capsys):
  tfds = pytest.importorskip("tensorflow_datasets")
  # Pretend TensorFlow is there; the data is already prepared, so nothing is
  # downloaded and TensorFlow is never actually used.
  monkeypatch.setattr(prepare, "_has_tensorflow", lambda: True)
  builder = _fake_mnist_builder(tfds, n_train=3, n_test=2)(
      data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  assert prepare.main(["mnist", "--data-dir", str(tmp_path)]) == 0
  assert str(builder.data_dir) in capsys.readouterr().out
  pretend_tfrecord(builder)
  assert prepare.main(["mnist", "--data-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "holds 'mnist' as tfrecord" in err


def test_prepare_help(capsys):
  with pytest.raises(SystemExit) as info:
    prepare.main(["--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert "--data-dir" in out and "imagenette/160px-v2" in out
