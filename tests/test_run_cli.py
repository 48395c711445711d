"""Tests of the command line `ldjax.run.main(argv)`: bad input and a tiny real run.

Bad input must end with exit status 2 and a single `error:` line on stderr,
without a traceback and without leaving a work directory behind. One tiny
successful run (shared by several tests) checks the files a comparison writes.
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ldjax import run
from ldjax.train import compare

# Small settings, so that a case that wrongly got past validation still ends fast.
SMALL = ["--train-size", "256", "--test-size", "128", "--epochs", "2", "--warmup", "1",
         "--model", "vgg11", "--width", "0.0625", "--batch-size", "64", "--no-progress"]

# The flags the documentation lists (docs/reference.md, else README.md and docs/).
FLAGS = ["--strategy", "--dataset", "--data-dir", "--train-size", "--test-size", "--model",
         "--width", "--no-batch-norm", "--epochs", "--warmup", "--batch-size", "--lr",
         "--lr-decay-epoch", "--momentum", "--seed", "--feature-dtype", "--feature-memory-gb",
         "--eval-batch-size", "--eval-every", "--workdir", "--overwrite", "--resume",
         "--no-progress", "--compilation-cache", "--recipe", "--optimizer", "--weight-decay",
         "--schedule", "--warmup-lr-epochs", "--label-smoothing", "--augment", "--crop-pad",
         "--cut-rule", "--val-size", "--test-every-epoch", "--precision", "--init-from",
         "--keep-classifier", "--continue-from", "--data-schedule", "--devices",
         "--coordinator", "--num-processes", "--process-id", "--data-shards",
         "--adaptive-batch", "--max-batch-size", "--adaptive-lr", "--drop-at"]
FLAGS += ["--image-size", "--channels", "--test-fraction", "--skip-bad-images", "--image-cache",
          "--tensorboard"]   # folder:DIR data and the metrics files
FLAGS += ["--crop-store", "--crop-views", "--decision-rule", "--budget",
          "--cost-table"]    # the exact crop store, decision rules, compute budgets
FLAGS += ["--config", "--set", "--presets", "--help-all", "--reference",
          "--lr-decay-factor"]   # settings from files, presets, the generated help
FLAGS += ["--reader-threads"]   # the training loop's input threads
FLAGS += ["--device-memory-gb"]   # the training input on the devices


def write_idx(path, magic: int, array: np.ndarray) -> None:
  header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def bad_idx_dir(tmp_path):
  """An MNIST-style directory whose training images carry the labels' magic number."""
  d = tmp_path / "idx"
  d.mkdir()
  images = np.zeros((16, 8, 8), np.uint8)
  labels = np.arange(16, dtype=np.uint8) % 2
  write_idx(d / "train-images-idx3-ubyte", 0x00000801, images)   # wrong: 0x0803 expected
  write_idx(d / "train-labels-idx1-ubyte", 0x00000801, labels)
  write_idx(d / "t10k-images-idx3-ubyte", 0x00000803, images)
  write_idx(d / "t10k-labels-idx1-ubyte", 0x00000801, labels)
  return d


def assert_usage_error(capsys, code, *needles):
  out, err = capsys.readouterr()
  assert code == 2, (out, err)
  assert "Traceback" not in err and "Traceback" not in out
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("error:"), err
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--model", "resnet7"], ["resnet7"]),
    (["--dataset", "nosuchdata"], ["nosuchdata"]),
    (["--strategy", "sgd,fast"], ["fast"]),
    (["--strategy", "drop,drop"], ["twice"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--batch-size", "-3"], ["--batch-size"]),
    (["--batch-size", "257"], ["--batch-size", "256"]),        # > the 256 training images
    (["--epochs", "0"], ["--epochs"]),
    (["--epochs", "-1"], ["--epochs"]),
    (["--strategy", "drop", "--epochs", "3", "--warmup", "3"], ["--warmup"]),
    (["--strategy", "sgd,freeze", "--epochs", "2", "--warmup", "5"], ["--warmup"]),
    (["--train-size", "0"], ["--train-size"]),
    (["--eval-every", "0"], ["--eval-every"]),
])
def test_bad_input_exits_2(capsys, tmp_path, args, needles):
  workdir = tmp_path / "wd"
  code = run.main(SMALL + args + ["--workdir", str(workdir)])
  assert_usage_error(capsys, code, *needles)
  assert not workdir.exists()


