"""Tests of `ldjax.report` and `ldjax.plots` on hand-written run directories (no training).

Every number below is chosen so the expected T, A, dT and MAC reductions can be
worked out by hand; the comments show the arithmetic.
"""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldjax.reporting import report
from ldjax.errors import UsageError
from ldjax.report import main
from ldjax.reporting.plots import stage_series
from ldjax.reporting.report import write_report
from ldjax.reporting.runs import default_out, load_run, load_runs
from ldjax.reporting.tables import tables, tables_markdown

REPO = Path(__file__).resolve().parents[1]
STAGES = ["s0", "s1", "s2", "s3", "fc"]
NUM_TRAIN = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics_line(epoch, strategy, *, acc, fwd, train, cut=0, scored=None, drop_to=None,
                 times=(1.0, 0.0, 0.0)):
  """One metrics.jsonl line; `scored`: the stages scored this epoch (default: all conv)."""
  scored = STAGES[cut:-1] if scored is None else scored
  n = len(scored)
  return {
      "epoch": epoch, "strategy": strategy, "lr": 0.01, "loss": 1.0, "train_accuracy": acc,
      "test_loss": 1.0, "test_accuracy": acc,
      "time": {"train_s": times[0], "extract_store_s": times[1], "compile_s": times[2],
               "eval_s": 0.1, "epoch_s": sum(times) + 0.1},
      "dropped_stages": cut, "trainable_params": 1000 - 100 * cut,
      "forward_params": 1000 - (100 * cut if strategy == "drop" else 0),
      "forward_macs": fwd, "train_macs": train, "xla_step_flops": 1.0, "store": None,
      # P rises with the stage index and the epoch; aapd falls with the stage index.
      "scores": {"stages": scored,
                 "P": [0.1 * epoch + 0.01 * STAGES.index(s) for s in scored],
                 "P_std": [0.0] * n,
                 "aapd": [1.0 / (1 + STAGES.index(s)) for s in scored]},
      "decision": None if drop_to is None else {"n_star": drop_to, "Mc": 0.5, "Md": None,
                                                "drop": True, "new_cut": drop_to},
  }


