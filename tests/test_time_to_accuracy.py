"""Time to accuracy (`ldjax.reporting.comparison`): the T at which a strategy first reached
SGD's final accuracy minus 0.5 points, in the comparison table, Tables 1/2 and the report.

Hand-written records; every epoch's T share is train + extraction/store + compilation, so
the expected times are sums worked out in the comments.
"""

import json

import pytest

import test_report as tr
from ldjax.reporting import report
from ldjax.reporting.comparison import (accuracy_field, accuracy_target, comparison,
                                        comparison_markdown, epoch_train_time_s,
                                        time_to_accuracy)
from ldjax.reporting.runs import load_runs
from ldjax.reporting.tables import tables, tables_markdown


ABSENT = object()


def rec(test=None, val=ABSENT, times=(10.0, 0.0, 0.0), eval_s=3.0):
  """One metrics.jsonl line with only what time to accuracy reads (no val_accuracy key
  unless `val` is given, as in runs from before validation splits)."""
  line = {"test_accuracy": test,
          "time": {"train_s": times[0], "extract_store_s": times[1], "compile_s": times[2],
                   "eval_s": eval_s, "epoch_s": sum(times) + eval_s}}
  if val is not ABSENT:
    line["val_accuracy"] = val
  return line


# Epoch shares of T: 10 + 2 + 5 = 17, 10, 10 + 4 = 14, 10 -> cumulative 17, 27, 41, 51.
RECORDS = [rec(80.0, times=(10.0, 2.0, 5.0)), rec(85.0), rec(88.0, times=(10.0, 4.0, 0.0)),
           rec(90.0)]


def test_epoch_share_excludes_evaluation():
  assert epoch_train_time_s(RECORDS[0]) == 17.0   # eval_s 3 and epoch_s are not counted
  assert epoch_train_time_s({}) == 0.0


@pytest.mark.parametrize("target, expected", [
    (79.0, 17.0),    # the first epoch
    (80.0, 17.0),    # reached exactly
    (84.9, 27.0),    # a middle epoch
    (88.0, 41.0),
    (89.5, 51.0),    # the last epoch: the run's whole T
    (90.5, None),    # never
])
def test_first_epoch_reaching_target(target, expected):
  assert time_to_accuracy(RECORDS, target) == expected


def test_last_epoch_equals_the_runs_T():
  assert time_to_accuracy(RECORDS, 90.0) == sum(epoch_train_time_s(m) for m in RECORDS)


def test_unevaluated_epochs_skipped_but_their_time_counts():
  records = [rec(None), rec(None, times=(5.0, 0.0, 0.0)), rec(70.0), rec(None)]
  assert time_to_accuracy(records, 60.0) == 25.0    # 10 + 5 + 10
  assert time_to_accuracy(records, 75.0) is None
  assert time_to_accuracy([], 0.0) is None
  # No such field at all (runs from before validation splits): never reached.
  assert time_to_accuracy(RECORDS, 50.0, "val_accuracy") is None


def test_val_accuracy_chosen_when_sgd_has_it_at_the_end():
  with_val = [rec(None, val=70.0), rec(None, val=80.0), rec(85.0, val=82.0)]
  assert accuracy_field(with_val) == "val_accuracy"
  assert accuracy_target(with_val) == {"field": "val_accuracy", "sgd_final_pct": 82.0,
                                       "target_pct": 81.5, "points": 0.5}
  assert time_to_accuracy(with_val, 81.5, "val_accuracy") == 30.0
  # val_accuracy present but null (no validation split): test accuracy.
  no_val = [rec(80.0, val=None), rec(84.0, val=None)]
  assert "val_accuracy" in no_val[0]
  assert accuracy_field(no_val) == "test_accuracy"
  assert accuracy_target(no_val)["target_pct"] == 83.5
  assert accuracy_field(RECORDS) == "test_accuracy"   # absent field
  # An incomplete run whose last epoch was not evaluated: the last evaluated one decides.
  assert accuracy_field([rec(None, val=70.0), rec(None)]) == "val_accuracy"
  assert accuracy_target([rec(None), rec(None)]) is None


def summary(records, acc):
  return {"train_time_s": sum(epoch_train_time_s(m) for m in records), "test_accuracy": acc,
          "forward_macs_total": 100, "train_macs_total": 300, "drop_events": []}


def table_of(records: dict, accs: dict):
  return comparison({s: summary(r, accs[s]) for s, r in records.items()}, network="net",
                    dataset="data", records=records)