def test_warmup_may_equal_epochs_for_sgd_only(capsys, tmp_path, monkeypatch):
  # sgd takes no decision, so warm-up >= epochs is not an error for it; stop the run
  # right after validation by making the training itself a usage error.
  def stop(*args, **kwargs):
    raise run.UsageError("stopped by the test")
  monkeypatch.setattr(compare, "run_strategies", stop)
  code = run.main(SMALL + ["--strategy", "sgd", "--epochs", "2", "--warmup", "2",
                           "--workdir", str(tmp_path / "wd")])
  assert_usage_error(capsys, code, "stopped by the test")


def test_wrong_magic_idx_dir(capsys, tmp_path, bad_idx_dir):
  workdir = tmp_path / "wd"
  code = run.main(SMALL + ["--dataset", f"idx:{bad_idx_dir}", "--workdir", str(workdir)])
  line = assert_usage_error(capsys, code, "train-images-idx3-ubyte", "magic")
  assert "0x00000801" in line and "0x00000803" in line
  assert not workdir.exists()


def test_missing_idx_dir(capsys, tmp_path):
  code = run.main(SMALL + ["--dataset", f"idx:{tmp_path / 'none'}",
                           "--workdir", str(tmp_path / "wd")])
  assert_usage_error(capsys, code, "does not exist")
  assert not (tmp_path / "wd").exists()


