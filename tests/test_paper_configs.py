"""Tests of experiments/paper_configs.py and experiments/dry_run.py.

Every one of the 21 rows of Tables 1-2 must turn, through ldjax's own command
line parser, into a valid TrainConfig with the paper's hyper-parameters
(Section 4.2, written out again here rather than read from paper_configs).
The dry run itself (mock TFDS data, model, Trainer, one compiled step) is
exercised on one row per dataset at width 1/16 (each row costs one compile of
a train step and of a test step, ~10-25 s on 2 cores); `python
experiments/dry_run.py` runs all rows at full width.
"""

import os
import shlex
import subprocess
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
sys.path.insert(0, EXPERIMENTS)

import dry_run  # noqa: E402
import paper_configs  # noqa: E402
from ldjax import run  # noqa: E402
from ldjax.strategy import Strategy  # noqa: E402

# Section 4.2: batch 256 everywhere; lr divided by 10 from the decay epoch on.
PROTOCOL = {
    "mnist": dict(dataset="mnist", epochs=60, warmup=5, lr=0.001, lr_decay_epoch=None),
    "cifar10": dict(dataset="cifar10", epochs=60, warmup=10, lr=0.1, lr_decay_epoch=20),
    "imagenette": dict(dataset="imagenette/160px-v2", epochs=150, warmup=25, lr=0.01,
                       lr_decay_epoch=50),
}
MODELS = ("vgg11", "vgg16", "vgg19", "resnet18", "resnet50", "resnet101", "resnet152")
ROW_IDS = [r["id"] for r in paper_configs.ROWS]


def test_rows_are_tables_1_and_2():
  assert len(paper_configs.ROWS) == 21 and len(set(ROW_IDS)) == 21
  assert ROW_IDS == [f"{m}-{d}" for m in MODELS for d in PROTOCOL]
  for r in paper_configs.ROWS:
    assert r["table"] == (1 if r["model"].startswith("vgg") else 2)
    assert r["strategies"] == ["sgd", "freeze", "drop"]


@pytest.mark.parametrize("row_id", ROW_IDS)
def test_command_gives_the_papers_config(row_id):
  row = paper_configs.get_row(row_id)
  cmd = paper_configs.command(row, data_dir="/data/tfds", workdir="/tmp/w")
  assert cmd[:3] == ["python", "-m", "ldjax.run"]
  args = run.build_parser().parse_args(cmd[3:])
  cfg = run.config_from_args(args)
  expected = dict(PROTOCOL[row["dataset"]], model=row["model"], width=1.0, batch_norm=True,
                  batch_size=256, lr_decay_factor=0.1, data_dir="/data/tfds",
                  train_size=None, test_size=None)
  flat = cfg.flat()
  assert {k: flat[k] for k in expected} == expected
  assert Strategy.parse_list(args.strategy) == ["sgd", "freeze", "drop"]
  assert args.workdir == "/tmp/w"
  cfg.check_strategies(["sgd", "freeze", "drop"])
  # The dry run builds its config the same way and finds no difference.
  cfg2, _ = dry_run.config_for_row(row)
  assert dry_run.config_mismatches(cfg2, row) == []


@pytest.mark.parametrize("dataset", sorted(PROTOCOL))
def test_ldjax_preset_agrees_with_the_protocol(dataset):
  # Without any flag, `python -m ldjax.run --dataset D` already follows the paper.
  p = PROTOCOL[dataset]
  cfg = run.config_from_args(run.build_parser().parse_args(["--dataset", p["dataset"]]))
  assert (cfg.run.epochs, cfg.drop.warmup, cfg.optim.lr, cfg.optim.lr_decay_epoch, cfg.run.batch_size) == (
      p["epochs"], p["warmup"], p["lr"], p["lr_decay_epoch"], 256)


def test_paper_numbers_are_consistent():
  for r in paper_configs.ROWS:
    p = r["paper"]
    sgd = p["sgd"]["T_min"]
    for s in ("freeze", "drop"):
      implied = 100 * (sgd - p[s]["T_min"]) / sgd
      # Two freezing dT values are printed wrong in the paper (PAPER_NOTES).
      if s == "freeze" and r["id"] in paper_configs.PAPER_NOTES:
        assert abs(implied - p[s]["dT_pct"]) > 0.1
      else:
        assert abs(implied - p[s]["dT_pct"]) < 0.02, (r["id"], s)
      assert 70 < p[s]["A_pct"] <= p["sgd"]["A_pct"] < 100
    assert p["drop"]["T_min"] < p["freeze"]["T_min"] < sgd
    f3 = p["table3_forward_mmac"]
    assert abs(100 * (f3["sgd"] - f3["drop"]) / f3["sgd"] - f3["dFLOPs_pct"]) < 0.01


def test_cli_list_and_command(capsys):
  assert paper_configs.main(["list"]) == 0
  out = capsys.readouterr().out
  assert all(i in out for i in ROW_IDS) and "21 rows" in out
  assert paper_configs.main(["command", "vgg16-cifar10", "--data-dir", "/d d",
                             "--", "--no-progress"]) == 0
  argv = shlex.split(capsys.readouterr().out)
  args = run.build_parser().parse_args(argv[3:])
  assert (args.data_dir, args.workdir, args.no_progress) == (
      "/d d", os.path.join("runs", "paper", "vgg16-cifar10"), True)
  assert paper_configs.main(["command", "vgg16"]) == 2
  assert "unknown row 'vgg16'" in capsys.readouterr().err


def test_cli_run(monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(paper_configs, "_has_accelerator", lambda: False)
  assert paper_configs.main(["run", "resnet18-mnist"]) == 2
  assert "--allow-cpu" in capsys.readouterr().err
  monkeypatch.setattr(subprocess, "run", lambda cmd, env, check: calls.append((cmd, env))
                      or subprocess.CompletedProcess(cmd, 0))
  assert paper_configs.main(["run", "resnet18-mnist", "--allow-cpu", "--workdir", "w"]) == 0
  (cmd, env), = calls
  assert cmd == [sys.executable, *paper_configs.command(
      paper_configs.get_row("resnet18-mnist"), workdir="w")[1:]]
  assert paper_configs.REPO_ROOT in env["PYTHONPATH"].split(os.pathsep)


# One row per dataset, covering both model families and both input designs
# (small-image, and the ImageNet stem at 160 px).
@pytest.mark.parametrize("row_id, stages", [("resnet18-mnist", 10), ("vgg11-cifar10", 11),
                                            ("resnet18-imagenette", 10)])
def test_dry_run_one_step(row_id, stages):
  pytest.importorskip("tensorflow_datasets")
  row = paper_configs.get_row(row_id)
  r = dry_run.dry_run_row(row, width=0.0625)
  assert r["config_ok"] and r["config_mismatches"] == []
  assert r["loss_finite"] and r["test_loss_finite"] and r["error"] is None
  assert r["image_shape"] == list(row["image_shape"]) and r["num_classes"] == 10
  assert r["stages"] == stages and r["batch"] == 2 and r["width"] == 0.0625
  assert r["params"] > 0 and r["forward_macs"] > 0
  assert r["step_compile_s"] > 0 and r["step_s"] > 0
  assert "FAILED" not in dry_run.format_result(r)
