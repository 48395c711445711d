"""A real full disk: small tmpfs filesystems that fill up under the store and the checkpoints.

A write through a memory map into a sparse file on a full disk is a SIGBUS,
not an OSError, so these tests use real filesystems (a tmpfs mounted for
each test or run, unmounted after it or when the session ends; skipped where
the test cannot mount one) and run the command line in subprocesses, where a
SIGBUS shows as return code -7. The command-line runs go on one after another
in a thread (conftest.py starts them early, while other tests run); the tests
read what they left.

The runs are small (ResNet-18 at width 1/16, 600 embedded images, batch 64,
lr 0.1: a drop of 4 stages after epoch 2, so epoch 3 fills a feature store
of about 3.8 MB; a checkpoint is about 0.5 MB). The filesystems are sized
from an uninterrupted reference run in a normal directory:
  - the store cannot fit, the checkpoints can: the run ends normally, those
    stages frozen, the fallback in summary.json, with the free-space check
    before the store honest and with it fooled (the space is then reserved
    and found missing when the store is created: an OSError, not a SIGBUS);
  - a checkpoint cannot be written: one line, exit status 1, the last
    complete checkpoint kept; `--resume` after freeing space ends exactly
    like the reference. Once refused by the free-space check before the
    checkpoint, once with that check fooled, so that orbax's own write fails
    midway (a ValueError from tensorstore, logged from its threads).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldjax.store import features
from ldjax.store.features import FeatureStore, open_store

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--train-size", "600", "--test-size", "200", "--width", "0.0625", "--batch-size", "64",
        "--warmup", "1", "--lr", "0.1", "--strategy", "drop", "--no-progress"]
EPOCHS = 4                 # the checkpoint runs: 3 checkpoints kept, a 4th written before
STORE_EPOCHS = 3           # the store runs: epoch 3 fills the store
PAGE = 4096
TIMEOUT = 300
# `python -m ldjax.run` with the free-space checks (of the store and of each
# checkpoint) fooled: they see 1 TB free, as if the disk filled up only after them.
FOOLED_CHECK = ("import runpy, shutil, sys\n"
                "real = shutil.disk_usage\n"
                "shutil.disk_usage = lambda p: real(p)._replace(free=1 << 40)\n"
                "sys.argv = ['ldjax.run'] + sys.argv[1:]\n"
                "runpy.run_module('ldjax.run', run_name='__main__', alter_sys=True)\n")


# -- small filesystems --------------------------------------------------------------

def _mount(directory: Path, size_kb: int) -> None:
  if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("mounting a tmpfs needs Linux, root and mount(8)")
  directory.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(directory)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")


def remount(directory: Path, size_kb: int) -> None:
  """Resizes a mounted tmpfs, keeping its files (freeing space without deleting any)."""
  subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(directory)], check=True)


@pytest.fixture
def small_fs(tmp_path):
  """mount(size_kb) -> a directory on a new tmpfs of that size, unmounted at teardown."""
  mounted = []

  def mount(size_kb: int, name: str = "fs") -> Path:
    directory = tmp_path / name
    _mount(directory, size_kb)
    mounted.append(directory)
    return directory
  yield mount
  for directory in mounted:
    unmount(directory)


def unmount(directory: Path) -> None:
  if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


# -- the command line in a subprocess ------------------------------------------------

def run_cli(workdir: Path, epochs: int, *extra: str, fooled_check: bool = False,
            base_env: dict | None = None):
  env = dict(os.environ if base_env is None else base_env)
  flags = env.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level=0" not in flags:   # conftest.py sets it
    flags += " --xla_backend_optimization_level=0"
  env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
             JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())
  head = ["-c", FOOLED_CHECK] if fooled_check else ["-m", "ldjax.run"]
  argv = [sys.executable, *head, *ARGS, "--epochs", str(epochs), "--workdir", str(workdir),
          *extra]
  return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                        cwd=workdir.parent)


def assert_no_signal(r) -> None:
  assert r.returncode >= 0, (f"killed by signal {-r.returncode} "
                             f"({'SIGBUS' if -r.returncode == signal.SIGBUS else '?'})\n"
                             f"{r.stderr[-3000:]}")


def summary(workdir: Path) -> dict:
  return json.loads((workdir / "summary.json").read_text())


def disk_bytes(directory: Path) -> int:
  """What the files under `directory` take on a filesystem of 4 KiB pages."""
  return sum(-(-p.stat().st_size // PAGE) * PAGE for p in directory.rglob("*") if p.is_file())


def reference_run(workdir: Path, base_env: dict) -> dict:
  """The uninterrupted run in a normal directory, with the sizes the tests need."""
  r = run_cli(workdir, EPOCHS, base_env=base_env)
  assert r.returncode == 0, r.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  stores = [rec["store"]["bytes"] for rec in records if rec.get("store")]
  steps = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  s = summary(workdir)
  assert s["drop_events"] and s["drop_events"][0]["epoch"] == 2, s["drop_events"]
  return {"summary": s, "store_bytes": stores[0],
          "checkpoint_bytes": max(disk_bytes(p) for p in steps)}


# -- the store's reservation, on a real full filesystem ------------------------------

@pytest.fixture(params=["posix_fallocate", "zeros"])
def reservation(request, monkeypatch):
  """Reserving by posix_fallocate, or by writing zeros as where a filesystem cannot."""
  if request.param == "zeros":
    def unsupported(fd, offset, length):
      raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "posix_fallocate", unsupported)
  return request.param


def test_store_too_big_for_the_disk_is_an_oserror(small_fs, reservation):
  """On a 1 MiB tmpfs a 2 MiB store fails when created, before any write, with ENOSPC
  naming the bytes and the directory; no file is left and the space is free again."""
  mnt = small_fs(1024)
  with pytest.raises(OSError) as info:
    FeatureStore(512, (32, 32, 1), "float32", (0, 1), directory=mnt / "features",
                 memory_budget_bytes=0)
  assert info.value.errno == errno.ENOSPC
  assert str(mnt / "features") in str(info.value) and "2.1 MB needed" in str(info.value)
  assert list((mnt / "features").iterdir()) == []
  assert shutil.disk_usage(mnt).used < 64 * 1024


def test_store_space_is_reserved_before_the_first_write(small_fs, reservation):
  """A store that fits holds its whole size on the disk as soon as it exists, and
  (zeros or not) its .npy header survives: it finalizes and reopens intact."""
  mnt = small_fs(4096)
  shape = (256, 32, 32, 1)
  st = FeatureStore(shape[0], shape[1:], "float32", (0, 2), directory=mnt / "features",
                    memory_budget_bytes=0)
  assert shutil.disk_usage(mnt).used >= st.nbytes
  values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  st.write(np.arange(shape[0]), values)
  st.finalize()
  again = open_store(mnt / "features", (0, 2), shape, "float32")
  np.testing.assert_array_equal(again.read(np.arange(shape[0])), values)


def test_reserve_keeps_data_before_start(tmp_path, reservation):
  path = tmp_path / "f"
  path.write_bytes(b"header" + bytes(10))
  features.reserve(path, start=6)
  assert path.read_bytes() == b"header" + bytes(10)


# -- the command line on a full disk --------------------------------------------------

def store_fs_kb(reference) -> int:
  """A filesystem that holds the checkpoints of the store runs but not the store."""
  size = 4 * reference["checkpoint_bytes"] + 256 * 1024
  assert size < 0.8 * reference["store_bytes"], reference
  return size // 1024


def assert_frozen_instead(workdir: Path, reason: str) -> None:
  s = summary(workdir)
  assert s["final_store_cut"] == 0 and s["final_cut"] > 0, s
  assert [f["stage_stop"] for f in s["store_fallbacks"]] == [e["cut"] for e in s["drop_events"]]
  assert all(f["reason"].startswith("no space left on") and reason in f["reason"]
             for f in s["store_fallbacks"]), s["store_fallbacks"]
  assert not list(workdir.rglob("features_*"))


def start_early(early, tmp_path_factory):
  """The command-line runs, in a thread (conftest.py starts them early)."""
  return early.start("full_disk", cli_runs_on_small_disks, early, tmp_path_factory)


@pytest.fixture(scope="module")
def cli_runs(early, tmp_path_factory):
  return start_early(early, tmp_path_factory).result()


def cli_runs_on_small_disks(early, tmp_path_factory) -> dict:
  """The reference, then the runs of the tests below, each on a tmpfs of its own (kept
  mounted for the tests to read, unmounted when the session ends)."""
  root = tmp_path_factory.mktemp("full_disk")

  def mount(name: str, size_kb: int) -> Path:
    _mount(root / name, size_kb)   # skips (in the tests) where it cannot
    early.at_end(lambda: unmount(root / name))
    return root / name
  mount("probe", 64)   # before the reference: a machine that cannot mount skips at once
  env = early.env
  reference = reference_run(root / "reference", env)
  runs = {"reference": reference}
  # The store cannot fit: the free-space check before it sees the shortfall, or is fooled.
  for fooled in (False, True):
    workdir = mount(f"store_{'fooled' if fooled else 'checked'}", store_fs_kb(reference)) / "run"
    runs["store", fooled] = workdir, run_cli(workdir, STORE_EPOCHS, "--feature-memory-gb", "0",
                                             fooled_check=fooled, base_env=env)
  # Room for two checkpoints and a half; then the filesystem grows and the run resumes.
  size = 2 * reference["checkpoint_bytes"] + reference["checkpoint_bytes"] // 2 + 64 * 1024
  for check in ("checked", "fooled"):
    mnt = mount(f"checkpoint_{check}", size // 1024)
    workdir = mnt / "run"
    stopped = run_cli(workdir, EPOCHS, fooled_check=check == "fooled", base_env=env)
    checkpoints = workdir / "checkpoints"
    left = {"checkpoints": sorted(p.name for p in checkpoints.iterdir())
            if checkpoints.is_dir() else None,
            "summary": (workdir / "summary.json").exists()}
    remount(mnt, 64 * 1024)
    resumed = run_cli(workdir, EPOCHS, "--resume", base_env=env)
    runs["checkpoint", check] = {"mnt": mnt, "workdir": workdir, "stopped": stopped,
                                 "left": left, "resumed": resumed}
  return runs


def test_store_that_cannot_fit_falls_back(cli_runs):
  """The free-space check before the store sees the shortfall: stages frozen, exit 0."""
  workdir, r = cli_runs["store", False]
  assert_no_signal(r)
  assert r.returncode == 0, r.stderr[-3000:]
  assert_frozen_instead(workdir, "free on disk")


def test_store_filling_a_full_disk_falls_back_without_sigbus(cli_runs):
  """The check is fooled (the disk filled after it): the store's reservation finds the
  disk full when the store is created, an OSError the keeper turns into the fallback.
  Before the reservation this run died by SIGBUS while filling the store."""
  workdir, r = cli_runs["store", True]
  assert_no_signal(r)
  assert r.returncode == 0, r.stderr[-3000:]
  assert_frozen_instead(workdir, "MB needed for features_0-")
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("check", ["checked", "fooled"])
def test_checkpoint_on_a_full_disk_stops_cleanly_and_resumes(cli_runs, check):
  """Room for two checkpoints and a half: the third fails, refused by the free-space
  check or (fooled) failing inside orbax. One line, exit 1, the two complete
  checkpoints kept (no temporary left); after the filesystem grows, --resume
  ends exactly like the uninterrupted reference."""
  run = cli_runs["checkpoint", check]
  mnt, workdir, r = run["mnt"], run["workdir"], run["stopped"]
  assert_no_signal(r)
  assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"no space left on {mnt}: "), last
  assert last.endswith(" MB needed; free space and rerun with --resume"), last
  assert run["left"]["checkpoints"] == ["1", "2"]
  assert not run["left"]["summary"]

  r = run["resumed"]   # after the filesystem grew to 64 MB
  assert r.returncode == 0, r.stderr[-3000:]
  got, want = summary(workdir), cli_runs["reference"]["summary"]
  for key in ("drop_events", "final_cut", "final_store_cut", "store_fallbacks",
              "test_accuracy", "test_loss"):
    assert got[key] == want[key], key
  assert got["param_l2"] == pytest.approx(want["param_l2"], rel=1e-6)


# -- what orbax's failed writes leave behind ------------------------------------------

LEFTOVER = ("import asyncio, gc, sys\n"
            "from ldjax.runs import checkpoint\n"
            "checkpoint._ignore_failed_write_leftovers()\n"
            "async def main():\n"
            "  f = asyncio.get_running_loop().create_future()\n"
            "  f.set_exception(ValueError(sys.argv[1]))\n"
            "  del f\n"
            "  gc.collect()\n"
            "asyncio.run(main())\n"
            "class Leftover:\n"
            "  def __del__(self):\n"
            "    raise ValueError(sys.argv[1])\n"
            "Leftover()\n"
            "print('done')\n")


@pytest.mark.parametrize("message, shown", [
    ("RESOURCE_EXHAUSTED: Error writing local file: No space left on device "
     "[os_error_code='28']", False),
    ("some other failure", True)])
def test_unretrieved_full_disk_errors_are_not_printed(message, shown):
  """A future failed by tensorstore with a full disk and never awaited (asyncio's
  "Future exception was never retrieved", no orbax file in its text and no
  traceback: a bare "ValueError: RESOURCE_EXHAUSTED ..." line after the run's
  own one line), or such an error raised where nobody can catch it, prints
  nothing; any other error still prints."""
  r = subprocess.run([sys.executable, "-c", LEFTOVER, message], capture_output=True, text=True,
                     env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
  assert (message in r.stderr) == shown, r.stderr
  if shown:
    assert "Future exception was never retrieved" in r.stderr
    assert "Exception ignored in" in r.stderr
