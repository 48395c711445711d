"""Data parallelism (`ldjax.train.sharding`) on 4 simulated CPU devices.

XLA's host platform can pretend to have several devices
(`--xla_force_host_platform_device_count`), but only when set before jax is
imported, so the multi-device checks run in one subprocess (`RUNNER`) whose
results the tests read:

- one train step on 1, 2 and 4 devices: the same loss, new weights,
  BatchNorm statistics and score sums up to float rounding (so the gradient
  and the batch statistics are those of the global batch, not of a shard);
- `python -m ldjax.run --strategy drop,freeze` (its `main`) with --devices 1
  and 4, on a training set with a remainder and an evaluation batch (50)
  that 4 does not divide: the same drop decisions, accuracies within noise,
  Freeze == Drop on every device count, the device count in config.json and
  summary.json;
- a 4-device drop run stopped after its drop decision and resumed on 2
  devices: the checkpoint restores onto another mesh and ends like the
  uninterrupted run;
- bad --devices values and a batch that does not divide: one line, exit 2.

The settings (VGG-11 at width 1/16, lr 0.05) decide with some margin. Scores
of a tiny network a few steps from its initialisation are chaotic: on one
device, perturbing the initial weights by 1e-7 (relative) already moves P by
a few hundredths, as much as changing the device count does, and settings
whose P' sit near 0 can flip a decision either way.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ldjax import run
from ldjax.errors import UsageError
from ldjax.runs import compile_cache
from ldjax.train import sharding

REPO = Path(__file__).resolve().parents[1]
DEVICES = (1, 2, 4)      # one train step on each
CLI_DEVICES = (1, 4)     # whole runs (2 devices: the resumed run)
CLI_ARGS = ["--model", "vgg11", "--width", "0.0625", "--train-size", "520", "--test-size", "130",
            "--batch-size", "64", "--eval-batch-size", "50", "--epochs", "4", "--warmup", "1",
            "--lr", "0.05", "--strategy", "drop,freeze", "--no-progress",
            # Forced decisions: the paper's rule can take another cut on another device
            # count (reductions add in another order); what is tested here is that the
            # same decisions give the same run, on any x86-64 processor.
            "--drop-at", "2:2,3:4"]

# One SGD step of `model` from `v0` on the first 64 training images, on placement `p`
# (the runner here and tests/test_multiprocess.py's worker both embed it).
ONE_STEP = r'''
def one_step(p, model, data, v0):
  tx = optax.sgd(0.05, momentum=0.9)
  shapes = tuple(c.output_shape for c in costs.stage_costs(model, data.image_shape))
  net = programs.Net(tuple(model.stages), data.image_shape, shapes, data.mean, data.std,
                     placement=p)
  variables = p.replicate(v0)
  opt = p.replicate([tx.init(v.get("params", {})) for v in variables])
  fn = programs.train_step(net, tx, programs.structs(variables), programs.structs(opt), 0, 0,
                           64, np.float32).fn
  params, stats = steps.split_variables(variables)
  return fn(steps.TrainState(params, stats, opt), p.replicate(scoring.init(params)),
            [], p.put_batch(data.x_train[:64]), p.put_batch(data.y_train[:64]),
            p.replicate(jax.random.key(3)), np.int32(0), np.float32(0))
'''

RUNNER = r'''
import contextlib, io, json, os, sys
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
import numpy as np
import optax

import ldjax
from ldjax import run
from ldjax.data.datasets import load_dataset
from ldjax.errors import Interrupted
from ldjax.models import costs
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.train import programs, scoring, steps
from ldjax.train.sharding import Placement

spec = json.loads(sys.argv[1])
out = {"visible": jax.device_count()}
# <one_step>

# One train step of the whole VGG-11 (BatchNorm, dropout) on 1, 2, 4 devices.
data = load_dataset("embedded", train_size=520, test_size=130)
model = build_model("vgg11", data.image_shape, data.num_classes, width=0.0625)
v0 = model.init(jax.random.key(0), data.image_shape)
steps_out = {}
for n in spec["devices"]:
  p = Placement.of(n)
  state, scores, m = one_step(p, model, data, v0)
  steps_out[n] = jax.device_get((m["loss"], state.params, state.batch_stats, scores.sum,
                                 scores.abs_sum))
  on_mesh = jax.tree.leaves((state, scores)) + [m["loss"]]
  out.setdefault("shardings", {})[n] = {
      "replicated": all(a.sharding.is_equivalent_to(p.replicated, a.ndim) for a in on_mesh),
      "batch": p.put_batch(data.x_train[:64]).sharding.spec == p.batch.spec}
ref = jax.tree.leaves(steps_out[spec["devices"][0]])
# How far each leaf is outside its tolerance (0: within). Sharding re-associates float32
# sums: a sum of N terms added in another order moves by about sqrt(N) u (sum of |terms|)
# (u = 2^-24), and the largest reductions of this step (the first conv's weight gradient
# and BatchNorm's statistics) run over N = 64 x 28 x 28 positions. The tolerance of a leaf
# is 16 sqrt(N) u max|leaf| (2.1e-4 of the leaf's scale), with rtol 1e-4 and atol 1e-6 for
# the conv biases in front of BatchNorm, whose true gradient is 0 (rounding noise ~1e-9).
# A bug this catches (statistics of one 16- or 32-example shard, a gradient not summed over
# the shards) moves leaves by tens of percent of their scale.
ROUNDING = 16 * np.sqrt(64 * 28 * 28) * 2.0 ** -24
out["step_excess"] = {}
for n, got in steps_out.items():
  out["step_excess"][n] = max(
      float(np.max(np.abs(a - b) - 1e-4 * np.abs(a) - ROUNDING * np.max(np.abs(a)) - 1e-6))
      for a, b in zip(ref, jax.tree.leaves(got)))
  out.setdefault("step_loss", {})[n] = float(got[0])

def cli(argv):
  o, e = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
    rc = run.main(argv)
  return {"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()}

out["cli"] = {}
for n in spec["cli_devices"]:
  out["cli"][n] = cli(spec["cli_args"] + ["--devices", str(n), "--workdir",
                                         os.path.join(spec["tmp"], f"d{n}")])
out["bad"] = [cli(argv + ["--workdir", os.path.join(spec["tmp"], f"bad{i}")])
              for i, argv in enumerate(spec["bad"])]

# Stopped after epoch 3 on 4 devices (its drop decision pending), resumed on 2.
cfg = TrainConfig(model="vgg11", width=0.0625, epochs=4, warmup=1, batch_size=64, lr=0.05,
                  eval_batch_size=50, devices=4, drop_at="2:2,3:4")
run_dir = RunDir(os.path.join(spec["tmp"], "resume"))
v0 = model.init(jax.random.key(0), data.image_shape)
done = []
try:
  ldjax.fit(model, data, cfg, "drop", start=ldjax.Start(v0), run_dir=run_dir,
            hooks=ldjax.Hooks(on_epoch=done.append, should_stop=lambda: len(done) >= 3,
                              progress=False))
except Interrupted:
  pass
s = ldjax.fit(model, data, cfg.replace(devices=2), "drop", start=ldjax.Start(v0),
              run_dir=run_dir, resume=True, hooks=ldjax.Hooks(progress=False))
out["resumed"] = {k: s[k] for k in ("drop_events", "final_cut", "param_l2", "test_accuracy",
                                    "devices")} | {"stopped_after": len(done)}
print("RESULT " + json.dumps(out))
'''

RUNNER = RUNNER.replace("# <one_step>\n", ONE_STEP)

BAD = [
    (["--devices", "0"], "--devices must be an integer > 0"),
    (["--devices", "-2"], "--devices must be an integer > 0"),
    (["--devices", "5"], "--devices 5 asks for more devices than the 4 visible"),
    (["--devices", "3"], "--batch-size 64 does not divide by the 3 devices"),
    (["--devices", "4", "--batch-size", "30"], "--batch-size 30 does not divide by the 4"),
    (["--devices", "two"], "--devices"),
]


def start_early(early, tmp_path_factory):
  """The runner, in a thread (conftest.py starts it early)."""
  return early.start("sharding", run_runner, tmp_path_factory, early.env)


@pytest.fixture(scope="module")
def runs(early, tmp_path_factory):
  return start_early(early, tmp_path_factory).result()


def run_runner(tmp_path_factory, base_env: dict) -> dict:
  tmp = tmp_path_factory.mktemp("sharding")
  spec = {"devices": list(DEVICES), "cli_devices": list(CLI_DEVICES), "cli_args": CLI_ARGS,
          "tmp": str(tmp),
          "bad": [CLI_ARGS + argv for argv, _ in BAD]}
  # XLA's optimization level 0 and the session's compilation cache (conftest.py), for the
  # command line and for the fits after it: the resumed run's 4-device epochs load the
  # programs of the --devices 4 run.
  env = dict(base_env, XLA_FLAGS="--xla_backend_optimization_level=0",
             JAX_COMPILATION_CACHE_DIR=base_env[compile_cache.ENV])
  r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  out["tmp"] = tmp
  return out


def read(tmp: Path, n: int, strategy: str, name: str):
  path = tmp / f"d{n}" / strategy / name
  if name.endswith(".jsonl"):
    return [json.loads(line) for line in path.read_text().splitlines()]
  return json.loads(path.read_text())


def test_the_subprocess_sees_four_devices(runs):
  assert runs["visible"] == 4


def test_one_step_is_the_global_batch_step(runs):
  # Loss, weights, BatchNorm statistics and score sums after one step agree to
  # float rounding: statistics of a 16- or 32-example shard, or a gradient not
  # summed over the shards, would differ by orders of magnitude more.
  for n in DEVICES:
    assert runs["step_excess"][str(n)] <= 0, runs["step_excess"]
    # The forward pass differs by BatchNorm's statistics, sums over 64 x 28 x 28 positions
    # re-associated (the runner's ROUNDING).
    assert runs["step_loss"][str(n)] == pytest.approx(
        runs["step_loss"]["1"], rel=16 * (64 * 28 * 28) ** 0.5 * 2.0 ** -24)


def test_state_is_replicated_and_the_batch_sharded(runs):
  # Every output of the step (state, score sums, loss) and a batch on the mesh.
  for n in DEVICES:
    assert runs["shardings"][str(n)] == {"replicated": True, "batch": True}


def test_runs_succeed(runs):
  for n in CLI_DEVICES:
    r = runs["cli"][str(n)]
    assert r["rc"] == 0, r["stderr"][-3000:]
    assert "Traceback" not in r["stderr"]


def test_device_count_is_recorded(runs):
  for n in CLI_DEVICES:
    for strategy in ("drop", "freeze"):
      assert read(runs["tmp"], n, strategy, "config.json")["devices"] == n
      assert read(runs["tmp"], n, strategy, "summary.json")["devices"] == n


def test_forced_decisions_give_the_same_run_on_every_device_count(runs):
  one = read(runs["tmp"], 1, "drop", "summary.json")
  assert one["drop_events"], "no drop happened: the comparison would prove nothing"
  for n in CLI_DEVICES[1:]:
    s = read(runs["tmp"], n, "drop", "summary.json")
    assert s["drop_events"] == one["drop_events"]
    assert s["final_cut"] == one["final_cut"] > 0
    # 130 test images: 5 points are 6.5 images (the 1e-7 perturbation moves ~1-3).
    assert abs(s["test_accuracy"] - one["test_accuracy"]) <= 5.0
    for a, b in zip(read(runs["tmp"], 1, "drop", "metrics.jsonl"),
                    read(runs["tmp"], n, "drop", "metrics.jsonl")):
      assert (a["decision"] or {}).get("n_star") == (b["decision"] or {}).get("n_star")
      assert a["dropped_stages"] == b["dropped_stages"]
    # The first epoch, before rounding differences have compounded, matches closely.
    first = [read(runs["tmp"], k, "drop", "metrics.jsonl")[0] for k in (1, n)]
    assert first[1]["loss"] == pytest.approx(first[0]["loss"], rel=1e-5)


@pytest.mark.parametrize("n", CLI_DEVICES)
def test_freeze_equals_drop_on_every_device_count(runs, n):
  freeze = read(runs["tmp"], n, "freeze", "summary.json")
  drop = read(runs["tmp"], n, "drop", "summary.json")
  assert drop["drop_events"] == freeze["drop_events"] and drop["drop_events"]
  assert drop["final_cut"] == freeze["final_cut"] > 0
  assert abs(drop["test_accuracy"] - freeze["test_accuracy"]) <= 0.5
  assert drop["param_l2"] == pytest.approx(freeze["param_l2"], rel=1e-4)
  for f, d in zip(read(runs["tmp"], n, "freeze", "metrics.jsonl"),
                  read(runs["tmp"], n, "drop", "metrics.jsonl")):
    assert f["dropped_stages"] == d["dropped_stages"]
    assert d["test_loss"] == pytest.approx(f["test_loss"], rel=1e-4)
    assert d["loss"] == pytest.approx(f["loss"], rel=1e-4)


def test_a_checkpoint_resumes_on_another_device_count(runs):
  # Stopped on 4 devices after the epoch that decided the drop, resumed on 2:
  # the extraction and the head's epoch run there and end like the 4-device run.
  resumed, four = runs["resumed"], read(runs["tmp"], 4, "drop", "summary.json")
  assert resumed["stopped_after"] == 3 and resumed["devices"] == 2
  assert resumed["drop_events"] == four["drop_events"]
  assert resumed["final_cut"] == four["final_cut"]
  assert resumed["param_l2"] == pytest.approx(four["param_l2"], rel=1e-4)


@pytest.mark.parametrize("i", range(len(BAD)), ids=[" ".join(a) for a, _ in BAD])
def test_bad_devices_are_one_line(runs, i):
  r, needle = runs["bad"][i], BAD[i][1]
  assert r["rc"] == 2, r
  lines = r["stderr"].strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
  assert not (runs["tmp"] / f"bad{i}").exists()


# --- in this process (one device) ---------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["--devices", "0"], "--devices must be an integer > 0"),
    (["--devices", "2"], "--devices 2 asks for more devices than the 1 visible"),
])
def test_bad_devices_here(argv, needle, tmp_path, capsys):
  code = run.main(argv + ["--workdir", str(tmp_path / "wd"), "--no-progress",
                          "--compilation-cache", "off"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and needle in err[0], err
  assert not (tmp_path / "wd").exists()


def test_device_count_rules():
  assert sharding.device_count(None, 64) == 1
  assert sharding.device_count(1, 7) == 1
  for bad in (0, -1, True, 1.0):
    with pytest.raises(UsageError, match="run.devices must be"):
      sharding.device_count(bad, 64)


def test_eval_batch_is_rounded_up_not_refused():
  p = sharding.Placement.of(1)
  assert p.round_up(130) == 130 and p.devices == 1
