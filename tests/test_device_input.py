"""The training input on the devices (ldjax.train.device_input): the same batches as the
host path bit for bit, hence the same run; its budget; bad budgets.

- Batches: the jitted reader's batch equals the host's (`Draws.images`,
  `Draws.features` of `FeatureStore.read`) bit for bit, for images (none, flip,
  crop, flip,crop; the fixed views after a drop) and stores (flip; crop with K
  exact views; the approximate window of --crop-store window), float32 and
  bfloat16 rows holding -0.0, NaN and infinities; on one device here, on four
  (rows sharded over "data", a row count that 4 does not divide) in a
  subprocess (`RUNNER`, like tests/test_sharding.py).
- Runs: a small Drop run (a forced drop, flip,crop) with the input on the devices
  ends with the same weights, bit for bit, and the same drop events as with
  `device_memory_gb=0` (the host path); its readers compile once per held array,
  not per step. The same on four devices, in the subprocess.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import ldjax
from ldjax import run
from ldjax.data.augment import Augment
from ldjax.errors import UsageError
from ldjax.models.zoo import build_model
from ldjax.runs import compile_cache
from ldjax.runs.config import TrainConfig
from ldjax.store.features import FeatureStore
from ldjax.store.keeper import StoreKeeper
from ldjax.train import device_input
from ldjax.train.device_input import DeviceInput
from ldjax.train.sharding import Placement

REPO = Path(__file__).resolve().parents[1]
N, BATCH = 50, 16                  # 50 rows: 4 devices hold 13 each, 2 padding rows
IMAGE = (32, 32, 3)


def images() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (N, *IMAGE), dtype=np.uint8)


def filled_store(rows: int, shape, dtype: str) -> FeatureStore:
  """An in-memory store of random rows with -0.0, NaN and infinities among them."""
  store = FeatureStore(rows, shape, dtype, (0, 1))
  values = np.random.default_rng(1).standard_normal((rows, *shape)).astype(np.float32)
  flat = values.reshape(-1)
  flat[::7], flat[3::11], flat[5::13], flat[6::17] = -0.0, np.nan, np.inf, -np.inf
  store.write(np.arange(rows), values.astype(store.dtype))
  store.finalize()
  return store


def bits(a) -> np.ndarray:
  a = np.asarray(a)
  return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def batch_mismatches(placement: Placement) -> list[str]:
  """The cases whose device batch differs from the host's (in bits, dtype or shape)."""
  x, bad = images(), []
  idx_batches = [np.random.default_rng(2).permutation(N)[:BATCH] for _ in range(2)]
  idx_batches.append(np.arange(N - BATCH, N))   # the last rows (the padded shard's)

  def compare(name, host_read, device_read):
    for idx in idx_batches:
      host, dev = host_read(idx), device_read(idx)
      if (np.asarray(dev).dtype != host.dtype or dev.shape != host.shape
              or not np.array_equal(bits(dev), bits(host))
              or not dev.sharding.is_equivalent_to(placement.batch, dev.ndim)):
        bad.append(name)
        return

  for ops in ("none", "flip", "crop", "flip,crop"):   # images, fresh draws
    draws = Augment.parse(ops, None, IMAGE).draws(0, 3, N)
    reader = DeviceInput(placement, 1 << 30).reader(draws, BATCH, x)
    compare(f"images {ops}", lambda idx, d=draws: d.images(x, idx), reader)
  fixed = Augment.parse("flip,crop", None, IMAGE, "views", 3)   # images, after a drop
  draws = fixed.draws(0, 3, N, fixed.view_table(0, N))
  compare("images fixed views", lambda idx: draws.images(x, idx),
          DeviceInput(placement, 1 << 30).reader(draws, BATCH, x))

  cases = [("flip", Augment.parse("flip", None, IMAGE), (8, 8, 4), None),
           ("crop views", fixed, (8, 8, 4), fixed.view_table(0, N)),
           ("crop window", Augment.parse("flip,crop", None, IMAGE, "window"), (10, 10, 4), None)]
  for dtype in ("float32", "bfloat16"):
    for name, augment, shape, table in cases:
      store = filled_store(augment.views * N, shape, dtype)
      draws = augment.draws(0, 5, N, table)
      size, image_size = (8, 8), IMAGE[:2]
      reader = DeviceInput(placement, 1 << 30).reader(draws, BATCH, x, store, size, image_size)
      compare(f"store {name} {dtype}",
              lambda idx, s=store, d=draws: d.features(s.read(d.rows(idx)), idx, size,
                                                       image_size), reader)
  return bad


def test_device_batches_equal_the_host_batches():
  assert batch_mismatches(Placement.of(1)) == []


def test_the_budget_decides_what_is_held():
  p, x = Placement.of(1), images()
  draws = Augment.parse("flip", None, IMAGE).draws(0, 0, N)
  store = filled_store(2 * N, (8, 8, 4), "float32")   # 102,400 bytes; the images 153,600
  args = (draws, BATCH, x)
  assert DeviceInput(p, 0).reader(*args) is None
  assert DeviceInput(p, x.nbytes - 1).reader(*args) is None
  one = DeviceInput(p, x.nbytes + store.nbytes)
  assert one.reader(*args) is not None and set(one.held) == {"images"}
  assert one.reader(*args, store, (8, 8), IMAGE[:2])   # the store takes the images' place
  assert set(one.held) == {"store"} and one.used_bytes == store.nbytes
  # The test cache takes what is left; a new claim of the same name replaces the old one.
  assert one.claim("test", x.nbytes) and not one.claim("val", 1)
  assert one.claim("test", 10) and one.used_bytes == store.nbytes + 10
  assert one.claim("val", 100) and not one.claim("test", x.nbytes + 1)
  assert one.used_bytes == store.nbytes + 100
  small = DeviceInput(p, store.nbytes - 1)  # it does not fit: read on the host
  assert small.reader(*args, store, (8, 8), IMAGE[:2]) is None and small.used_bytes == 0
  one.release()
  assert one.held == {} and one.claims == {} and one.used_bytes == 0


