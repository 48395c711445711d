"""Two JAX processes on localhost (issue 15, item 2): the engine on a mesh that spans processes.

Two worker processes, each with 2 simulated CPU devices, join one
`jax.distributed` cluster on localhost (4 devices in all); a third process
runs the same work on 4 devices of its own. Every process loads the same
data and computes the same order of batches; each trains on its own blocks
of the training set (`Placement.put_local` puts its rows of each batch) and
keeps their maps in its store (the extraction's output stays sharded, each
process reads its rows); the test set is whole in every process. Checked
here:

- one train step of VGG-11 on the 2-process mesh equals the 1-process step;
- `python -m ldjax.run --strategy drop,freeze` started in each process with
  `--coordinator localhost:PORT --num-processes 2 --process-id I` (which
  joins the cluster) makes the 1-process run's decisions and ends with its
  accuracy and weights (up to the order of additions); Freeze equals Drop
  there too;
- each process holds, trains on and stores only its half of the training set
  (`ldjax.data.batching.Blocks`, `compare.prepare`; the reference runs with
  `--data-shards 2`, which makes the same batches): its store has half the
  one-process bytes;
- process 0 alone writes and prints the work directory's files (metrics,
  summaries, comparison, weights), both save the orbax checkpoints, each
  keeps its own disk feature store (`features/process-I`);
- bad cluster flags: one line, exit status 2.

Not covered here (see README "Several hosts"): a resume on several processes
(checked by hand), one process failing while the others run.
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
import contextlib, io, json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
spec = json.loads(sys.argv[1])
from ldjax import run

# First the command line, which joins the cluster (--coordinator ...) before jax starts.
argv = spec["cli_args"] + ["--workdir", spec["workdir"]]
if spec["processes"] > 1:
  argv += ["--coordinator", f"localhost:{spec['port']}", "--num-processes",
           str(spec["processes"]), "--process-id", str(spec["rank"])]
o = io.StringIO()
with contextlib.redirect_stdout(o):
  rc = run.main(argv)
out = {"cli": {"rc": rc, "stdout": o.getvalue()}}

import jax
import numpy as np
import optax

from ldjax.data.datasets import load_dataset
from ldjax.models import costs
from ldjax.models.zoo import build_model
from ldjax.train import programs, scoring, steps
from ldjax.train.sharding import Placement

out |= {"devices": jax.device_count(), "local": jax.local_device_count(),
        "processes": jax.process_count(), "rank": jax.process_index()}
from ldjax.runs.config import TrainConfig
from ldjax.train import compare
held, _ = compare.prepare(TrainConfig(model="vgg11", width=0.0625, train_size=520,
                                      test_size=130, batch_size=64), ["drop"])
out["held"] = [held.train_start, len(held.x_train), held.num_train, len(held.x_test)]
data = load_dataset("embedded", train_size=520, test_size=130)
model = build_model("vgg11", data.image_shape, data.num_classes, width=0.0625)
v0 = model.init(jax.random.key(0), data.image_shape)
# <one_step>
state, scores, m = one_step(Placement.of(None), model, data, v0)
leaves = jax.tree.leaves(jax.device_get((m["loss"], state.params, scores.sum, scores.abs_sum)))
out["step"] = [np.asarray(a, np.float64).ravel().tolist() for a in leaves]
print("RESULT " + json.dumps(out))
'''

WORKER = WORKER.replace("# <one_step>\n", sharding_tests.ONE_STEP)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# A disk store (--feature-memory-gb 0): each process writes and reads its own.
CLI_ARGS = ["--model", "vgg11", "--width", "0.0625", "--train-size", "520", "--test-size", "130",
            "--batch-size", "64", "--eval-batch-size", "52", "--epochs", "3", "--warmup", "1",
            "--lr", "0.05", "--strategy", "drop,freeze", "--feature-memory-gb", "0",
            "--no-progress"]


def launch(processes: int, devices_each: int, workdir: Path, extra=(), base_env=None
           ) -> list[tuple]:
  """Start the processes; each writes its output to files (a full pipe would block it)."""
  env = dict(os.environ if base_env is None else base_env)
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices_each} "
                      "--xla_backend_optimization_level=0")   # as conftest.py
  port = free_port()
  logs = workdir.parent / f"{workdir.name}-logs"
  logs.mkdir(parents=True, exist_ok=True)
  started = []
  for rank in range(processes):
    out, err = logs / f"{rank}.out", logs / f"{rank}.err"
    with out.open("w") as o, err.open("w") as e:
      proc = subprocess.Popen(
          [sys.executable, "-c", WORKER,
           json.dumps({"processes": processes, "rank": rank, "port": port,
                       "cli_args": CLI_ARGS + list(extra), "workdir": str(workdir)})],
          cwd=REPO, env=env, stdout=o, stderr=e, text=True)
    started.append((proc, out, err))
  return started


def results(started: list[tuple]) -> list[dict]:
  """Each process's RESULT line."""
  try:
    for proc, _, _ in started:
      proc.wait(timeout=600)
  finally:
    for proc, _, _ in started:
      proc.kill()
  for proc, _, err in started:
    assert proc.returncode == 0, err.read_text()[-4000:]
  lines = [[ln for ln in out.read_text().splitlines() if ln.startswith("RESULT ")][-1]
           for _, out, _ in started]
  return [json.loads(line[len("RESULT "):]) for line in lines]


def summaries(workdir: Path) -> dict:
  return {s: json.loads((workdir / s / "summary.json").read_text()) for s in ("drop", "freeze")}


def start_early(early, tmp_path_factory):
  """The processes, in a thread (conftest.py starts it early)."""
  return early.start("multiprocess", cluster_and_reference, tmp_path_factory, early.env)


