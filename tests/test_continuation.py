"""Training further on new data (`--continue-from`, `--data-schedule`), on the CLI.

The first data is one half of the embedded subset, the new data the other
half (both npz files of the same 28x28x1 images). A width-1/16 ResNet-18
trained with Drop on the first half drops after epoch 2; continued on the
second half with Freeze and Drop, both start with that cut: Drop's first
epoch computes the dropped prefix's features of the new data once and its
later epochs read them, Freeze keeps the prefix frozen in the forward pass,
and the two end equal (the method's exactness, kept across runs). A stream
of the two halves does the same in one command, and resumes after a real
SIGKILL in its second chunk to the same result.

The runs are `python -m ldjax.run` in subprocesses, one after another in a
thread (conftest.py starts them early, while other tests run); the tests read
what they left.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ldjax import run
from ldjax.data.datasets import load_dataset
from ldjax.train import continuation
from ldjax.train.decisions import DropState

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--model", "resnet18", "--width", "0.0625", "--batch-size", "64", "--lr", "0.05",
        "--warmup", "1", "--no-progress"]


def write_half(path: Path, data, half: int) -> Path:
  n, m = len(data.x_train) // 2, len(data.x_test) // 2
  tr, te = slice(half * n, (half + 1) * n), slice(half * m, (half + 1) * m)
  np.savez(path, x_train=data.x_train[tr], y_train=data.y_train[tr],
           x_test=data.x_test[te], y_test=data.y_test[te])
  return path


def make_halves(directory: Path) -> tuple[Path, Path]:
  data = load_dataset("embedded", train_size=1024, test_size=256)
  return write_half(directory / "a.npz", data, 0), write_half(directory / "b.npz", data, 1)


def cli(*args) -> int:
  return run.main([*ARGS, *map(str, args)])


def cli_process(env: dict, *args) -> subprocess.CompletedProcess:
  """`python -m ldjax.run` with ARGS and `args`."""
  return subprocess.run([sys.executable, "-m", "ldjax.run", *ARGS, *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=600)


def summary(path: Path) -> dict:
  return json.loads((path / "summary.json").read_text())


def records(path: Path) -> list[dict]:
  return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def start_early(early, tmp_path_factory):
  """The runs, in a thread (conftest.py starts them early)."""
  return early.start("continuation", all_runs, early, tmp_path_factory)


@pytest.fixture(scope="module")
def runs(early, tmp_path_factory):
  return start_early(early, tmp_path_factory).result()


def all_runs(early, tmp_path_factory) -> dict:
  """The halves; `first`; `continued`; the stream killed in chunk 2 and resumed (which
  loads the programs the first two compiled)."""
  env = dict(early.env, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  halves = make_halves(tmp_path_factory.mktemp("halves"))
  # Drop on the first half: 4 epochs, a drop after epoch 2.
  first = tmp_path_factory.mktemp("first") / "run"
  first_run = cli_process(env, "--dataset", f"npz:{halves[0]}", "--strategy", "drop",
                          "--epochs", 4, "--workdir", first)
  continued = tmp_path_factory.mktemp("continued") / "run"
  continued_run = cli_process(env, "--continue-from", first, "--dataset", f"npz:{halves[1]}",
                              "--strategy", "freeze,drop", "--epochs", 4, "--workdir", continued)
  return {"halves": halves, "first": (first, first_run), "continued": (continued, continued_run),
          "stream": stream_killed_and_resumed(halves, tmp_path_factory.mktemp("stream"), env)}


@pytest.fixture(scope="module")
def halves(runs):
  return runs["halves"]


@pytest.fixture(scope="module")
def first(runs):
  """Drop on the first half: 4 epochs, a drop after epoch 2."""
  workdir, r = runs["first"]
  assert r.returncode == 0, r.stderr[-3000:]
  s = summary(workdir)
  assert s["drop_events"] and s["final_cut"] > 0, s["drop_events"]
  assert (workdir / continuation.WEIGHTS_FILE).exists()
  return workdir


@pytest.fixture(scope="module")
def continued(runs, first):
  workdir, r = runs["continued"]
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


def test_continue_keeps_the_dropped_prefix_dropped(first, continued, halves):
  cut = summary(first)["final_cut"]
  drop, freeze = continued / "drop", continued / "freeze"
  recs = records(drop)
  # Epoch 1 extracts the dropped prefix of the new data once; the others read it.
  assert recs[0]["dropped_stages"] == cut and recs[0]["store"] is not None
  assert recs[0]["store"]["stage_range"] == [0, cut]
  assert recs[1]["store"] is None and recs[1]["stored_stages"] == cut
  assert all(r["dropped_stages"] == cut for r in records(freeze)[:1])
  assert all(r["stored_stages"] == 0 for r in records(freeze))
  s = summary(drop)
  assert s["continued_from"] == str(first)
  assert s["data_seen"] == [f"npz:{halves[0]}", f"npz:{halves[1]}"], s["data_seen"]
  assert s["final_cut"] >= cut
  # The frozen prefix is the first run's, bit for bit.
  from ldjax.weights import load_weights
  before, _ = load_weights(first)
  after, _ = load_weights(drop)
  for b, a in zip(before[:cut], after[:cut]):
    for x, y in zip(jax_leaves(b), jax_leaves(a)):
      np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_continued_freeze_equals_drop(continued):
  f, d = summary(continued / "freeze"), summary(continued / "drop")
  assert f["drop_events"] == d["drop_events"]
  assert f["test_accuracy"] == pytest.approx(d["test_accuracy"], abs=1e-6)
  assert f["param_l2"] == pytest.approx(d["param_l2"], rel=1e-4)


def test_continue_uses_the_first_data_normalization(first, continued):
  a = json.loads((first / "config.json").read_text())
  b = json.loads((continued / "drop" / "config.json").read_text())
  assert b["input_mean"] == a["input_mean"] and b["input_std"] == a["input_std"]


# -- bad input: one line, exit 2, nothing written -------------------------------------

def _refused(capsys, workdir: Path, *args, needle: str) -> None:
  code = cli(*args, "--workdir", workdir)
  out, err = capsys.readouterr()
  assert code == 2, (out, err)
  assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
  assert not workdir.exists()


def test_continue_bad_input(first, halves, tmp_path, capsys):
  other = tmp_path / "other.npz"
  x = np.zeros((128, 32, 32, 1), np.uint8)
  np.savez(other, x_train=x, y_train=np.arange(128) % 10, x_test=x[:32],
           y_test=np.arange(32) % 10)
  _refused(capsys, tmp_path / "w1", "--continue-from", first, "--dataset", f"npz:{other}",
           "--strategy", "drop", "--epochs", 2, needle="28x28x1 inputs")
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text(json.dumps({"model": "resnet18", "width": 0.0625}))
  _refused(capsys, tmp_path / "w2", "--continue-from", unfinished, "--dataset",
           f"npz:{halves[1]}", "--strategy", "drop", "--epochs", 2, needle="not a finished run")
  _refused(capsys, tmp_path / "w3", "--continue-from", tmp_path / "missing", "--dataset",
           f"npz:{halves[1]}", "--strategy", "drop", "--epochs", 2, needle="not a directory")
  _refused(capsys, tmp_path / "w4", "--continue-from", first, "--init-from",
           first / continuation.WEIGHTS_FILE, "--dataset", f"npz:{halves[1]}",
           "--strategy", "drop", "--epochs", 2, needle="use one of them")
  _refused(capsys, tmp_path / "w5", "--continue-from", first, "--width", "0.125",
           "--dataset", f"npz:{halves[1]}", "--strategy", "drop", "--epochs", 2,
           needle="width 0.0625")
  _refused(capsys, tmp_path / "w6", "--data-schedule", f"npz:{halves[0]}",
           "--strategy", "drop", "--epochs", 2, needle="at least two chunks")
  _refused(capsys, tmp_path / "w7", "--data-schedule", f"npz:{halves[0]},npz:{other}",
           "--strategy", "drop", "--epochs", 2, needle="same image shape")
  _refused(capsys, tmp_path / "w8", "--data-schedule", f"npz:{halves[0]},npz:{halves[1]}",
           "--dataset", "embedded", "--strategy", "drop", "--epochs", 2, needle="drop --dataset")


def test_init_from_with_resume_refused(first, tmp_path, capsys):
  code = cli("--init-from", first / continuation.WEIGHTS_FILE, "--resume",
             "--workdir", first, "--strategy", "drop", "--epochs", 4)
  out, err = capsys.readouterr()
  assert code == 2 and "drop --init-from" in err and err.count("\n") == 1, err


# -- pure parts -------------------------------------------------------------------------

def test_continued_drop_state():
  state = DropState(cut=3, store_cut=3, dropped_std_scores=(0.5, 0.1, -0.2),
                    events=({"epoch": 2, "stages_dropped": 3, "cut": 3},)).to_json()
  drop = continuation.continued_drop_state({"drop_state": state}, "drop")
  assert (drop.cut, drop.store_cut, drop.pending, drop.events) == (3, 0, (0, 3), ())
  assert drop.dropped_std_scores == (0.5, 0.1, -0.2)
  freeze = continuation.continued_drop_state({"drop_state": state}, "freeze")
  assert (freeze.cut, freeze.store_cut, freeze.pending) == (3, 0, None)
  assert continuation.continued_drop_state({"drop_state": state}, "sgd") is None
  assert continuation.continued_drop_state({}, "drop") is None


@pytest.mark.parametrize("spec, chunks", [
    ("idx:a,idx:b", ["idx:a", "idx:b"]),
    ("npz:x,1.npz;npz:y.npz", ["npz:x,1.npz", "npz:y.npz"]),
    (" embedded , npz:b ", ["embedded", "npz:b"])])
def test_stream_chunks(spec, chunks):
  assert continuation.stream_chunks(spec) == chunks


# -- a stream, killed in its second chunk and resumed ------------------------------------

def stream_argv(halves, workdir):
  return [sys.executable, "-m", "ldjax.run", *ARGS, "--data-schedule",
          f"npz:{halves[0]},npz:{halves[1]}", "--strategy", "drop", "--epochs", "4",
          "--workdir", str(workdir)]


def stream_killed_and_resumed(halves, tmp: Path, env: dict) -> dict:
  """The stream, SIGKILLed once chunk 2 has its second checkpoint, then resumed."""
  killed = tmp / "killed"
  p = subprocess.Popen(stream_argv(halves, killed), env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  checkpoints = killed / "chunk-2" / "checkpoints"
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and p.poll() is None:
    if checkpoints.is_dir() and any(c.name.isdigit() and int(c.name) >= 2
                                    for c in checkpoints.iterdir()):
      break
    time.sleep(0.2)
  out = {"killed": killed, "running_when_killed": p.poll() is None}
  p.send_signal(signal.SIGKILL)
  p.wait()
  out["summary_after_kill"] = (killed / "chunk-2" / "summary.json").exists()
  out["resumed"] = subprocess.run(stream_argv(halves, killed) + ["--resume"], env=env,
                                  capture_output=True, text=True, timeout=600)
  return out


def test_stream_matches_continue_and_resumes_after_sigkill(runs, halves, first, continued):
  """The stream, SIGKILLed in chunk 2 and resumed, ends as `first` continued with --continue-from
  (the same runs: chunk 1 is `first`'s settings, chunk 2 `continued`'s drop run)."""
  stream = runs["stream"]
  s2 = summary(continued / "drop")
  killed = stream["killed"]
  assert stream["running_when_killed"], "the stream ended before it could be killed in chunk 2"
  assert not stream["summary_after_kill"]
  r = stream["resumed"]
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads((killed / "stream.json").read_text())["chunks"] == [
      f"npz:{halves[0]}", f"npz:{halves[1]}"]
  assert summary(killed / "chunk-1")["drop_events"] == summary(first)["drop_events"]
  assert records(killed / "chunk-2")[0]["dropped_stages"] == summary(first)["final_cut"]
  got = summary(killed / "chunk-2")
  assert got["continued_from"] == str(killed / "chunk-1")
  for key in ("drop_events", "final_cut", "test_accuracy", "data_seen"):
    assert got[key] == s2[key], key
  assert got["param_l2"] == pytest.approx(s2["param_l2"], rel=1e-6)
