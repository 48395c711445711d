"""Fault tolerance of `fit` and the command line: runs killed, stopped and resumed.

Real processes are killed: a job runner (written to the session's temporary
directory, see `RUNNER`) calls `ldjax.train.fit` in a subprocess and SIGKILLs
itself from `on_step` at a chosen (epoch, step), or inside orbax's checkpoint
commit (after the step is written, before the atomic rename of its
directory). Each resume runs in a new process and must end exactly where the
uninterrupted reference run ends.

The runs are small (ResNet-18 at width 1/16, 600 embedded training images,
batch 64, 5 epochs, lr 0.1, two drops forced by --drop-at) and costly
on a CPU mostly through XLA compilation, so every subprocess uses the session's
persistent JAX compilation cache and compiles at XLA's optimization level 0 (as
conftest.py sets both up).
The uninterrupted reference run is made once per test session and shared
with `test_integrity.py`, with copies of its work directory taken after each
epoch (a run killed between two epochs). The kill points are placed from the
reference's drop events, so they stay meaningful if the decisions change;
`test_reference_drops_twice` says when they no longer can. The command-line
runs are independent of the chain of killed runs and go on meanwhile, in a
thread.

Epochs are 0-based below (as `on_step` gets them) unless called "1-based";
a drop event of 1-based epoch e makes 0-based epoch e extract features.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldjax.runs import compile_cache

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 5
# The drops are forced (after epochs 2 and 4): the paper's rule on a network this small
# decides by rounding-level margins that differ between CPUs, and the kill points need two.
DROP_AT = "2:2,4:4"
CFG = dict(model="resnet18", width=0.0625, epochs=EPOCHS, warmup=1, batch_size=64, lr=0.1,
           drop_at=DROP_AT)
DISK, MEMORY = 0.0, 4.0          # feature_memory_gb: on-disk (.npy memmap) or in-memory store
KEEP = 3                         # checkpoints orbax keeps (ldjax.checkpoint.KEEP)
CLI_ARGS = ["--train-size", "600", "--test-size", "200", "--width", "0.0625",
            "--batch-size", "64", "--epochs", str(EPOCHS), "--warmup", "1", "--lr", "0.1",
            "--strategy", "drop", "--drop-at", DROP_AT, "--no-progress"]
SUBPROCESS_TIMEOUT = 400


# The job runner. argv[1]: a JSON file {"out": path, "jobs": [...]}; each job's
# result (or, just before a deliberate SIGKILL, a "killed" record with the
# warnings so far) is appended to "out" as one JSON line. Job kinds:
#   fit: workdir (null: no run directory), resume, strategy, cfg (TrainConfig
#        fields); fault injection: kill_at [epoch, step] (SIGKILL from on_step),
#        kill_in_save k (SIGKILL inside orbax's rename of checkpoint step k),
#        disk_free (bytes free that shutil.disk_usage reports for the store's directory),
#        write_fail_after n (FeatureStore.write raises ENOSPC after n calls),
#        nan_from [epoch, step] (stored features read from then on hold a NaN),
#        bad_labels_at [epoch, step] (set during that step: from the next step on every label is out of range,
#        which makes the cross-entropy NaN); snapshots (copy the work directory
#        after each epoch, to <workdir>_after_epoch<1-based epoch>); stop_after
#        (1-based epoch after which the job ends with error type "Stopped").
#   cli: argv for ldjax.run.main, run in this process (rc, stdout, stderr);
#        bad_labels: training example 0 gets an out-of-range label.
#   checkpoint: workdir, cfg; restores the latest checkpoint.
RUNNER = r'''
import contextlib, dataclasses, errno, gc, io, json, os, shutil, signal, sys, time, traceback
import warnings
from pathlib import Path

import jax
import numpy as np

from ldjax import run
from ldjax.data.datasets import load_dataset
from ldjax.models.zoo import build_model
from ldjax.runs.checkpoint import KEEP, Checkpointer
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.store.features import FeatureStore
from ldjax.train import compare, optim
from ldjax.train import epoch as loop
from ldjax.train.continuation import Start
from ldjax.train.fit import Hooks, fit
from orbax.checkpoint._src.path import async_path

SPEC = json.loads(Path(sys.argv[1]).read_text())
DATA = load_dataset("embedded", train_size=600, test_size=200)
MODEL = build_model("resnet18", DATA.image_shape, DATA.num_classes, width=0.0625)
VARIABLES = MODEL.init(jax.random.key(0), DATA.image_shape)
CAUGHT = {"warnings": []}   # of the job in progress


class Stopped(Exception):
  """Ends a job early (stop_after)."""


def emit(record):
  with open(SPEC["out"], "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def listing(path):
  path = Path(path)
  return sorted(p.name for p in path.iterdir()) if path.is_dir() else None


def wait_committed(workdir, epochs_done, timeout=60.0):
  """Waits until checkpoint `epochs_done` is renamed into place and the older ones
  beyond KEEP are deleted: fit saves asynchronously (an epoch's write overlaps
  the next epoch), and what a job copies or kills must not depend on the pace
  of orbax's background thread."""
  if not epochs_done:
    return
  want = sorted(str(e) for e in range(max(1, epochs_done - KEEP + 1), epochs_done + 1))
  t0 = time.monotonic()
  while (listing(Path(workdir) / "checkpoints") or []) != want:
    if time.monotonic() - t0 > timeout:
      raise TimeoutError(f"checkpoint {epochs_done} of {workdir} not committed after {timeout} s")
    time.sleep(0.005)


