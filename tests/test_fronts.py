"""ldjax.reporting.fronts and `python -m ldjax.report --fronts`, on hand-written runs."""

import json

import pytest

from ldjax import report
from ldjax.reporting.fronts import front_points, paired_gaps
from ldjax.reporting.runs import load_runs


def write_run(root, name, strategy, seed, budget, test, val=None, **config):
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps(
      {"strategy": strategy, "model": "resnet18", "model_name": "resnet18", "seed": seed,
       "width": 0.25, "dataset": "d", "augment": "flip,crop", **config}))
  (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "strategy": strategy}) + "\n")
  (d / "summary.json").write_text(json.dumps(
      {"strategy": strategy, "test_accuracy": test, "val_accuracy": val, "epochs": 5,
       "train_time_s": 10.0, "train_cpu_s": 9.0, "drop_events": [{"epoch": 2, "cut": 3}],
       "budget": {"reference_epochs": budget, "spent_reference_epochs": budget - 0.01}}))
  return d


@pytest.fixture
def runs_dir(tmp_path):
  for seed, (sgd, drop) in enumerate(((80.0, 81.0), (82.0, 81.5))):
    for b, shift in ((4, 0.0), (8, 2.0)):
      write_run(tmp_path, f"s{seed}/sgd-b{b}", "sgd", seed, b, sgd + shift, sgd)
      write_run(tmp_path, f"s{seed}/drop-b{b}", "drop", seed, b, drop + shift, drop)
  write_run(tmp_path, "s0/drop-window-b8", "drop", 0, 8, 70.0, crop_store="window")
  write_run(tmp_path, "s0/drop-timed-b8", "drop", 0, 8, 86.0, cost_table="/x/measured.json",
            decision_rule="stable")
  return tmp_path


def test_points_are_grouped_by_variant_and_budget_and_gaps_paired(runs_dir):
  runs = load_runs([str(p.parent) for p in runs_dir.rglob("summary.json")])
  points = front_points(runs)
  assert set(points) == {"SGD", "Dropping", "Dropping (window crop)",
                          "Dropping (stable rule, measured costs)"}
  assert sorted(points["Dropping"]) == [4.0, 8.0] and len(points["Dropping"][4.0]) == 2
  gaps = paired_gaps(points, "Dropping")
  assert gaps[4.0] == pytest.approx([1.0, -0.5]) and gaps[8.0] == pytest.approx([1.0, -0.5])
  assert paired_gaps(points, "Dropping (window crop)")[8.0] == pytest.approx([70.0 - 82.0])


def test_cli_writes_table_json_and_figure(runs_dir, tmp_path, capsys):
  out = tmp_path / "out"
  assert report.main(["--fronts", str(runs_dir), "--out", str(out)]) == 0
  table = (out / "fronts.md").read_text()
  assert "| Dropping | 4 | 2 | 81.25 ± 0.25 |" in table and "+1.00, -0.50" in table
  assert json.loads((out / "fronts.json").read_text())["SGD"]["8"][0]["test"] == 82.0
  assert (out / "fronts.png").stat().st_size > 1000


def test_no_budgeted_run_is_a_one_line_error(tmp_path, capsys):
  d = tmp_path / "plain"
  write_run(tmp_path, "plain", "sgd", 0, 4, 80.0)
  summary = json.loads((d / "summary.json").read_text())
  del summary["budget"]
  (d / "summary.json").write_text(json.dumps(summary))
  assert report.main(["--fronts", str(d)]) == 2
  assert "no finished run trained to a --budget" in capsys.readouterr().err
