"""Integrity of what a run leaves on disk, and runs that cannot go on as planned.

- A damaged feature store (a flipped byte, a truncated or deleted file, a
  broken manifest) is refused by `store.open_store` with a `StoreError` that
  says what is wrong, and a resume rebuilds it and goes on as the
  uninterrupted run does (to the end for one damage, for an epoch for the
  others). The damaged stores come from the shared reference run of
  `test_resume.py` (its work directory copied right after the checkpoint of
  its first extraction epoch, when that store is finalized on disk).
- A store that does not fit (no memory budget and no work directory, too
  little disk) or cannot be written (ENOSPC in `FeatureStore.write`) turns a
  drop into a freeze, with a warning and nothing left on disk.
- A loss that becomes NaN (out-of-range labels) stops the run with
  `ldjax.errors.TrainingDiverged`, keeps the last good checkpoint, and on the command
  line exits 1 with one line; so do NaN features read from a store.
- No module of ldjax unpickles anything.

The training runs go through the subprocess job runner of `test_resume.py`
(same compilation cache and settings): two processes side by side, several
jobs each.
"""

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from ldjax.store import features as store_mod
from ldjax.store.features import FeatureStore, StoreError, open_store

try:   # pytest's default (prepend) import mode puts tests/ on sys.path
  import test_resume as ft
except ImportError:   # pragma: no cover - other import modes
  import importlib.util
  _spec = importlib.util.spec_from_file_location(
      "test_resume", Path(__file__).with_name("test_resume.py"))
  ft = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(ft)

REPO = Path(__file__).resolve().parents[1]


# -- open_store on a small hand-made store (fast) ---------------------------------

N, SHAPE, RANGE = 37, (3, 4, 2), (0, 2)


def make_store(directory, dtype="float32") -> np.ndarray:
  values = np.random.default_rng(0).normal(size=(N, *SHAPE)).astype(np.float32)
  st = FeatureStore(N, SHAPE, dtype, RANGE, directory=directory, memory_budget_bytes=0)
  assert not st.in_memory
  for idx in np.array_split(np.random.default_rng(1).permutation(N), 5):
    st.write(idx, values[idx].astype(st.dtype))
  st.finalize()
  return values


def store_files(directory) -> tuple[Path, Path]:
  path = Path(directory) / f"features_{RANGE[0]}-{RANGE[1]}.npy"
  return path, path.with_suffix(".json")