def die(record):
  emit({"killed": record | {"warnings": [str(w.message) for w in CAUGHT["warnings"]]}})
  os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def apply_patches(job, stack, nan):
  """Fault injection for one job; undone when `stack` closes."""
  if job.get("kill_in_save") is not None:
    k, rename = str(job["kill_in_save"]), async_path.rename

    async def rename_then_die(src, dst, *args, **kwargs):
      # orbax has written the step to a temporary directory (both items and
      # the commit marker) and is about to rename it into place.
      if Path(dst).name == k and Path(dst).parent.name == "checkpoints":
        die({"in_save": int(k), "tmp_dir": Path(src).name, "tmp_listing": listing(src),
             "checkpoints": listing(Path(dst).parent)})
      return await rename(src, dst, *args, **kwargs)
    stack.enter_context(patched(async_path, "rename", rename_then_die))
  if job.get("disk_free") is not None:
    usage, free = shutil.disk_usage, job["disk_free"]

    def tiny(path):   # the store's directory only: checkpoints check their own free space
      u = usage(path)
      return type(u)(u.total, u.used, free) if Path(path).name == "features" else u
    stack.enter_context(patched(shutil, "disk_usage", tiny))
  if job.get("write_fail_after") is not None:
    calls, write = {"n": 0}, FeatureStore.write

    def failing_write(self, idx, values):
      calls["n"] += 1
      if calls["n"] > job["write_fail_after"]:
        raise OSError(errno.ENOSPC, "No space left on device")
      return write(self, idx, values)
    stack.enter_context(patched(FeatureStore, "write", failing_write))
  if job.get("nan_from") is not None:
    read = FeatureStore.read

    def nan_read(self, idx):
      x = read(self, idx)
      if nan["on"]:
        x = np.array(x)
        x[0] = np.nan
      return x
    stack.enter_context(patched(FeatureStore, "read", nan_read))
  if job.get("bad_labels"):
    prepare = compare.prepare

    def bad_prepare(*args, **kwargs):
      data, model = prepare(*args, **kwargs)
      y = data.y_train.copy()
      y[0] = 10 * data.num_classes
      return dataclasses.replace(data, y_train=y), model
    stack.enter_context(patched(compare, "prepare", bad_prepare))
  labels = DATA.y_train.copy()
  stack.callback(lambda: DATA.y_train.__setitem__(slice(None), labels))