def write_run(path, strategy, *, seed=0, model="resnet18", width=0.5, train_time_s, acc,
              fwd, train, drop_after=None, summary=True):
  """A run directory with len(fwd) epochs. drop_after=(epoch, cut): 2 stages go after it."""
  path.mkdir(parents=True)
  config = {"model": model, "width": width, "dataset": "mnist", "seed": seed, "epochs": len(fwd),
            "warmup": 1, "strategy": strategy, "model_name": model, "stage_names": STAGES,
            "num_train": NUM_TRAIN}
  (path / "config.json").write_text(json.dumps(config))
  lines, cut = [], 0
  for i, (f, t) in enumerate(zip(fwd, train), 1):
    decide = drop_after is not None and i == drop_after[0]
    lines.append(metrics_line(i, strategy, acc=acc - 5 + i, fwd=f, train=t, cut=cut,
                              drop_to=drop_after[1] if decide else None,
                              times=(train_time_s / len(fwd), 0.0, 0.0)))
    if decide:
      cut = drop_after[1]
  lines[-1]["test_accuracy"] = acc
  (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
  if summary:
    events = [] if drop_after is None else [{"epoch": drop_after[0], "stages_dropped": 2,
                                             "cut": 2}]
    (path / "summary.json").write_text(json.dumps({
        "strategy": strategy, "model": model, "dataset": "mnist", "epochs": len(fwd),
        "test_accuracy": acc, "test_loss": 1.0, "train_time_s": train_time_s,
        "compile_time_s": 0.0, "drop_events": events, "final_cut": cut, "param_l2": 1.0,
        "forward_macs_total": sum(fwd) * NUM_TRAIN, "train_macs_total": sum(train) * NUM_TRAIN}))
  return path


def write_comparison(root, seed=0, sgd_s=600.0, drop_s=240.0, sgd_acc=90.0, **kw):
  """sgd/, freeze/, drop/ of 4 epochs; drop loses 2 stages after epoch 2 (decided then),
  extracts in epoch 3 (full forward) and trains on the cache in epoch 4."""
  write_run(root / "sgd", "sgd", seed=seed, train_time_s=sgd_s, acc=sgd_acc,
            fwd=[100] * 4, train=[300] * 4, **kw)
  write_run(root / "freeze", "freeze", seed=seed, train_time_s=540.0, acc=89.0,
            fwd=[100] * 4, train=[300, 300, 200, 200], drop_after=(2, 2), **kw)
  write_run(root / "drop", "drop", seed=seed, train_time_s=drop_s, acc=88.5,
            fwd=[100, 100, 100, 0], train=[300, 300, 120, 120], drop_after=(2, 2), **kw)
  (root / "comparison.json").write_text("{}")
  return root


def test_tables_match_hand_computed(tmp_path):
  t = tables(load_runs([write_comparison(tmp_path / "cmp")]))
  assert t["strategies"] == ["sgd", "freeze", "drop"]
  [row] = t["table1"]
  assert (row["network"], row["dataset"], row["width"], row["seed"]) == ("resnet18", "mnist", 0.5, 0)
  s = row["strategies"]
  assert s["sgd"]["T_min"] == pytest.approx(10.0) and s["sgd"]["A_pct"] == 90.0
  assert s["freeze"]["T_min"] == pytest.approx(9.0)
  assert s["freeze"]["dT_pct"] == pytest.approx(10.0)  # (600 - 540) / 600
  assert s["drop"]["T_min"] == pytest.approx(4.0) and s["drop"]["A_pct"] == 88.5
  assert s["drop"]["dT_pct"] == pytest.approx(60.0)  # (600 - 240) / 600
  assert "dT_pct" not in s["sgd"]
  [r3] = t["table3"]
  assert r3["sgd_forward_mmacs_epoch"] == pytest.approx(100e-6)  # 100 MACs per example
  assert r3["drop_forward_mmacs_epoch"] == pytest.approx(75e-6)  # (100 + 100 + 100 + 0) / 4
  assert r3["dForward_epoch_pct"] == pytest.approx(25.0)
  assert r3["sgd_forward_macs_total"] == 4000 and r3["drop_forward_macs_total"] == 3000
  assert r3["dForward_pct"] == pytest.approx(25.0)
  assert r3["dTrain_pct"] == pytest.approx(30.0)  # 1 - 840 / 1200
  assert r3["dT_pct"] == pytest.approx(60.0)
  assert t["table1_seeds"] == [] and t["table3_seeds"] == []
  md = tables_markdown(t)
  assert ("| resnet18 | mnist | 0.5 | 0 | 10.00 | 90.00 | 9.00 | 89.00 | 10.00 | 4.00 | 88.50 "
          "| 60.00 |") in md
  assert "| 25.00 | 30.00 | 60.00 |" in md
  assert "Mean ± standard deviation" not in md


def test_mean_and_std_over_seeds(tmp_path):
  write_comparison(tmp_path / "s0", seed=0, sgd_s=600.0, drop_s=240.0, sgd_acc=90.0)
  write_comparison(tmp_path / "s1", seed=1, sgd_s=660.0, drop_s=330.0, sgd_acc=92.0)
  t = tables(load_runs([tmp_path / "s0", tmp_path / "s1"]))
  assert [r["seed"] for r in t["table1"]] == [0, 1]
  [agg] = t["table1_seeds"]
  assert agg["seeds"] == [0, 1]
  sgd, drop = agg["stats"]["sgd"], agg["stats"]["drop"]
  assert sgd["T_min"]["mean"] == pytest.approx(10.5)  # (10 + 11) / 2
  assert sgd["T_min"]["std"] == pytest.approx(math.sqrt(0.5))  # ddof=1: sqrt(2 * 0.5**2 / 1)
  assert sgd["A_pct"]["mean"] == pytest.approx(91.0)
  assert sgd["A_pct"]["std"] == pytest.approx(math.sqrt(2.0))
  # dT per seed against its own SGD run: 60 % and (660 - 330) / 660 = 50 %.
  assert drop["dT_pct"]["mean"] == pytest.approx(55.0) and drop["dT_pct"]["n"] == 2
  assert drop["dT_pct"]["std"] == pytest.approx(math.sqrt(50.0))
  [agg3] = t["table3_seeds"]
  assert agg3["stats"]["dT_pct"]["mean"] == pytest.approx(55.0)
  assert agg3["stats"]["dForward_pct"]["mean"] == pytest.approx(25.0)
  assert agg3["stats"]["dForward_pct"]["std"] == pytest.approx(0.0)
  md = tables_markdown(t)
  assert "Mean ± standard deviation over seeds" in md
  assert "55.00 ± 7.07" in md and "10.50 ± 0.71" in md


def test_stage_alignment_when_stages_drop_out(tmp_path):
  run = load_run(write_run(tmp_path / "drop", "drop", train_time_s=4.0, acc=80.0,
                           fwd=[100] * 4, train=[300] * 4, drop_after=(2, 2)))
  # Epochs 1-2 score s0..s3, epochs 3-4 only s2, s3: s2 is then first in the list.
  assert run.metrics[2]["scores"]["stages"] == ["s2", "s3"]
  p = stage_series(run, "P")
  assert list(p) == ["s0", "s1", "s2", "s3"]
  np.testing.assert_allclose(p["s0"], [0.1, 0.2, np.nan, np.nan])
  np.testing.assert_allclose(p["s1"], [0.11, 0.21, np.nan, np.nan])
  np.testing.assert_allclose(p["s2"], [0.12, 0.22, 0.32, 0.42])
  np.testing.assert_allclose(stage_series(run, "aapd")["s3"], [0.25] * 4)
  # Without stage_names in config.json the order is the order first seen.
  run.config.pop("stage_names")
  assert list(stage_series(run, "P")) == ["s0", "s1", "s2", "s3"]


def png_size(path: Path) -> tuple[int, int]:
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


def test_write_report_figures_and_markdown(tmp_path):
  cmp_dir = write_comparison(tmp_path / "cmp")
  # A VGG-11 without BN beside it, as in Fig. 3: its own panel and group.
  write_run(tmp_path / "nobn", "drop", model="vgg11", train_time_s=100.0, acc=70.0,
            fwd=[50] * 4, train=[150] * 4, drop_after=(3, 2))
  runs = load_runs([cmp_dir, tmp_path / "nobn"])
  paths = write_report(runs, tmp_path / "out")
  names = [p.name for p in paths]
  assert names == ["report.md", "report.json", "aapd.png", "scores.png", "accuracy_time.png",
                   "params_macs.png"]
  for p in paths[2:]:
    assert p.stat().st_size > 10_000, p
    w, h = png_size(p)
    assert 600 <= w <= 3000 and 300 <= h <= 3000, (p.name, w, h)
  md = (tmp_path / "out" / "report.md").read_text()
  for name in names[2:]:
    assert f"]({name})" in md
  assert "Network: resnet18  Dataset: mnist" in md  # comparison_markdown, reused
  assert json.loads((tmp_path / "out" / "report.json").read_text())["table3"][0]["dT_pct"] == 60.0


def test_load_runs_expands_dedups_and_derives_missing_summary(tmp_path):
  cmp_dir = write_comparison(tmp_path / "cmp")
  runs = load_runs([cmp_dir, cmp_dir / "drop"])
  assert [r.strategy for r in runs] == ["sgd", "freeze", "drop"]
  assert default_out(cmp_dir / "drop") == cmp_dir and default_out(cmp_dir) == cmp_dir
  # An interrupted run: no summary.json, so its totals come from metrics.jsonl.
  run = load_run(write_run(tmp_path / "cut", "drop", train_time_s=8.0, acc=80.0,
                           fwd=[100, 100, 100, 0], train=[300, 300, 120, 120],
                           drop_after=(2, 2), summary=False))
  assert not run.complete
  assert run.summary["train_time_s"] == pytest.approx(8.0)
  assert run.summary["forward_macs_total"] == 3000
  assert run.summary["drop_events"] == [{"epoch": 2, "stages_dropped": 2, "cut": 2}]
  # A half-written last line (killed mid-append) is left out; one in the middle is an error.
  metrics = tmp_path / "cut" / "metrics.jsonl"
  metrics.write_text(metrics.read_text() + '{"epoch": 5, "stra')
  assert len(load_run(tmp_path / "cut").metrics) == 4
  metrics.write_text('{"epoch": 1\n' + metrics.read_text())
  with pytest.raises(UsageError, match="metrics.jsonl:1: not valid JSON"):
    load_run(tmp_path / "cut")
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "notes.txt").write_text("not a run")
  with pytest.raises(UsageError, match="not a run directory"):
    load_runs([tmp_path / "junk"])
  with pytest.raises(UsageError, match="two sgd runs"):
    tables(load_runs([cmp_dir / "sgd", write_run(tmp_path / "sgd2", "sgd", train_time_s=1.0,
                                                  acc=1.0, fwd=[1], train=[1])]))