def flip_byte(path: Path, from_end: int = 5) -> None:
  data = bytearray(path.read_bytes())
  data[-from_end] ^= 0xFF
  path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def break_manifest(path: Path) -> None:
  text = path.read_text()
  path.write_text(text[:len(text) // 2])


# Each damage, applied to (store file, manifest), and the words of its StoreError.
DAMAGE = {
    "flip_byte": (lambda npy, man: flip_byte(npy), "fails its checksum"),
    "truncate": (lambda npy, man: truncate(npy), "cannot be read"),
    "delete": (lambda npy, man: npy.unlink(), "or its manifest is missing"),
    "manifest": (lambda npy, man: break_manifest(man), "is unreadable"),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_open_store_reads_back_a_finalized_store(tmp_path, dtype):
  values = make_store(tmp_path, dtype)
  st = open_store(tmp_path, RANGE, (N, *SHAPE), dtype)
  assert st.complete and not st.in_memory
  idx = np.array([5, 0, 36])
  np.testing.assert_array_equal(np.asarray(st.read(idx), np.float32),
                                values[idx].astype(st.dtype).astype(np.float32))


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_open_store_detects_damage(tmp_path, damage, dtype):
  make_store(tmp_path, dtype)
  apply, words = DAMAGE[damage]
  apply(*store_files(tmp_path))
  with pytest.raises(StoreError, match=words):
    open_store(tmp_path, RANGE, (N, *SHAPE), dtype)


@pytest.mark.parametrize("chunk_bytes", [None, 64])   # one checksum, or one per 64 bytes
def test_open_store_detects_a_byte_flip_anywhere(tmp_path, monkeypatch, chunk_bytes):
  if chunk_bytes:
    monkeypatch.setattr(store_mod, "CHUNK_BYTES", chunk_bytes)
  values = make_store(tmp_path)
  if chunk_bytes:
    assert len(json.loads(store_files(tmp_path)[1].read_text())["checksums"]) == -(
        -values.nbytes // chunk_bytes)
  npy, _ = store_files(tmp_path)
  size = npy.stat().st_size
  for from_end in (1, values.nbytes // 2, values.nbytes):   # last, middle, first data byte
    flip_byte(npy, from_end)
    with pytest.raises(StoreError, match="checksum"):
      open_store(tmp_path, RANGE, (N, *SHAPE), "float32")
    flip_byte(npy, from_end)   # undo
    open_store(tmp_path, RANGE, (N, *SHAPE), "float32")
  assert npy.stat().st_size == size


@pytest.mark.parametrize("shape, dtype, stage_range, words", [
    ((N + 1, *SHAPE), "float32", RANGE, "shape="),
    ((N, *SHAPE), "bfloat16", RANGE, "dtype="),
    ((N, *SHAPE), "float32", (0, 3), "missing"),      # another stage range: another file
])
def test_open_store_refuses_another_configuration(tmp_path, shape, dtype, stage_range, words):
  make_store(tmp_path)
  with pytest.raises(StoreError, match=words):
    open_store(tmp_path, stage_range, shape, dtype)


def test_open_store_refuses_an_unfinalized_store(tmp_path):
  st = FeatureStore(N, SHAPE, "float32", RANGE, directory=tmp_path, memory_budget_bytes=0)
  st.write(np.arange(N), np.zeros((N, *SHAPE), np.float32))   # killed before finalize
  assert [p.name for p in tmp_path.iterdir()] == ["features_0-2.tmp.npy"]
  with pytest.raises(StoreError, match="missing"):
    open_store(tmp_path, RANGE, (N, *SHAPE), "float32")


def test_open_store_refuses_a_manifest_without_checksums(tmp_path):
  make_store(tmp_path)
  _, man = store_files(tmp_path)
  manifest = json.loads(man.read_text())
  del manifest["checksums"]
  man.write_text(json.dumps(manifest))
  with pytest.raises(StoreError, match="checksum"):
    open_store(tmp_path, RANGE, (N, *SHAPE), "float32")


@pytest.mark.parametrize("text", ["null", "[]"])
def test_open_store_refuses_a_manifest_that_is_not_an_object(tmp_path, text):
  make_store(tmp_path)
  store_files(tmp_path)[1].write_text(text)
  with pytest.raises(StoreError):
    open_store(tmp_path, RANGE, (N, *SHAPE), "float32")


# -- a damaged store of a real run is refused, rebuilt, and the run ends the same --

@pytest.fixture(scope="module")
def reference(early, tmp_path_factory):
  return ft.reference_run(early, tmp_path_factory).result()


def first_store(reference) -> tuple[Path, int]:
  """The reference's work directory after its first extraction epoch, and that store's cut."""
  event = reference["drop_events"][0]
  return reference["snapshot"][event["epoch"] + 1], event["cut"]


def start_early(early, tmp_path_factory):
  """This module's jobs, in a thread, after the reference (conftest.py starts them early)."""
  return early.start("integrity", run_integrity_jobs, early, tmp_path_factory)


@pytest.fixture(scope="module")
def integrity_runs(early, tmp_path_factory, reference):
  return start_early(early, tmp_path_factory).result()


def run_integrity_jobs(early, tmp_path_factory) -> dict:
  """All training jobs of this module (`damaged_jobs`, `fallback_jobs`): two processes
  side by side."""
  reference = ft.reference_run(early, tmp_path_factory).result()
  root = tmp_path_factory.mktemp("integrity")
  groups = {"damaged": damaged_jobs(root / "damaged", reference),
            "fallback": fallback_jobs(root / "fallback", reference)}
  running = {name: ft.Jobs(tmp_path_factory, list(g["jobs"].values()))
             for name, g in groups.items()}
  return {name: g | {"results": dict(zip(g["jobs"], running[name].result()))}
          for name, g in groups.items()}


# The damage whose resume runs to the end; the others stop after one epoch on
# the rebuilt store (the rebuild does not depend on what was wrong, and a full
# run each costs as much as the rest of this module's runs).
RUN_TO_END = "flip_byte"


def damaged_jobs(root: Path, reference) -> dict:
  """Each damage applied to a copy of the run stopped after its first extraction
  epoch, with open_store's verdict on it; jobs that resume the copies."""
  snapshot, cut = first_store(reference)
  done = len(ft.read_metrics(snapshot))
  name = f"features_0-{cut}"
  manifest = json.loads((snapshot / "features" / f"{name}.json").read_text())
  errors, jobs = {}, {}
  for damage, (apply, _) in DAMAGE.items():
    workdir = root / damage
    shutil.copytree(snapshot, workdir)
    npy = workdir / "features" / f"{name}.npy"
    apply(npy, npy.with_suffix(".json"))
    try:
      open_store(workdir / "features", (0, cut), manifest["shape"], "float32")
      errors[damage] = None
    except StoreError as e:
      errors[damage] = str(e)
    jobs[damage] = ft.fit_job(workdir, resume=True,
                              stop_after=None if damage == RUN_TO_END else done + 1)
  return {"errors": errors, "jobs": jobs, "manifest": manifest, "snapshot": snapshot,
          "cut": cut, "name": name, "root": root, "done": done}


@pytest.fixture(scope="module")
def damaged_runs(integrity_runs):
  return integrity_runs["damaged"]


def test_snapshot_is_a_run_stopped_after_its_first_store(damaged_runs):
  snapshot, name = damaged_runs["snapshot"], damaged_runs["name"]
  assert sorted(p.name for p in (snapshot / "features").iterdir()) == [
      f"{name}.json", f"{name}.npy"]
  done = len(ft.read_metrics(snapshot))
  assert ft.complete_steps(snapshot) == ft.last_kept(done)
  # Undamaged, the store opens.
  open_store(snapshot / "features", (0, damaged_runs["cut"]), damaged_runs["manifest"]["shape"],
             "float32")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_store_refused(damaged_runs, damage):
  assert damaged_runs["errors"][damage] is not None, "open_store accepted a damaged store"
  assert DAMAGE[damage][1] in damaged_runs["errors"][damage]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_store_rebuilt_on_resume(damaged_runs, reference, damage):
  rec = damaged_runs["results"][damage]
  rebuilding = [w for w in rec["warnings"] if "rebuilding" in w]
  assert len(rebuilding) == 1, rec["warnings"]
  assert DAMAGE[damage][1] in rebuilding[0]
  assert f"stages 0-{damaged_runs['cut'] - 1} " in rebuilding[0]
  # The next epoch, trained on the rebuilt store, is the reference's.
  workdir, epoch = damaged_runs["root"] / damage, damaged_runs["done"] + 1
  got, want = ft.read_metrics(workdir)[epoch - 1], ft.read_metrics(reference["workdir"])[epoch - 1]
  assert got["epoch"] == want["epoch"] == epoch
  assert got["stored_stages"] == want["stored_stages"] == damaged_runs["cut"]
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
  assert (got["test_accuracy"], got["decision"]) == (want["test_accuracy"], want["decision"])
  if damage != RUN_TO_END:
    assert rec["error"]["type"] == "Stopped", rec["error"]
    return
  # ... and so is the end.
  assert rec["error"] is None, rec["error"]
  ft.assert_same_run(rec["summary"], reference)
  assert rec["summary"]["store_fallbacks"] == []
  assert rec["features"] == []   # the finished run deleted its stores


# -- no room for a store: drop becomes freeze ---------------------------------------

NAN_EPOCH = 1   # 0-based epoch whose labels go bad from step 2 (0-based) on: set during step 1

def fallback_jobs(root: Path, reference) -> dict:
  """Freeze, drops that cannot store, and runs that go NaN."""
  snapshot, _ = first_store(reference)
  after_first_store = reference["drop_events"][0]["epoch"] + 1   # trains on the store
  shutil.copytree(snapshot, root / "nan_features")
  jobs = {
      "freeze": ft.fit_job(None, strategy="freeze"),
      "no_workdir": ft.fit_job(None, memory=0.0),
      "disk_full": ft.fit_job(root / "disk_full", memory=0.0, disk_free=4096),
      "write_error": ft.fit_job(root / "write_error", memory=0.0, write_fail_after=3),
      "nan": ft.fit_job(root / "nan", bad_labels_at=[NAN_EPOCH, 1]),
      "nan_checkpoint": dict(kind="checkpoint", workdir=str(root / "nan"), cfg=ft.CFG),
      "nan_cli": dict(kind="cli", argv=ft.cli_argv(root / "nan_cli"), bad_labels=True),
      # NaN features read by a conv stage: the reference resumed after its first
      # extraction epoch; the job ends after the epoch with the NaN.
      "nan_features": ft.fit_job(root / "nan_features", resume=True,
                                 nan_from=[after_first_store, 2],
                                 stop_after=after_first_store + 1),
      "nan_features_checkpoint": dict(kind="checkpoint", workdir=str(root / "nan_features"),
                                      cfg=ft.CFG),
  }
  return {"jobs": jobs, "root": root}


@pytest.fixture(scope="module")
def fallback_runs(integrity_runs):
  f = integrity_runs["fallback"]
  return {name: f["results"][name] for name in f["jobs"]} | {"root": f["root"]}


def assert_frozen_instead(rec, freeze, reason):
  assert rec["error"] is None, rec["error"]
  s = rec["summary"]
  assert s["final_store_cut"] == 0 and s["final_cut"] > 0
  assert s["drop_events"] == freeze["drop_events"]
  assert [f["stage_stop"] for f in s["store_fallbacks"]] == [e["cut"] for e in s["drop_events"]]
  assert all(reason in f["reason"] for f in s["store_fallbacks"]), s["store_fallbacks"]
  warned = [w for w in rec["warnings"] if w.startswith("cannot store the features")]
  assert len(warned) == len(s["store_fallbacks"]) and all("frozen" in w for w in warned)
  assert s["param_l2"] == pytest.approx(freeze["param_l2"], rel=1e-5)
  assert s["test_accuracy"] == pytest.approx(freeze["test_accuracy"], abs=0.5)


def test_freeze_run_freezes(fallback_runs):
  freeze = fallback_runs["freeze"]["summary"]
  assert freeze["final_cut"] > 0 and freeze["final_store_cut"] == 0
  assert freeze["store_fallbacks"] == []


def test_no_budget_and_no_workdir_turns_drop_into_freeze(fallback_runs):
  assert_frozen_instead(fallback_runs["no_workdir"], fallback_runs["freeze"]["summary"],
                        "no work directory to spill to")


def test_disk_shortfall_turns_drop_into_freeze(fallback_runs):
  rec = fallback_runs["disk_full"]
  assert_frozen_instead(rec, fallback_runs["freeze"]["summary"], "free on disk")
  assert not list((fallback_runs["root"] / "disk_full").rglob("features_*"))


def test_write_error_turns_drop_into_freeze(fallback_runs):
  rec = fallback_runs["write_error"]
  assert_frozen_instead(rec, fallback_runs["freeze"]["summary"],
                        "write failed: [Errno 28] No space left on device")
  # The half-written store file was removed.
  assert not list((fallback_runs["root"] / "write_error").rglob("features_*"))
  assert rec["features"] == []


# -- a NaN loss stops the run cleanly ------------------------------------------------

def test_nan_raises_training_diverged(fallback_runs):
  err = fallback_runs["nan"]["error"]
  assert err is not None and err["type"] == "TrainingDiverged" and err["module"] == "ldjax.errors"
  assert f"loss became nan at epoch {NAN_EPOCH + 1}, step 3;" in err["message"]
  assert "checkpoint is kept" in err["message"]


def test_nan_keeps_last_good_checkpoint(fallback_runs):
  workdir = fallback_runs["root"] / "nan"
  assert ft.complete_steps(workdir) == ft.last_kept(NAN_EPOCH)
  assert [r["epoch"] for r in ft.read_metrics(workdir)] == list(range(1, NAN_EPOCH + 1))
  restored = fallback_runs["nan_checkpoint"]
  assert restored["latest"] == NAN_EPOCH and restored["epoch"] == NAN_EPOCH
  assert restored["finite"] and restored["param_l2"] > 0
  assert not (workdir / "summary.json").exists()


def test_nan_on_the_command_line_exits_1_with_one_line(fallback_runs):
  rec = fallback_runs["nan_cli"]
  assert rec["rc"] == 1, rec["stderr"][-3000:]
  lines = [line for line in rec["stderr"].splitlines() if line.strip()]
  assert len(lines) == 1, rec["stderr"]
  assert re.fullmatch(r"error: loss became nan at epoch 1, step \d+; lower --lr .*", lines[0])
  assert "Traceback" not in rec["stderr"]


def test_nan_features_raise_training_diverged(fallback_runs):
  rec, saved = fallback_runs["nan_features"], fallback_runs["nan_features_checkpoint"]
  assert rec["error"] is not None, "the run with NaN features ended normally"
  assert rec["error"]["type"] == "TrainingDiverged", (
      f"the epoch with NaN inputs ended with {rec['error']['type']}; checkpoint "
      f"{saved['epoch']} holds {'finite' if saved['finite'] else 'NaN'} weights")


# -- only safe formats ------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal"}


def test_no_module_unpickles():
  sources = sorted((REPO / "ldjax").rglob("*.py"))
  assert len(sources) > 10
  offences = []
  for path in sources:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      offences += [f"{path.name}:{node.lineno} imports {n}" for n in names
                   if n.split(".")[0] in UNSAFE_MODULES]
      if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
          isinstance(node.value, ast.Constant) and node.value.value is False):
        offences.append(f"{path.name}:{node.lineno} passes allow_pickle={ast.unparse(node.value)}")
      if isinstance(node, ast.Attribute) and node.attr in ("loads", "load") and isinstance(
          node.value, ast.Name) and node.value.id in UNSAFE_MODULES:
        offences.append(f"{path.name}:{node.lineno} calls {node.value.id}.{node.attr}")
  assert offences == []