def fit_job(job):
  cfg = TrainConfig(**job["cfg"])
  workdir = job.get("workdir")
  nan = {"on": False}

  def on_step(epoch, step, phase):
    if job.get("kill_at") == [epoch, step]:
      wait_committed(workdir, epoch)
      die({"epoch": epoch, "step": step, "phase": phase,
           "features": listing(Path(workdir) / "features"),
           "checkpoints": listing(Path(workdir) / "checkpoints")})
    if job.get("nan_from") == [epoch, step + 1]:
      nan["on"] = True   # the next step's batch is read after this call
    if job.get("bad_labels_at") == [epoch, step]:
      DATA.y_train[:] = 10 * DATA.num_classes   # the next step's labels are read after this call

  def on_epoch(record):
    rec = record.to_json()
    if job.get("snapshots"):
      wait_committed(workdir, rec["epoch"])
      shutil.copytree(workdir, f"{workdir}_after_epoch{rec['epoch']}")
    if job.get("stop_after") == rec["epoch"]:
      raise Stopped(f"stopped after epoch {rec['epoch']}")

  result = {"summary": None, "error": None}
  with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    CAUGHT["warnings"] = caught
    apply_patches(job, stack, nan)
    try:
      # The injections above assume a batch is read when its step runs: no read-ahead
      # (tests/test_reader.py shows the reader changes nothing else).
      summary = fit(MODEL, DATA, cfg.replace(reader_threads=0), job.get("strategy", "drop"),
                    start=Start(VARIABLES), run_dir=None if workdir is None else RunDir(workdir),
                    resume=job.get("resume", False),
                    hooks=Hooks(on_step=on_step, on_epoch=on_epoch, progress=False))
      summary.pop("variables")
      result["summary"] = summary
    except Exception as e:
      result["error"] = {"type": type(e).__name__, "module": type(e).__module__,
                         "message": str(e), "traceback": traceback.format_exc()}
  result["warnings"] = [str(w.message) for w in caught]
  if workdir is not None:
    result["features"] = listing(Path(workdir) / "features")
  return result


def cli_job(job):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.ExitStack() as stack, contextlib.redirect_stdout(out), \
      contextlib.redirect_stderr(err):
    apply_patches(job, stack, {"on": False})
    try:
      rc = run.main(job["argv"])
    except BaseException:
      rc = None
      print(traceback.format_exc(), file=err)
    gc.collect()   # warnings about what a failed job left behind are its own
  return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def checkpoint_job(job):
  cfg = TrainConfig(**job["cfg"])
  spe = len(DATA.x_train) // cfg.run.batch_size
  tx = optim.make_optimizer(cfg.optim, spe, cfg.run.epochs * spe)
  like = {"variables": VARIABLES,
          "opt_states": [tx.init(v.get("params", {})) for v in VARIABLES]}
  ckpt = Checkpointer(Path(job["workdir"]) / "checkpoints")
  meta = ckpt.restore_meta()
  state = ckpt.restore(like)
  leaves = jax.tree.leaves(state)
  return {"latest": ckpt.latest_epoch(), "epoch": meta["epoch"],
          "finite": bool(all(np.all(np.isfinite(np.asarray(x))) for x in leaves)),
          "param_l2": loop.param_l2(state["variables"])}


for job in SPEC["jobs"]:
  t0, c0 = time.perf_counter(), time.process_time()
  record = {"fit": fit_job, "cli": cli_job, "checkpoint": checkpoint_job}[job["kind"]](job)
  emit(record | {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                 "process_cpu_seconds": time.process_time()})