def test_unwritable_workdir(capsys, tmp_path, tiny_run):
  # (After `tiny_run`, which compiles the same model's initialisers: the error only
  # comes after the model is initialised, which costs ~20 s the first time.)
  afile = tmp_path / "afile"
  afile.write_text("not a directory")
  workdir = afile / "sub"
  code = run.main(SMALL + ["--workdir", str(workdir)])
  assert_usage_error(capsys, code, "work directory")
  assert afile.is_file() and afile.read_text() == "not a directory"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_workdir_is_a_file(capsys, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  code = run.main(SMALL + ["--workdir", str(afile)])
  assert_usage_error(capsys, code, "is a file")
  assert afile.read_text() == "x"


def test_help_mentions_every_flag(capsys):
  assert run.main(["--help-all"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:")
  # Each flag is described in a group's list, not only named in the usage line.
  options = out[out.index("\ncommand:"):]
  for flag in FLAGS:
    assert f"\n  {flag}" in options, flag
  for strategy in ("sgd", "freeze", "drop"):
    assert strategy in out


# --- a tiny successful comparison ---------------------------------------------------------

# The brief's run, with the (faster to compile) VGG-11 instead of the preset's ResNet-18.
RUN_ARGS = ["--strategy", "sgd,drop", "--model", "vgg11", "--train-size", "256",
            "--test-size", "128", "--epochs", "3", "--warmup", "1", "--width", "0.0625",
            "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "tmp"
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = run.main(RUN_ARGS + ["--workdir", str(workdir)])
  return code, out.getvalue(), err.getvalue(), workdir


def test_tiny_run_succeeds(tiny_run):
  code, out, err, workdir = tiny_run
  assert code == 0, err
  assert "Traceback" not in err
  assert f"results in {workdir}" in out
  # The comparison table is printed, one row per strategy.
  assert "| sgd |" in out and "| drop |" in out


def test_tiny_run_writes_comparison(tiny_run):
  code, out, err, workdir = tiny_run
  assert code == 0, err
  md = (workdir / "comparison.md").read_text()
  assert md in out
  assert md.count("\n| sgd |") == 1 and md.count("\n| drop |") == 1
  table = json.loads((workdir / "comparison.json").read_text())
  assert [r["strategy"] for r in table["rows"]] == ["sgd", "drop"]
  sgd, drop = table["rows"]
  assert "dT_pct" not in sgd and "dT_pct" in drop
  for row in table["rows"]:
    assert 0 <= row["A_pct"] <= 100
    assert row["T_min"] > 0
  summaries = {s: json.loads((workdir / s / "summary.json").read_text()) for s in ("sgd", "drop")}
  for s, row in zip(("sgd", "drop"), table["rows"]):
    assert row["A_pct"] == summaries[s]["test_accuracy"]
    assert row["drop_events"] == len(summaries[s]["drop_events"])
  # Dropping never costs more forward MACs than SGD over the same epochs.
  assert drop["forward_macs"] <= sgd["forward_macs"]
  assert drop["dForward_pct"] == pytest.approx(
      100 * (sgd["forward_macs"] - drop["forward_macs"]) / sgd["forward_macs"])


@pytest.mark.parametrize("strategy", ["sgd", "drop"])
def test_tiny_run_strategy_dirs(tiny_run, strategy):
  code, out, err, workdir = tiny_run
  assert code == 0, err
  d = workdir / strategy
  config = json.loads((d / "config.json").read_text())
  assert config["strategy"] == strategy
  assert config["strategies"] == ["sgd", "drop"]
  assert config["epochs"] == 3 and config["warmup"] == 1 and config["batch_size"] == 64
  assert config["width"] == 0.0625 and config["train_size"] == 256
  lines = (d / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
  summary = json.loads((d / "summary.json").read_text())
  assert summary["strategy"] == strategy and summary["epochs"] == 3
  assert summary["test_accuracy"] == json.loads(lines[-1])["test_accuracy"]
  # The feature store is a cache: nothing of it is left after the run.
  assert not list(d.rglob("features_*"))


def test_tiny_run_uses_the_compilation_cache(tiny_run, compilation_cache_dir):
  # conftest points $LDJAX_COMPILATION_CACHE at a directory of the test session.
  code, out, err, workdir = tiny_run
  assert code == 0, err
  assert f"compilation cache {compilation_cache_dir}" in out
  assert "compiled the whole-model step into the compilation cache" in out
  names = [p.name for p in compilation_cache_dir.iterdir()]
  assert any(n.startswith("jit_scored_train_step") for n in names), names


def test_second_run_into_same_workdir_refused(capsys, tiny_run):
  code, out, err, workdir = tiny_run
  assert code == 0, err
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  code = run.main(RUN_ARGS + ["--workdir", str(workdir)])
  assert_usage_error(capsys, code, "--overwrite")
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before


def test_every_flag_is_listed_here_and_in_the_readme():
  parser_flags = {o for a in run.build_parser()._actions for o in a.option_strings
                  if o.startswith("--") and o != "--help"}
  assert parser_flags == set(FLAGS)
  # The flag reference: docs/reference.md once it is generated, else the README and docs/.
  root = Path(__file__).parent.parent
  reference = root / "docs" / "reference.md"
  pages = [reference] if reference.exists() else [root / "README.md",
                                                   *sorted((root / "docs").glob("*.md"))]
  documented = "\n".join(p.read_text() for p in pages)
  missing = [f for f in FLAGS if f"`{f}" not in documented]
  assert not missing, f"the CLI reference ({', '.join(p.name for p in pages)}) lacks {missing}"


def test_the_reference_is_generated_from_the_settings():
  reference = Path(__file__).parent.parent / "docs" / "reference.md"
  assert reference.read_text() == run.reference(), (
      "docs/reference.md is stale: python -m ldjax.run --reference > docs/reference.md")