def test_cli_bad_path_one_line_exit_2(tmp_path, capsys):
  assert main([str(tmp_path / "missing")]) == 2
  out, err = capsys.readouterr()
  assert out == "" and err.startswith("error: ") and err.count("\n") == 1
  (tmp_path / "empty").mkdir()
  assert main([str(tmp_path / "empty")]) == 2
  assert "not a run directory" in capsys.readouterr().err


def test_cli_subprocess_bad_path_has_no_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "ldjax.report", str(tmp_path / "missing")],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
  assert "Traceback" not in proc.stderr


def test_cli_success_writes_report_into_comparison_dir(tmp_path, capsys):
  cmp_dir = write_comparison(tmp_path / "cmp")
  assert main([str(cmp_dir / "sgd"), str(cmp_dir / "drop")]) == 0
  assert "report.md" in capsys.readouterr().out
  md = (cmp_dir / "report.md").read_text()
  assert "| resnet18 | mnist | 0.5 | 0 | 10.00 | 90.00 | 4.00 | 88.50 | 60.00 |" in md
  assert (cmp_dir / "params_macs.png").read_bytes()[:8] == PNG_MAGIC


def test_report_comparison_writes_into_workdir(tmp_path, monkeypatch):
  # The figures themselves are checked above; here only what is reported, and where.
  calls = []
  monkeypatch.setattr(report, "write_report", lambda runs, out: calls.append((runs, out)) or [])
  cmp_dir = write_comparison(tmp_path / "cmp")
  assert report.report_comparison(cmp_dir) == []
  [(runs, out)] = calls
  assert [r.strategy for r in runs] == ["sgd", "freeze", "drop"] and Path(out) == cmp_dir