'''


# -- running jobs in subprocesses ----------------------------------------------

def shared_dir(tmp_path_factory) -> Path:
  """Session-wide directory: the runner, the compilation cache, the reference run."""
  path = tmp_path_factory.getbasetemp() / "ldjax_fault_tolerance"
  path.mkdir(exist_ok=True)
  runner = path / "runner.py"
  if not runner.exists():
    runner.write_text(RUNNER)
  return path


_SESSION = {}   # "env": the environment as the session started (conftest.py's `early.env`)


def use_session_env(early) -> None:
  """Subprocesses get `early.env`: the jobs run in threads while tests in this process
  may patch `os.environ`."""
  _SESSION.setdefault("env", early.env)


def subprocess_env(tmp_path_factory) -> dict:
  env = dict(_SESSION.get("env") or os.environ)
  # The session's compilation cache (conftest.py), which the command line's runs
  # (`$LDJAX_COMPILATION_CACHE`) and test_full_disk.py's use too: the same programs
  # compile once.
  cache = env.get(compile_cache.ENV) or shared_dir(tmp_path_factory) / "jax_cache"
  flags = env.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level=0" not in flags:
    flags += " --xla_backend_optimization_level=0"
  env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", XLA_FLAGS=flags.strip())
  return env


class Jobs:
  """`jobs` running in one new process; `result()` waits and returns one record per job.

  `killed`: the last job is expected to SIGKILL its process (its record is
  {"killed": ...}).
  """

  def __init__(self, tmp_path_factory, jobs: list[dict], *, killed: bool = False):
    self.jobs, self.killed = jobs, killed
    self.dir = Path(tmp_path_factory.mktemp("jobs"))
    self.out = self.dir / "out.jsonl"
    (self.dir / "spec.json").write_text(json.dumps({"out": str(self.out), "jobs": jobs}))
    with open(self.dir / "stderr.txt", "w") as err:
      self.proc = subprocess.Popen(
          [sys.executable, str(shared_dir(tmp_path_factory) / "runner.py"),
           str(self.dir / "spec.json")], env=subprocess_env(tmp_path_factory), cwd=self.dir,
          stdout=subprocess.DEVNULL, stderr=err)

  def result(self) -> list[dict]:
    try:
      rc = self.proc.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
    text = self.out.read_text() if self.out.exists() else ""
    records = [json.loads(line) for line in text.splitlines()]
    expected_rc = -signal.SIGKILL if self.killed else 0
    assert rc == expected_rc and len(records) == len(self.jobs), (
        f"runner exited {rc} (expected {expected_rc}) after {len(records)} of "
        f"{len(self.jobs)} jobs\n{(self.dir / 'stderr.txt').read_text()[-4000:]}")
    if self.killed:
      assert "killed" in records[-1], records[-1]
    return records


def run_jobs(tmp_path_factory, jobs: list[dict], *, killed: bool = False) -> list[dict]:
  """Runs `jobs` in one new process and waits for it (see `Jobs`)."""
  return Jobs(tmp_path_factory, jobs, killed=killed).result()


def fit_job(workdir, *, memory=DISK, **kwargs) -> dict:
  return dict(kind="fit", workdir=None if workdir is None else str(workdir),
              cfg=CFG | {"feature_memory_gb": memory}, **kwargs)


def shared_reference(tmp_path_factory) -> dict:
  """The uninterrupted drop run (on-disk store), made once per session.

  Returns its summary plus "workdir" and "snapshot": {1-based epoch: copy of
  the work directory right after that epoch's checkpoint}.
  """
  base = shared_dir(tmp_path_factory)
  done = base / "reference.json"
  if not done.exists():
    workdir = base / "reference"
    (rec,) = run_jobs(tmp_path_factory, [fit_job(workdir, snapshots=True)])
    assert rec["error"] is None, rec["error"]
    snapshots = {e: str(base / f"reference_after_epoch{e}") for e in range(1, EPOCHS + 1)}
    done.write_text(json.dumps(rec["summary"] | {"workdir": str(workdir),
                                                  "snapshot": snapshots}))
  ref = json.loads(done.read_text())
  ref["snapshot"] = {int(k): Path(v) for k, v in ref["snapshot"].items()}
  return ref


def extraction_epochs(reference: dict) -> list[int]:
  """0-based epochs in which the reference run extracted features."""
  return [e["epoch"] for e in reference["drop_events"]]


def assert_same_run(summary: dict, reference: dict, rel: float = 1e-6) -> None:
  """Same decisions and accuracy, final weights' L2 norm equal to `rel`."""
  assert summary["drop_events"] == reference["drop_events"]
  assert summary["final_cut"] == reference["final_cut"]
  assert summary["final_store_cut"] == reference["final_store_cut"]
  assert summary["test_accuracy"] == reference["test_accuracy"]
  assert summary["param_l2"] == pytest.approx(reference["param_l2"], rel=rel)


def read_metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
          if line.strip()]


def checkpoint_dirs(workdir) -> list[str]:
  return sorted(p.name for p in (Path(workdir) / "checkpoints").iterdir())


def complete_steps(names_or_workdir) -> list[int]:
  names = names_or_workdir
  if isinstance(names, (str, Path)):
    names = checkpoint_dirs(names)
  return sorted(int(n) for n in names if n.isdigit())


def last_kept(epochs_done: int) -> list[int]:
  return list(range(max(1, epochs_done - KEEP + 1), epochs_done + 1))


# -- the reference ---------------------------------------------------------------

def reference_run(early, tmp_path_factory):
  """`shared_reference`, once per session, in a thread (conftest.py's `early`)."""
  use_session_env(early)
  return early.start("fault_tolerance_reference", shared_reference, tmp_path_factory)


def start_early(early, tmp_path_factory):
  """The kill chain and, beside it, the command-line runs, in threads, after the reference
  (conftest.py starts them early)."""
  chain, cli = start_chain(early, tmp_path_factory), start_cli_runs(early, tmp_path_factory)
  return early.start("resume", lambda: (chain.result(), cli.result()))


@pytest.fixture(scope="module")
def reference(early, tmp_path_factory):
  return reference_run(early, tmp_path_factory).result()


def test_reference_drops_twice(reference):
  """Two drops, each followed by an extraction epoch (else the kill points test little)."""
  ext = extraction_epochs(reference)
  assert len(ext) >= 2 and 1 < ext[0] < ext[1] < EPOCHS, reference["drop_events"]
  assert reference["final_store_cut"] == reference["final_cut"] > 0
  assert reference["store_fallbacks"] == []
  assert [r["epoch"] for r in read_metrics(reference["workdir"])] == list(range(1, EPOCHS + 1))
  assert sorted(p.name for p in (Path(reference["workdir"]) / "features").iterdir()) == []


# -- SIGKILL at several points, each resume in a new process ---------------------
#
# One chain of processes, each resuming the previous one's work directory
# (E0, E1: the reference's first two extraction epochs, 2 and 4 here):
#   1. fresh run, on-disk store: killed in plain training, epoch 1 step 2;
#   2. resume: killed mid-extraction, epoch E0 step 3 (its store half written);
#   3. resume with the store in memory: killed at the first step of the next
#      extraction epoch, E1 step 0, losing the in-memory store of epoch E0;
#   4. resume, on disk: the store must be rebuilt; killed inside the commit of
#      checkpoint E1 + 1 (written, not yet renamed; the last one here);
#   5. resume to the end.
# The memory budget is not part of a run's fingerprint, so a resume may change it.

def chain_kills(reference) -> list[dict]:
  if len(extraction_epochs(reference)) < 2:
    pytest.fail(f"the reference dropped fewer than twice: {reference['drop_events']}")
  e0, e1 = extraction_epochs(reference)[:2]
  return [dict(kill_at=[1, 2], memory=DISK), dict(kill_at=[e0, 3], memory=DISK),
          dict(kill_at=[e1, 0], memory=MEMORY), dict(kill_in_save=e1 + 1, memory=DISK)]


def start_chain(early, tmp_path_factory):
  return early.start("kill_chain", run_kill_chain, early, tmp_path_factory)


@pytest.fixture(scope="module")
def kill_chain(request, early, tmp_path_factory, reference):
  if any({"cli_interrupted", "cli_resumed"} & set(item.fixturenames)
         for item in request.session.items):
    start_cli_runs(early, tmp_path_factory)   # independent of the chain: meanwhile
  return start_chain(early, tmp_path_factory).result()


def run_kill_chain(early, tmp_path_factory) -> dict:
  reference = reference_run(early, tmp_path_factory).result()
  workdir = tmp_path_factory.mktemp("chain") / "run"
  segments = []
  for i, kill in enumerate(chain_kills(reference)):
    (rec,) = run_jobs(tmp_path_factory, [fit_job(workdir, resume=i > 0, **kill)], killed=True)
    segments.append({"killed": rec["killed"], "checkpoints": checkpoint_dirs(workdir),
                     "metrics": read_metrics(workdir),
                     "features": sorted(p.name for p in (workdir / "features").iterdir())
                     if (workdir / "features").exists() else []})
  (final,) = run_jobs(tmp_path_factory, [fit_job(workdir, resume=True)])
  return {"workdir": workdir, "segments": segments, "final": final}


def where(killed: dict) -> dict:
  return {k: killed.get(k) for k in ("epoch", "step", "phase")}


def test_kill_in_plain_training(kill_chain):
  killed = kill_chain["segments"][0]["killed"]
  assert where(killed) == dict(epoch=1, step=2, phase="train")
  assert complete_steps(killed["checkpoints"]) == [1]
  assert killed["features"] is None   # no store yet


def test_kill_mid_extraction_leaves_only_a_temporary_store(kill_chain, reference):
  e0 = extraction_epochs(reference)[0]
  cut0 = reference["drop_events"][0]["cut"]
  killed = kill_chain["segments"][1]["killed"]
  assert where(killed) == dict(epoch=e0, step=3, phase="extract")
  assert complete_steps(killed["checkpoints"]) == last_kept(e0)
  # Only the temporary file of the store being filled exists ...
  assert killed["features"] == [f"features_0-{cut0}.tmp.npy"]
  # ... and the next resume removed it (its own store lived in memory).
  assert kill_chain["segments"][2]["features"] == []


def test_kill_at_start_of_extraction_epoch_with_store_in_memory(kill_chain, reference):
  e1 = extraction_epochs(reference)[1]
  killed = kill_chain["segments"][2]["killed"]
  assert where(killed) == dict(epoch=e1, step=0, phase="extract")
  assert complete_steps(killed["checkpoints"]) == last_kept(e1)
  assert killed["features"] == []   # the store of epoch E0 was in memory: lost


def test_in_memory_store_is_rebuilt_after_kill(kill_chain, reference):
  cut0 = reference["drop_events"][0]["cut"]
  warned = kill_chain["segments"][3]["killed"]["warnings"]
  rebuilding = [w for w in warned if "rebuilding" in w]
  assert len(rebuilding) == 1 and f"stages 0-{cut0 - 1} " in rebuilding[0], warned
  assert "missing" in rebuilding[0]
  assert len([w for w in warned if w.startswith("rebuilt the feature store")]) == 1
  # The rebuilt store (on disk this time) fed the next extraction.
  assert f"features_0-{cut0}.npy" in kill_chain["segments"][3]["features"]
  # The last resume found its store intact on disk: no rebuild.
  assert not [w for w in kill_chain["final"]["warnings"] if "rebuil" in w]


def test_kill_during_checkpoint_write(kill_chain, reference):
  k = extraction_epochs(reference)[1] + 1
  seg = kill_chain["segments"][3]
  killed = seg["killed"]
  # The hook fired after orbax wrote both items of step k to a temporary directory ...
  assert killed["in_save"] == k
  assert killed["tmp_dir"].startswith(f"{k}.") and "tmp" in killed["tmp_dir"]
  assert {"state", "meta"} <= set(killed["tmp_listing"])
  # ... which stayed a temporary: the last complete checkpoint is k - 1.
  assert complete_steps(seg["checkpoints"]) == last_kept(k - 1)
  assert any(n.startswith(f"{k}.") and "tmp" in n for n in seg["checkpoints"])
  # metrics.jsonl already had epoch k's line; the resume cut it back.
  assert [r["epoch"] for r in seg["metrics"]] == list(range(1, k + 1))
  # After the resume: no temporary left, the last checkpoints complete.
  assert checkpoint_dirs(kill_chain["workdir"]) == [str(e) for e in last_kept(EPOCHS)]


def test_resumed_chain_equals_uninterrupted_run(kill_chain, reference):
  final = kill_chain["final"]
  assert final["error"] is None, final["error"]
  assert_same_run(final["summary"], reference)
  assert final["summary"]["store_fallbacks"] == []
  saved = json.loads((kill_chain["workdir"] / "summary.json").read_text())
  assert saved["param_l2"] == final["summary"]["param_l2"]
  assert final["features"] == []   # the finished run deleted its stores


def test_resumed_metrics_one_line_per_epoch(kill_chain, reference):
  metrics = read_metrics(kill_chain["workdir"])
  assert [r["epoch"] for r in metrics] == list(range(1, EPOCHS + 1))
  for got, want in zip(metrics, read_metrics(reference["workdir"]), strict=True):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["test_accuracy"] == want["test_accuracy"]
    assert got["dropped_stages"] == want["dropped_stages"]
    assert got["stored_stages"] == want["stored_stages"]
    assert got["decision"] == want["decision"]


# -- the command line: Ctrl-C, the printed resume command, refused resumes ---------

def cli_argv(workdir, **overrides) -> list[str]:
  """CLI_ARGS with `--flag value` overrides (keys with underscores for dashes)."""
  args = list(CLI_ARGS)
  for key, value in overrides.items():
    flag = "--" + key.replace("_", "-")
    if flag in args:
      args[args.index(flag) + 1] = str(value)
    else:
      args += [flag, str(value)]
  return args + ["--workdir", str(workdir)]


def interrupt_cli_run(early, tmp_path_factory) -> dict:
  """`python -m ldjax.run` stopped by one SIGINT once its first checkpoint exists.

  Returns rc, stderr, the work directory and a pristine copy of it (for the
  refused resumes) taken before anything resumes it. The reference run comes
  first, so the compilation cache is warm and the run cannot end before the
  signal.
  """
  reference_run(early, tmp_path_factory).result()
  root = tmp_path_factory.mktemp("cli")
  workdir = root / "run"
  out, err = root / "stdout.txt", root / "stderr.txt"
  with open(out, "w") as fo, open(err, "w") as fe:
    proc = subprocess.Popen([sys.executable, "-m", "ldjax.run", *cli_argv(workdir)],
                            env=subprocess_env(tmp_path_factory), cwd=root, stdout=fo,
                            stderr=fe, text=True)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not (workdir / "checkpoints" / "1").is_dir():
      assert proc.poll() is None, f"the run ended before its first checkpoint:\n{err.read_text()}"
      assert time.monotonic() < deadline, "no checkpoint in time"
      time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=SUBPROCESS_TIMEOUT)
  pristine = root / "pristine"
  shutil.copytree(workdir, pristine)
  return {"rc": rc, "stdout": out.read_text(), "stderr": err.read_text(), "workdir": workdir,
          "pristine": pristine, "root": root}


def resume_command(stderr: str) -> list[str]:
  lines = stderr.splitlines()
  i = next(i for i, line in enumerate(lines) if line.rstrip().endswith("resume with:"))
  return shlex.split(lines[i + 1])


def resume_cli_run(tmp_path_factory, cli_interrupted: dict) -> dict:
  """Runs the printed resume command; and, in the same process (`ldjax.run.main`),
  first tries resumes of copies of the interrupted run with changed settings."""
  changes = {"batch_size": 32, "seed": 1, "width": 0.125, "model": "vgg11",
             "data_dir": cli_interrupted["root"],   # the same images, another --data-dir
             "data_shards": 2}                      # the same images, other batches
  jobs, copies = [], {}
  for key, value in changes.items():
    copies[key] = cli_interrupted["root"] / f"changed_{key}"
    shutil.copytree(cli_interrupted["pristine"], copies[key])
    jobs.append(dict(kind="cli", argv=cli_argv(copies[key], **{key: value}) + ["--resume"]))
  command = resume_command(cli_interrupted["stderr"])
  assert command[:3] == ["python", "-m", "ldjax.run"], command
  jobs.append(dict(kind="cli", argv=command[3:]))
  records = run_jobs(tmp_path_factory, jobs)
  return {"refused": dict(zip(changes, records)), "copies": copies, "changes": changes,
          "resumed": records[-1]}


def start_cli_runs(early, tmp_path_factory):
  """The CLI runs, once per session, in a thread (beside the kill chain)."""
  def both():
    interrupted = interrupt_cli_run(early, tmp_path_factory)
    return interrupted, resume_cli_run(tmp_path_factory, interrupted)
  return early.start("cli_runs", both)


@pytest.fixture(scope="module")
def cli_interrupted(early, tmp_path_factory):
  return start_cli_runs(early, tmp_path_factory).result()[0]


@pytest.fixture(scope="module")
def cli_resumed(early, tmp_path_factory):
  return start_cli_runs(early, tmp_path_factory).result()[1]


def test_ctrl_c_exits_130_with_resume_command(cli_interrupted):
  assert cli_interrupted["rc"] == 130, cli_interrupted["stderr"]
  assert "--resume" in cli_interrupted["stderr"]
  assert "Traceback" not in cli_interrupted["stderr"]
  command = resume_command(cli_interrupted["stderr"])
  assert command[-1] == "--resume" and command.count("--resume") == 1
  assert command[command.index("--workdir") + 1] == str(cli_interrupted["workdir"])
  # Stopped at a step: the complete epochs are checkpointed, one metrics line each.
  done = complete_steps(cli_interrupted["pristine"])
  assert done and max(done) < EPOCHS
  assert not (cli_interrupted["pristine"] / "summary.json").exists()
  assert [r["epoch"] for r in read_metrics(cli_interrupted["pristine"])] == list(
      range(1, max(done) + 1))


def test_printed_resume_command_completes(cli_resumed, cli_interrupted, reference):
  resumed = cli_resumed["resumed"]
  assert resumed["rc"] == 0, resumed["stderr"]
  assert "test accuracy" in resumed["stdout"]
  workdir = cli_interrupted["workdir"]
  summary = json.loads((workdir / "summary.json").read_text())
  assert [r["epoch"] for r in read_metrics(workdir)] == list(range(1, EPOCHS + 1))
  # The CLI's store lives in memory; the reference's on disk: same numbers.
  assert_same_run(summary, reference)


@pytest.mark.parametrize("key", ["width", "model", "batch_size", "seed", "data_dir",
                                 "data_shards"])
def test_resume_with_other_settings_refused(cli_resumed, cli_interrupted, key):
  rec = cli_resumed["refused"][key]
  lines = [line for line in rec["stderr"].splitlines() if line.strip()]
  assert rec["rc"] == 2, rec["stderr"][-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: cannot resume"), rec["stderr"]
  assert f" {key}=" in lines[0] and "--workdir" in lines[0]
  # Nothing was touched.
  copy = cli_resumed["copies"][key]
  assert (copy / "metrics.jsonl").read_text() == (
      cli_interrupted["pristine"] / "metrics.jsonl").read_text()
  assert checkpoint_dirs(copy) == checkpoint_dirs(cli_interrupted["pristine"])


def test_resume_of_missing_workdir_exits_2(capsys, tmp_path):
  from ldjax import run
  missing = tmp_path / "nothing here"
  assert run.main(cli_argv(missing) + ["--resume"]) == 2
  err = capsys.readouterr().err
  assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
  assert err.startswith("error: --resume needs an existing --workdir")
  assert not missing.exists()


def test_second_run_into_a_run_exits_2(capsys, cli_interrupted, tmp_path):
  from ldjax import run
  workdir = tmp_path / "run"
  shutil.copytree(cli_interrupted["pristine"], workdir)
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  assert run.main(cli_argv(workdir)) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and err.startswith("error: work directory")
  assert "--resume" in err and "--overwrite" in err
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before


def printed_resume_command(monkeypatch, capsys, workdir) -> tuple[list[str], list[str]]:
  """(argv, the resume command main prints when the run is interrupted)."""
  from ldjax import errors, run
  from ldjax.train import compare

  def interrupted(*args, **kwargs):
    raise errors.Interrupted()
  monkeypatch.setattr(compare, "run_strategies", interrupted)
  argv = cli_argv(workdir)
  assert run.main(argv) == 130
  return argv, resume_command(capsys.readouterr().err)


def test_printed_resume_command_round_trips(capsys, monkeypatch, tmp_path):
  argv, command = printed_resume_command(monkeypatch, capsys, tmp_path / "runs" / "a")
  assert command == ["python", "-m", "ldjax.run", *argv, "--resume"]


def test_printed_resume_command_quotes_arguments(capsys, monkeypatch, tmp_path):
  argv, command = printed_resume_command(monkeypatch, capsys, tmp_path / "my runs" / "a b")
  assert command == ["python", "-m", "ldjax.run", *argv, "--resume"], shlex.join(command)