@pytest.fixture(scope="module")
def runs(early, tmp_path_factory):
  return start_early(early, tmp_path_factory).result()


def cluster_and_reference(tmp_path_factory, base_env: dict) -> dict:
  # The two processes of the cluster, then the one-process reference: on 2 cores,
  # side by side they would only slow each other down.
  tmp = tmp_path_factory.mktemp("multiprocess")
  two = results(launch(2, 2, tmp / "two", base_env=base_env))
  # The training set in two blocks, as the two processes hold it: the same batches.
  one = results(launch(1, 4, tmp / "one", ["--data-shards", "2"], base_env=base_env))
  return {"two": two[0], "two_ranks": two, "one": one[0], "dirs": {"two": tmp / "two",
                                                                    "one": tmp / "one"}}


def test_the_cluster_has_four_devices_in_two_processes(runs):
  assert [(r["processes"], r["devices"], r["local"], r["rank"]) for r in runs["two_ranks"]] \
      == [(2, 4, 2, 0), (2, 4, 2, 1)]
  assert (runs["one"]["processes"], runs["one"]["devices"]) == (1, 4)


def test_each_process_holds_its_block_of_the_training_set(runs):
  # [first example held, examples held, whole training set, test set]
  assert [r["held"] for r in runs["two_ranks"]] == [[0, 260, 520, 130], [260, 260, 520, 130]]
  assert runs["one"]["held"] == [0, 520, 520, 130]


def test_one_step_on_two_processes_is_the_one_process_step(runs):
  import numpy as np
  for a, b in zip(runs["one"]["step"], runs["two"]["step"], strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_process_zero_reports_and_the_others_print_nothing(runs):
  first, second = (r["cli"] for r in runs["two_ranks"])
  assert first["rc"] == second["rc"] == 0
  assert "| drop |" in first["stdout"] and "results in" in first["stdout"]
  assert second["stdout"] == ""


def test_the_work_directory_is_written_once(runs):
  two, one = runs["dirs"]["two"], runs["dirs"]["one"]
  for d in (two, one):
    assert (d / "comparison.md").is_file() and (d / "report.md").is_file()
    for s in ("drop", "freeze"):
      lines = (d / s / "metrics.jsonl").read_text().splitlines()
      assert [json.loads(ln)["epoch"] for ln in lines if '"epoch"' in ln] == [1, 2, 3]
      assert (d / s / "weights.safetensors").is_file()
      assert sorted(p.name for p in (d / s / "checkpoints").iterdir()) == ["1", "2", "3"]
  config = json.loads((two / "drop" / "config.json").read_text())
  assert config["devices"] == 4 and config["data_shards"] == 2
  # Each process kept its own disk store (emptied when the run ended), of its own half
  # of the training set: half the bytes of the one-process store.
  assert sorted(p.name for p in (two / "drop" / "features").iterdir()) == \
      ["process-0", "process-1"]
  stores = {}
  for name, d in (("two", two), ("one", one)):
    lines = (d / "drop" / "metrics.jsonl").read_text().splitlines()
    stores[name] = [json.loads(ln)["store"] for ln in lines if json.loads(ln).get("store")]
  assert stores["two"] and {s["backing"] for s in stores["two"]} == {"npy"}
  assert [2 * s["bytes"] for s in stores["two"]] == [s["bytes"] for s in stores["one"]]


@pytest.mark.parametrize("strategy", ["drop", "freeze"])
def test_fit_on_two_processes_is_the_one_process_fit(runs, strategy):
  one = summaries(runs["dirs"]["one"])[strategy]
  two = summaries(runs["dirs"]["two"])[strategy]
  assert two["drop_events"] == one["drop_events"] and two["drop_events"], one
  assert two["final_cut"] == one["final_cut"]
  assert two["devices"] == one["devices"] == 4
  # Up to the order of additions: the losses agree to a few 1e-3 (1 vs 2 devices in one
  # process: 4.5e-3 at epoch 3), the weights' norm to ~1e-5.
  # The test accuracy of this 3-epoch, 35-40 % net on 130 images does not: one process
  # with 1, 2 and 4 devices ends at 40.0, 41.5 and 34.6 % (measured), so it is only
  # checked loosely.
  losses = {name: [json.loads(ln)["loss"] for ln in
                   (runs["dirs"][name] / strategy / "metrics.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
  assert losses["two"] == pytest.approx(losses["one"], rel=1e-2)
  assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=10.0)
  assert two["param_l2"] == pytest.approx(one["param_l2"], rel=1e-3)


@pytest.mark.parametrize("run", ["two", "one"])   # two processes; one with --data-shards 2
def test_freeze_equals_drop_with_blocks_of_data(runs, run):
  both = summaries(runs["dirs"][run])
  drop, freeze = both["drop"], both["freeze"]
  assert drop["drop_events"] == freeze["drop_events"]
  assert drop["final_store_cut"] == drop["final_cut"] > 0 and freeze["final_store_cut"] == 0
  assert drop["param_l2"] == pytest.approx(freeze["param_l2"], rel=1e-5)
  assert drop["test_accuracy"] == freeze["test_accuracy"]


def test_bad_cluster_flags_are_one_line_and_exit_2(capsys):
  from ldjax import run
  for argv, says in ((["--coordinator", "localhost"], "--num-processes N"),
                     (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
                      "is not HOST:PORT"),
                     (["--num-processes", "2"], "need --coordinator"),
                     (["--coordinator", "localhost:1", "--num-processes", "2",
                       "--process-id", "2"], "must be in 0..1"),
                     (["--coordinator", "auto", "--process-id", "0"], "drop --num-processes")):
    assert run.main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