def _with_validation(run_dir, val_acc):
  """Adds a validation accuracy per epoch to a run's metrics.jsonl."""
  path = run_dir / "metrics.jsonl"
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  for m, v in zip(lines, val_acc):
    m["val_accuracy"] = v
  path.write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_accuracy_figure_plots_validation_and_time_to_accuracy(tmp_path):
  """With --val-size the accuracy panel plots the validation accuracy per epoch and the
  final test accuracy as a star; with one seed, the time-to-accuracy target (SGD's final
  validation accuracy - 0.5) is a dotted line and a triangle marks, over each strategy's
  time bar, the first epoch that reached it. Without validation: test accuracy, as before."""
  from ldjax.reporting.plots import TARGET_LABEL, accuracy_time_plot
  cmp_dir = write_comparison(tmp_path / "cmp")
  fig = accuracy_time_plot(load_runs([cmp_dir]))
  ax_a, ax_t = fig.axes[:2]
  assert ax_a.get_ylabel() == "test accuracy (%)"
  assert [line.get_label() for line in ax_a.lines].count(TARGET_LABEL) == 1

  _with_validation(cmp_dir / "sgd", [80.0, 82.0, 84.0, 86.0])     # target 85.5
  _with_validation(cmp_dir / "freeze", [81.0, 85.5, 85.0, 85.2])  # reached at epoch 2
  _with_validation(cmp_dir / "drop", [80.0, 81.0, 82.0, 83.0])    # never
  fig = accuracy_time_plot(load_runs([cmp_dir]))
  ax_a, ax_t = fig.axes[:2]
  assert ax_a.get_ylabel() == "validation accuracy (%)"
  curves = {line.get_label(): line for line in ax_a.lines}
  np.testing.assert_allclose(curves["SGD"].get_ydata(), [80, 82, 84, 86])
  target = curves[TARGET_LABEL]
  np.testing.assert_allclose(target.get_ydata(), [85.5, 85.5])
  stars = [line for line in ax_a.lines if line.get_marker() == "*"]
  assert sorted(float(line.get_ydata()[0]) for line in stars) == [88.5, 89.0, 90.0]
  triangles = [line for line in ax_t.lines if line.get_marker() == "v"]
  # SGD reaches 85.5 at epoch 4, Freezing at epoch 2 (bars offset by -0.27, 0, +0.27).
  xs = sorted(float(line.get_xdata()[0]) for line in triangles)
  assert len(xs) == 2 and round(xs[0]) == 2 and round(xs[1]) == 4, xs
  heights = sorted(float(line.get_ydata()[0]) for line in triangles)
  # Just above one epoch's bar: Freezing's 540 s / 4, SGD's 600 s / 4.
  assert heights == pytest.approx([1.05 * 135.0, 1.05 * 150.0])