def test_unset_budget_is_0_on_cpu_and_gb_otherwise():
  p = Placement.of(1)
  assert device_input.budget_bytes(None, p) == 0
  assert device_input.budget_bytes(0.5, p) == 1 << 29
  assert device_input.rows_bytes((50, 8, 8, 4), np.float32, 4) == 13 * 8 * 8 * 4 * 4


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, -0.5, True, "2"])
def test_bad_budget_is_refused(value):
  with pytest.raises(UsageError, match=r"^store.device_memory_gb must be a finite number >= 0"):
    TrainConfig(device_memory_gb=value)


@pytest.mark.parametrize("text", ["nan", "-1", "inf", "lots"])
def test_bad_budget_flag_is_one_line(text, tmp_path, capsys):
  code = run.main(["--device-memory-gb", text, "--workdir", str(tmp_path / "wd"),
                   "--no-progress", "--compilation-cache", "off"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert "--device-memory-gb" in err[0] and not (tmp_path / "wd").exists()


def test_a_store_that_fits_nowhere_names_its_bytes_and_the_settings():
  k = StoreKeeper(1000, [(8, 8, 16)], "float32", memory_budget_bytes=0, directory=None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert k.new(1) is None
  message = str(caught[-1].message)
  assert "\n" not in message and message.startswith("cannot store the features")
  for words in ("4,096,000 bytes", "store.memory_gb to 0.01", "work directory",
                "store.dtype bfloat16", "frozen"):
    assert words in message, message
  assert k.fallbacks[0]["stage_stop"] == 1


# -- whole runs -----------------------------------------------------------------------------

RUN = dict(model="resnet18", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.02,
           augment="flip,crop", drop_at="1:2")


def fit_pair(data, devices=None, count=None) -> dict:
  """Drop with the input on the devices and on the host: (summary, records) each."""
  model = build_model("resnet18", data.image_shape, data.num_classes, width=RUN["width"])
  variables = model.init(jax.random.key(0), data.image_shape)
  out = {}
  for gb in (0.0, 1.0):
    records = []
    cfg = TrainConfig(**RUN, devices=devices, device_memory_gb=gb)
    out[gb] = ldjax.fit(model, data, cfg, "drop", start=ldjax.Start(variables),
                        hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                          progress=False)), records
  return out


def same_runs(out) -> dict:
  (host, hr), (dev, dr) = out[0.0], out[1.0]
  leaves = zip(jax.tree.leaves(host["variables"]), jax.tree.leaves(dev["variables"]))
  return {"drop_events": host["drop_events"] == dev["drop_events"] != [],
          "store_cut": host["final_store_cut"] == dev["final_store_cut"] == 2,
          "weights": all(np.array_equal(bits(a), bits(b)) for a, b in leaves),
          "losses": [r["loss"] for r in hr] == [r["loss"] for r in dr],
          "test_losses": [r["test_loss"] for r in hr] == [r["test_loss"] for r in dr]}


SAME = {"drop_events": True, "store_cut": True, "weights": True, "losses": True,
        "test_losses": True}


def test_a_drop_run_on_the_devices_equals_the_host_run(tiny_data, monkeypatch):
  traces, claims = [], []
  gather, claim = device_input.gather_rows, DeviceInput.claim
  monkeypatch.setattr(device_input, "gather_rows",
                      lambda *a: traces.append(a[0].shape) or gather(*a))
  monkeypatch.setattr(DeviceInput, "claim",
                      lambda self, *a: claims.append((*a, claim(self, *a))) or claims[-1][-1])
  out = fit_pair(tiny_data)
  assert same_runs(out) == SAME
  # Compiled once per held array (the images, then the store), not per step (8 per epoch).
  assert len(traces) == 2, traces
  # The test set's cache of the dropped stages: on the host with budget 0, then on the
  # devices.
  assert [(name, ok) for name, _, ok in claims] == [("test", False), ("test", True)], claims


# -- four devices, in a subprocess ------------------------------------------------------------

RUNNER = r'''
import json, os, sys
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
sys.path.insert(0, sys.argv[1])
import test_device_input as t
from ldjax.data.datasets import load_dataset
from ldjax.train.sharding import Placement

out = {"visible": jax.device_count(), "mismatches": t.batch_mismatches(Placement.of(4))}
data = load_dataset("embedded", train_size=544, test_size=256)
out["runs"] = t.same_runs(t.fit_pair(data, devices=4))
print("RESULT " + json.dumps(out))
'''


def start_early(early, tmp_path_factory):
  """The four-device runner, in a thread (conftest.py starts it early)."""
  return early.start("device_input", run_runner, early.env)


@pytest.fixture(scope="module")
def four(early, tmp_path_factory):
  return start_early(early, tmp_path_factory).result()


def run_runner(base_env: dict) -> dict:
  env = dict(base_env, XLA_FLAGS="--xla_backend_optimization_level=0",
             JAX_COMPILATION_CACHE_DIR=base_env[compile_cache.ENV])
  r = subprocess.run([sys.executable, "-c", RUNNER, str(REPO / "tests")], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_four_devices_batches_equal_the_host_batches(four):
  assert four["visible"] == 4 and four["mismatches"] == []


def test_four_devices_drop_run_equals_the_host_run(four):
  assert four["runs"] == SAME
