"""Two JAX processes on localhost (issue 15, item 2): the engine on a mesh that spans processes.

Two worker processes, each with 2 simulated CPU devices, join one
`jax.distributed` cluster on localhost (4 devices in all); a third process
runs the same work on 4 devices of its own. Every process loads the same
data and computes the same order; `Placement.put_batch` puts only its own
devices' rows, the extraction's outputs are replicated so that each host
can read the whole store (`Placement.host_readable`). Checked here:

- one train step of VGG-11 on the 2-process mesh equals the 1-process step;
- `ldjax.fit` (no work directory: nothing written, stores in memory) of
  Drop and Freeze on 2 processes makes the 1-process run's decisions and
  ends with its accuracy and weights (up to the order of additions);
- Freeze equals Drop there too.

Not covered (and not supported yet, see README "Several hosts"): work
directories (metrics, checkpoints, weights, disk stores are not written by
one process only), `python -m ldjax.run`, and data loaded per process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

try:   # pytest's default (prepend) import mode puts tests/ on sys.path
  import test_sharding as sharding_tests
except ImportError:   # pragma: no cover - other import modes
  import importlib.util
  _spec = importlib.util.spec_from_file_location(
      "test_sharding", Path(__file__).with_name("test_sharding.py"))
  sharding_tests = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(sharding_tests)

REPO = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
import numpy as np
import optax

spec = json.loads(sys.argv[1])
if spec["processes"] > 1:
  jax.distributed.initialize(f"localhost:{spec['port']}", spec["processes"], spec["rank"])

import ldjax
from ldjax.data.datasets import load_dataset
from ldjax.models import costs
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import programs, scoring, steps
from ldjax.train.sharding import Placement

out = {"devices": jax.device_count(), "local": jax.local_device_count(),
       "processes": jax.process_count()}
data = load_dataset("embedded", train_size=520, test_size=130)
model = build_model("vgg11", data.image_shape, data.num_classes, width=0.0625)
v0 = model.init(jax.random.key(0), data.image_shape)
# <one_step>
state, scores, m = one_step(Placement.of(None), model, data, v0)
leaves = jax.tree.leaves(jax.device_get((m["loss"], state.params, scores.sum, scores.abs_sum)))
out["step"] = [np.asarray(a, np.float64).ravel().tolist() for a in leaves]

cfg = TrainConfig(model="vgg11", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.05,
                  eval_batch_size=52)
out["fit"] = {}
for strategy in ("drop", "freeze"):
  s = ldjax.fit(model, data, cfg, strategy, variables=v0, progress=False)
  out["fit"][strategy] = {k: s[k] for k in ("drop_events", "final_cut", "final_store_cut",
                                            "param_l2", "test_accuracy")}
if jax.process_index() == 0:
  print("RESULT " + json.dumps(out))
'''

WORKER = WORKER.replace("# <one_step>\n", sharding_tests.ONE_STEP)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(processes: int, devices_each: int) -> list[subprocess.Popen]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_each}"
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, "-c", WORKER,
       json.dumps({"processes": processes, "rank": rank, "port": port})],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for rank in range(processes)]


def result(procs: list[subprocess.Popen]) -> dict:
  outs = []
  try:
    for proc in procs:
      outs.append(proc.communicate(timeout=600))
  finally:
    for proc in procs:
      proc.kill()
  for proc, (_, err) in zip(procs, outs):
    assert proc.returncode == 0, err[-4000:]
  line = [ln for ln in outs[0][0].splitlines() if ln.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def runs():
  # The two processes of the cluster, then the one-process reference: on 2 cores,
  # side by side they would only slow each other down.
  two = result(launch(2, 2))
  one = result(launch(1, 4))
  return {"two": two, "one": one}


def test_the_cluster_has_four_devices_in_two_processes(runs):
  assert (runs["two"]["processes"], runs["two"]["devices"], runs["two"]["local"]) == (2, 4, 2)
  assert (runs["one"]["processes"], runs["one"]["devices"]) == (1, 4)


def test_one_step_on_two_processes_is_the_one_process_step(runs):
  import numpy as np
  for a, b in zip(runs["one"]["step"], runs["two"]["step"], strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["drop", "freeze"])
def test_fit_on_two_processes_is_the_one_process_fit(runs, strategy):
  one, two = runs["one"]["fit"][strategy], runs["two"]["fit"][strategy]
  assert two["drop_events"] == one["drop_events"] and two["drop_events"], one
  assert two["final_cut"] == one["final_cut"]
  assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1.0)
  assert two["param_l2"] == pytest.approx(one["param_l2"], rel=1e-3)


def test_freeze_equals_drop_on_two_processes(runs):
  drop, freeze = runs["two"]["fit"]["drop"], runs["two"]["fit"]["freeze"]
  assert drop["drop_events"] == freeze["drop_events"]
  assert drop["final_store_cut"] == drop["final_cut"] > 0 and freeze["final_store_cut"] == 0
  assert drop["param_l2"] == pytest.approx(freeze["param_l2"], rel=1e-5)
