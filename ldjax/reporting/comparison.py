"""The paper's Table 1 for one comparison: T, A and dT (Eq. 5) against SGD, and MAC reductions.

`comparison(summaries)` turns the summaries of runs made side by side (one per
strategy, same initial weights) into rows; `comparison_markdown` prints them.
The reduction of forward and of training MACs bounds the time saved. Given
the runs' metrics.jsonl records too, each row also has its time to accuracy:
the T at which the strategy first reached SGD's final accuracy minus
`TARGET_POINTS` (`time_to_accuracy`, `accuracy_target`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Time to accuracy: how far below SGD's final accuracy (percentage points) the target is.
TARGET_POINTS = 0.5
# Accuracies and the target are floats in percent; this much below still counts as reached.
TARGET_TOLERANCE = 1e-9
SPLIT_NAMES = {"val_accuracy": "validation", "test_accuracy": "test"}


def epoch_train_time_s(record: dict) -> float:
  """One epoch's share of T: train steps, feature extraction + storing, compilation.

  The sum `ldjax.train.fit` adds to summary.json's `train_time_s` (test and
  validation evaluation excluded), so the sum over a run's records is its T.
  """
  t = record.get("time") or {}
  return t.get("train_s", 0.0) + t.get("extract_store_s", 0.0) + t.get("compile_s", 0.0)


def time_to_accuracy(records: Sequence[dict], target: float,
                     field: str = "test_accuracy") -> float | None:
  """T (seconds) at the end of the first epoch whose `field` reached `target`; None if never.

  `records`: a run's metrics.jsonl lines in epoch order; `field` is in percent,
  None (or absent) on epochs not evaluated, which are skipped but whose time
  counts. The result is at most the run's T, and equals it when the target is
  first reached at the last epoch.
  """
  first = first_reaching(records, target, field)
  return None if first is None else sum(epoch_train_time_s(m) for m in records[:first + 1])


def first_reaching(records: Sequence[dict], target: float,
                   field: str = "test_accuracy") -> int | None:
  """The index of the first record whose `field` reached `target` (within
  TARGET_TOLERANCE); None if none did (records without `field` are skipped)."""
  for i, m in enumerate(records):
    acc = m.get(field)
    if acc is not None and acc >= target - TARGET_TOLERANCE:
      return i
  return None


def final_accuracy(records: Sequence[dict], field: str) -> float | None:
  """The last non-null `field` of the records (a complete run evaluates its last epoch)."""
  return next((m[field] for m in reversed(records) if m.get(field) is not None), None)


def accuracy_field(records: Sequence[dict]) -> str:
  """"val_accuracy" if the last evaluated epoch has a validation accuracy, else "test_accuracy"."""
  last = next((m for m in reversed(records)
               if m.get("val_accuracy") is not None or m.get("test_accuracy") is not None), {})
  return "val_accuracy" if last.get("val_accuracy") is not None else "test_accuracy"


def accuracy_target(sgd_records: Sequence[dict], points: float = TARGET_POINTS) -> dict | None:
  """The time-to-accuracy target from SGD's records: {field, sgd_final_pct, target_pct}.

  The field is validation accuracy when SGD's run has one at its end, else
  test accuracy; None if SGD has neither.
  """
  field = accuracy_field(sgd_records)
  final = final_accuracy(sgd_records, field)
  if final is None:
    return None
  return {"field": field, "sgd_final_pct": final, "target_pct": final - points,
          "points": points}


def _target(summaries: dict, records: dict | None) -> tuple[dict | None, str | None]:
  """(the target, None), or (None, why there is none)."""
  if records is None:
    return None, "no per-epoch records given"
  if "sgd" not in summaries or not records.get("sgd"):
    return None, "no SGD run among the strategies to set the target"
  target = accuracy_target(records["sgd"])
  return (target, None) if target else (None, "the SGD run has no evaluated epoch")


def _time_to_target(records: Sequence[dict], target: dict) -> dict:
  """A row's time-to-accuracy fields (and its final validation accuracy when that is the field)."""
  seconds = time_to_accuracy(records, target["target_pct"], target["field"])
  row = {"T_target_s": seconds, "T_target_min": None if seconds is None else seconds / 60.0,
         "target_reached": seconds is not None}
  if target["field"] == "val_accuracy":
    row["A_val_pct"] = final_accuracy(records, "val_accuracy")
  return row


def reduction(base: float | None, value: float | None) -> float | None:
  """Eq. 5's form: the percentage of `base` saved (None without a base or a value)."""
  return None if not base or value is None else 100.0 * (base - value) / base