def test_comparison_rows_and_never_in_table():
  drop = [rec(80.0), rec(89.6), rec(89.0)]     # reaches 89.5 at epoch 2, then falls below
  freeze = [rec(80.0), rec(85.0), rec(89.0)]   # never
  t = table_of({"sgd": RECORDS, "freeze": freeze, "drop": drop},
               {"sgd": 90.0, "freeze": 89.0, "drop": 89.0})
  assert t["target"]["target_pct"] == 89.5 and t["target"]["field"] == "test_accuracy"
  sgd, fr, dr = t["rows"]
  assert sgd["T_target_s"] == 51.0 and sgd["T_target_s"] == sgd["T_min"] * 60
  assert sgd["T_target_min"] == pytest.approx(0.85) and sgd["target_reached"]
  assert fr["T_target_s"] is None and not fr["target_reached"]
  assert dr["T_target_s"] == 20.0 and dr["T_target_s"] <= dr["T_min"] * 60
  md = comparison_markdown(t)
  assert "| Strategy | T (min) | A (%) | T to 89.50% test (min) | dT (%) |" in md
  assert "| sgd | 0.85 | 90.00 | 0.85 | - |" in md
  assert "| freeze | 0.50 | 89.00 | never |" in md
  assert "| drop | 0.50 | 89.00 | 0.33 |" in md
  assert "SGD's final test accuracy (90.00%) minus 0.5 points" in md
  json.dumps(t)   # comparison.json


def test_comparison_on_validation_accuracy():
  sgd = [rec(None, val=80.0), rec(88.0, val=84.0)]
  drop = [rec(None, val=83.6, times=(4.0, 1.0, 0.0)), rec(87.0, val=83.0)]
  t = table_of({"sgd": sgd, "drop": drop}, {"sgd": 88.0, "drop": 87.0})
  assert t["target"]["field"] == "val_accuracy" and t["target"]["target_pct"] == 83.5
  assert t["rows"][1]["T_target_s"] == 5.0 and t["rows"][1]["A_val_pct"] == 83.0
  md = comparison_markdown(t)
  assert "| A (%) | A val (%) | T to 83.50% validation (min) |" in md
  assert "| drop | 0.25 | 87.00 | 83.00 | 0.08 |" in md
  assert "final validation accuracy (84.00%)" in md


def test_no_sgd_run_leaves_the_column_out():
  t = table_of({"freeze": RECORDS, "drop": RECORDS}, {"freeze": 90.0, "drop": 90.0})
  assert t["target"] is None and "no SGD run" in t["target_note"]
  assert all("T_target_s" not in r for r in t["rows"])
  md = comparison_markdown(t)
  assert "T to" not in md.split("\n")[2]
  assert "No time to accuracy: no SGD run among the strategies" in md
  # Summaries only (how ldjax.train.compare calls it): no column either.
  t = comparison({"sgd": summary(RECORDS, 90.0)}, network="n", dataset="d")
  assert t["target"] is None and "T to" not in comparison_markdown(t).split("\n")[2]


def write_comparison(root, seed=0, sgd_s=600.0, sgd_acc=90.0):
  """test_report's comparison: per epoch acc - 5 + i, the last epoch acc, so sgd reaches
  sgd_acc - 0.5 only at its last epoch; freeze (89) and drop (88.5) never."""
  return tr.write_comparison(root, seed=seed, sgd_s=sgd_s, sgd_acc=sgd_acc)


def test_tables_and_report_show_time_to_accuracy(tmp_path):
  cmp_dir = write_comparison(tmp_path / "cmp")
  t = tables(load_runs([cmp_dir]))
  [row] = t["table1"]
  assert row["target"]["target_pct"] == 89.5
  assert row["strategies"]["sgd"]["T_target_min"] == pytest.approx(10.0)  # = its T
  assert row["strategies"]["drop"]["target_reached"] is False
  md = tables_markdown(t)
  assert "| Target (%) | SGD T to target (min) | Freezing T to target (min) |" in md
  assert "| 60.00 | 89.50 test | 10.00 | never | never |" in md
  # The comparison run's report rewrites comparison.md / .json with the column.
  report.report_comparison(cmp_dir)
  cmp = (cmp_dir / "comparison.md").read_text()
  assert "| sgd | 10.00 | 90.00 | 10.00 |" in cmp and "| drop | 4.00 | 88.50 | never |" in cmp
  assert json.loads((cmp_dir / "comparison.json").read_text())["target"]["target_pct"] == 89.5
  assert cmp in (cmp_dir / "report.md").read_text()


def test_over_seeds_counts_never(tmp_path):
  write_comparison(tmp_path / "s0", seed=0, sgd_s=600.0)
  write_comparison(tmp_path / "s1", seed=1, sgd_s=660.0)
  t = tables(load_runs([tmp_path / "s0", tmp_path / "s1"]))
  [agg] = t["table1_seeds"]
  sgd, drop = agg["stats"]["sgd"]["T_target_min"], agg["stats"]["drop"]["T_target_min"]
  assert sgd["mean"] == pytest.approx(10.5) and sgd["never"] == 0 and sgd["n"] == 2
  assert drop["n"] == 0 and drop["never"] == 2
  md = tables_markdown(t)
  assert "| 10.50 ± 0.71 | never | never |" in md
