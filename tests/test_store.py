"""Tests of `ldjax.store.FeatureStore`: round trips in memory and memory-mapped,
in float32 and bfloat16, the manifest, checksums and cleanup."""

import json

import ml_dtypes
import numpy as np
import pytest

from ldjax.store import features as store_mod
from ldjax.store.features import FeatureStore, chunk_checksums, load_array, storage_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)
N, SHAPE = 37, (3, 2, 5)   # a prime number of rows: the batches below do not divide it


def features(dtype: str, seed: int = 0) -> np.ndarray:
  """Distinct values per row, exactly representable in the store dtype."""
  x = np.random.default_rng(seed).normal(size=(N, *SHAPE)).astype(np.float32)
  x[:, 0, 0, 0] = np.arange(N)   # row i is recognisable by its first value
  return x.astype(BF16) if dtype == "bfloat16" else x


def fill(st: FeatureStore, values: np.ndarray, batch: int = 8, seed: int = 1) -> None:
  """Writes `values` in shuffled batches of example indices, as an epoch does."""
  perm = np.random.default_rng(seed).permutation(N)
  for i in range(0, N, batch):
    idx = perm[i:i + batch]
    st.write(idx, values[idx])


BACKINGS = {
    "memory": dict(directory=None),
    "memory_with_dir": dict(memory_budget_bytes=1 << 30),   # fits: stays in memory
    "npy": dict(memory_budget_bytes=16),                    # too big: memory-mapped
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("backing", list(BACKINGS))
def test_round_trip(tmp_path, dtype, backing):
  kwargs = dict(BACKINGS[backing])
  kwargs.setdefault("directory", tmp_path)
  st = FeatureStore(N, SHAPE, dtype, (0, 3), **kwargs)
  assert st.in_memory == (backing != "npy")
  assert st.shape == (N, *SHAPE)
  values = features(dtype)
  fill(st, values)
  # Random-index reads before finalize.
  idx = np.random.default_rng(2).permutation(N)[:11]
  out = st.read(idx)
  assert out.dtype == storage_dtype(dtype)
  np.testing.assert_array_equal(out.view(np.uint8), values[idx].view(np.uint8))
  manifest = st.finalize()
  assert st.complete
  assert manifest["backing"] == ("npy" if backing == "npy" else "memory")
  # ... and after (for npy: from the renamed, re-opened file).
  out = st.read(idx)
  assert out.dtype == storage_dtype(dtype)
  np.testing.assert_array_equal(out.view(np.uint8), values[idx].view(np.uint8))
  np.testing.assert_array_equal(st.read(np.arange(N)).astype(np.float32),
                                values.astype(np.float32))
  if backing != "npy":
    assert not list(tmp_path.iterdir())   # an in-memory store writes nothing
  st.delete()


def test_float32_values_survive_unchanged_and_bfloat16_rounds(tmp_path):
  x = np.full((N, *SHAPE), 1 + 2**-12, np.float32)   # not representable in bfloat16
  f32 = FeatureStore(N, SHAPE, "float32", (0, 1), directory=tmp_path, memory_budget_bytes=0)
  bf16 = FeatureStore(N, SHAPE, "bfloat16", (0, 2), directory=tmp_path, memory_budget_bytes=0)
  for st in (f32, bf16):
    st.write(np.arange(N), x)
    st.finalize()
  np.testing.assert_array_equal(f32.read(np.arange(N)), x)
  # bfloat16 keeps 8 mantissa bits: 1 + 2^-12 rounds to 1.
  np.testing.assert_array_equal(bf16.read(np.arange(N)).astype(np.float32), 1.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_npy_manifest_and_file(tmp_path, dtype):
  st = FeatureStore(N, SHAPE, dtype, (2, 5), directory=tmp_path / "features",
                    memory_budget_bytes=0)
  values = features(dtype, seed=3)
  fill(st, values, batch=5)
  manifest = st.finalize()

  assert st.path.name == "features_2-5.npy"
  on_disk = json.loads(st.manifest_path.read_text())
  assert on_disk == manifest
  assert on_disk["shape"] == [N, *SHAPE]
  assert on_disk["dtype"] == dtype
  assert on_disk["stage_range"] == [2, 5]
  assert on_disk["backing"] == "npy"
  assert on_disk["file"] == "features_2-5.npy"
  assert on_disk["checksums"] == chunk_checksums(values)
  assert len(on_disk["checksums"]) == 1   # well under one 64 MiB chunk

  # A plain .npy, loadable without pickle; bfloat16 as its uint16 bit pattern.
  raw = np.load(st.path, allow_pickle=False)
  assert raw.shape == (N, *SHAPE)
  assert raw.dtype == (np.uint16 if dtype == "bfloat16" else np.float32)
  np.testing.assert_array_equal(raw.view(storage_dtype(dtype)).view(np.uint8),
                                values.view(np.uint8))
  loaded = load_array(st.path, dtype)
  assert loaded.dtype == storage_dtype(dtype)
  assert chunk_checksums(loaded) == on_disk["checksums"]

  # Nothing temporary is left: the data file and its manifest only.
  assert sorted(p.name for p in st.path.parent.iterdir()) == [
      "features_2-5.json", "features_2-5.npy"]


def test_half_written_store_is_only_a_temporary(tmp_path):
  st = FeatureStore(N, SHAPE, "float32", (0, 4), directory=tmp_path, memory_budget_bytes=0)
  st.write(np.arange(5), features("float32")[:5])
  names = [p.name for p in tmp_path.iterdir()]
  assert "features_0-4.npy" not in names and "features_0-4.json" not in names
  assert len(names) == 1 and ".tmp" in names[0]
  st.delete()   # also removes the half-written temporary
  assert not list(tmp_path.iterdir())


def test_delete_removes_files(tmp_path):
  st = FeatureStore(N, SHAPE, "bfloat16", (0, 3), directory=tmp_path, memory_budget_bytes=0)
  fill(st, features("bfloat16"))
  st.finalize()
  assert st.path.exists() and st.manifest_path.exists()
  st.delete()
  assert not st.path.exists() and not st.manifest_path.exists()
  assert not list(tmp_path.iterdir())


def test_bfloat16_halves_nbytes(tmp_path):
  f32 = FeatureStore(N, SHAPE, "float32", (0, 1))
  bf16 = FeatureStore(N, SHAPE, "bfloat16", (0, 1))
  assert f32.nbytes == N * int(np.prod(SHAPE)) * 4
  assert bf16.nbytes * 2 == f32.nbytes
  # On disk too.
  disk = {}
  for dtype in ("float32", "bfloat16"):
    st = FeatureStore(N, SHAPE, dtype, (0, 1), directory=tmp_path / dtype,
                      memory_budget_bytes=0)
    fill(st, features(dtype))
    st.finalize()
    disk[dtype] = st.path.stat().st_size
  header = disk["float32"] - f32.nbytes
  assert 0 < header <= 256
  assert disk["bfloat16"] - bf16.nbytes == header


def test_budget_decides_backing(tmp_path):
  nbytes = N * int(np.prod(SHAPE)) * 4
  assert FeatureStore(N, SHAPE, "float32", (0, 1), directory=tmp_path,
                      memory_budget_bytes=nbytes).in_memory
  assert not FeatureStore(N, SHAPE, "float32", (0, 2), directory=tmp_path,
                          memory_budget_bytes=nbytes - 1).in_memory
  # The same bytes fit in bfloat16.
  assert FeatureStore(N, SHAPE, "bfloat16", (0, 3), directory=tmp_path,
                      memory_budget_bytes=nbytes // 2).in_memory


def test_chunk_checksums_change_with_one_byte(monkeypatch):
  monkeypatch.setattr(store_mod, "CHUNK_BYTES", 16)   # small chunks, so several per array
  a = np.arange(40, dtype=np.float32)               # 160 bytes -> 10 chunks of 16
  before = chunk_checksums(a)
  assert len(before) == 10
  b = a.copy()
  b.view(np.uint8)[37] ^= 1                         # one bit of byte 37, in chunk 2
  after = chunk_checksums(b)
  assert after != before
  assert [i for i, (x, y) in enumerate(zip(before, after)) if x != y] == [2]
  assert chunk_checksums(a.copy()) == before        # deterministic


def test_chunk_checksums_of_bfloat16_use_bits():
  a = np.array([1.0, 2.0, 3.0], BF16)
  assert chunk_checksums(a) == chunk_checksums(a.view(np.uint16))
  b = a.copy()
  b[1] = 2.015625   # the next bfloat16 after 2.0
  assert chunk_checksums(b) != chunk_checksums(a)


def test_unknown_dtype():
  with pytest.raises(ValueError, match="float16"):
    FeatureStore(N, SHAPE, "float16", (0, 1))