def comparison(summaries: dict[str, dict], *, network: str, dataset: str,
               records: dict[str, Sequence[dict]] | None = None) -> dict:
  """Table 1 form: per strategy T (min), A (%), dT (%) against sgd, MAC reductions.

  With `records` ({strategy: metrics.jsonl lines}), also each strategy's time
  to accuracy (`T_target_s`, `T_target_min`, None if never; `target_reached`)
  against `target` (see `accuracy_target`); without an SGD run, or without
  records, `target` is None and `target_note` says why.
  """
  base = summaries.get("sgd")
  target, note = _target(summaries, records)
  rows = []
  for strategy, s in summaries.items():
    row = {"strategy": strategy, "T_min": s["train_time_s"] / 60.0,
           "T_cpu_min": s.get("train_cpu_s", float("nan")) / 60.0,
           "A_pct": s["test_accuracy"], "forward_macs": s["forward_macs_total"],
           "train_macs": s["train_macs_total"], "drop_events": len(s["drop_events"])}
    if base is not None and strategy != "sgd":
      row["dT_pct"] = reduction(base["train_time_s"], s["train_time_s"])
      row["dT_cpu_pct"] = reduction(base.get("train_cpu_s"), s.get("train_cpu_s"))
      row["dForward_pct"] = reduction(base["forward_macs_total"], s["forward_macs_total"])
      row["dTrain_pct"] = reduction(base["train_macs_total"], s["train_macs_total"])
      row["dA_points"] = (None if s["test_accuracy"] is None or base["test_accuracy"] is None
                          else s["test_accuracy"] - base["test_accuracy"])
    if target is not None:
      row |= _time_to_target(records.get(strategy) or [], target)
    rows.append(row)
  return {"network": network, "dataset": dataset, "rows": rows, "target": target,
          "target_note": note}


def cell(v, spec: str = ".2f") -> str:
  """A table cell: "-" for a missing (None or NaN) value."""
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def target_cell(row: dict) -> str:
  """A time-to-accuracy cell: minutes, "never" (not reached), "-" (no target)."""
  if "target_reached" not in row:
    return "-"
  return format(row["T_target_min"], ".2f") if row["target_reached"] else "never"


def target_label(target: dict) -> str:
  """The time-to-accuracy column's header, e.g. "T to 86.10% test (min)"."""
  return f"T to {target['target_pct']:.2f}% {SPLIT_NAMES[target['field']]} (min)"


def target_caption(target: dict | None, note: str | None = None) -> str:
  """What the time-to-accuracy column means, or why there is none."""
  if target is None:
    return f"No time to accuracy: {note or 'no target'}."
  split = SPLIT_NAMES[target["field"]]
  return (f"{target_label(target)}: T at the end of the first epoch whose {split} accuracy "
          f"reached SGD's final {split} accuracy ({target['sgd_final_pct']:.2f}%) minus "
          f"{target['points']:g} points (epochs not evaluated are skipped); never: not reached.")


def _columns(target: dict | None) -> list[tuple[str, str, object]]:
  """(header, alignment, cell of a row) of each column of the comparison table."""
  tta = [] if target is None else [(target_label(target), "---:", target_cell)]
  if target is not None and target["field"] == "val_accuracy":
    tta.insert(0, ("A val (%)", "---:", lambda r: cell(r.get("A_val_pct"))))
  return [("Strategy", "---", lambda r: r["strategy"]),
          ("T (min)", "---:", lambda r: f"{r['T_min']:.2f}"),
          ("A (%)", "---:", lambda r: cell(r["A_pct"])), *tta,
          ("dT (%)", "---:", lambda r: cell(r.get("dT_pct"))),
          ("dA (points)", "---:", lambda r: cell(r.get("dA_points"), "+.2f")),
          ("CPU T (min)", "---:", lambda r: f"{r['T_cpu_min']:.2f}"),
          ("dT CPU (%)", "---:", lambda r: cell(r.get("dT_cpu_pct"))),
          ("forward MACs", "---:", lambda r: f"{r['forward_macs']:.3e}"),
          ("dFwd (%)", "---:", lambda r: cell(r.get("dForward_pct"))),
          ("train MACs", "---:", lambda r: f"{r['train_macs']:.3e}"),
          ("dTrain (%)", "---:", lambda r: cell(r.get("dTrain_pct"))),
          ("drops", "---:", lambda r: str(r["drop_events"]))]


def comparison_markdown(table: dict) -> str:
  """The comparison table in markdown, with its caption."""
  target = table.get("target")
  cols = _columns(target)
  lines = [f"Network: {table['network']}  Dataset: {table['dataset']}", "",
           "| " + " | ".join(h for h, _, _ in cols) + " |",
           "|" + "|".join(a for _, a, _ in cols) + "|"]
  lines += ["| " + " | ".join(f(r) for _, _, f in cols) + " |" for r in table["rows"]]
  lines += ["", "T: training time (train steps, feature extraction and storage, compilation; "
            "not test evaluation). A: final test accuracy. dT = (T_sgd - T) / T_sgd (Eq. 5). "
            "CPU T: the process's CPU seconds over the same work, which other jobs on the "
            "machine barely disturb. MACs: multiply-accumulates over the whole run (per example "
            "per epoch, times the training set size); training MACs count the backward pass of "
            "differentiated stages as 2x their forward.", "",
            target_caption(target, table.get("target_note"))]
  return "\n".join(lines) + "\n"
