"""The paper's Table 1 for one comparison: T, A and dT (Eq. 5) against SGD, and MAC reductions.

`comparison(summaries)` turns the summaries of runs made side by side (one per
strategy, same initial weights) into rows; `comparison_markdown` prints them.
The reduction of forward and of training MACs bounds the time saved.
"""

from __future__ import annotations

import math


def reduction(base: float | None, value: float | None) -> float | None:
  """Eq. 5's form: the percentage of `base` saved (None without a base or a value)."""
  return None if not base or value is None else 100.0 * (base - value) / base


def comparison(summaries: dict[str, dict], *, network: str, dataset: str) -> dict:
  """Table 1 form: per strategy T (min), A (%), dT (%) against sgd, MAC reductions."""
  base = summaries.get("sgd")
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
    rows.append(row)
  return {"network": network, "dataset": dataset, "rows": rows}


def cell(v, spec: str = ".2f") -> str:
  """A table cell: "-" for a missing (None or NaN) value."""
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def comparison_markdown(table: dict) -> str:
  lines = [f"Network: {table['network']}  Dataset: {table['dataset']}", "",
           "| Strategy | T (min) | A (%) | dT (%) | dA (points) | CPU T (min) | dT CPU (%) "
           "| forward MACs | dFwd (%) | train MACs | dTrain (%) | drops |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in table["rows"]:
    lines.append(
        f"| {r['strategy']} | {r['T_min']:.2f} | {cell(r['A_pct'], '.2f')} | "
        f"{cell(r.get('dT_pct'), '.2f')} | {cell(r.get('dA_points'), '+.2f')} | "
        f"{r['T_cpu_min']:.2f} | {cell(r.get('dT_cpu_pct'), '.2f')} | "
        f"{r['forward_macs']:.3e} | {cell(r.get('dForward_pct'), '.2f')} | "
        f"{r['train_macs']:.3e} | {cell(r.get('dTrain_pct'), '.2f')} | {r['drop_events']} |")
  lines += ["", "T: training time (train steps, feature extraction and storage, compilation; "
            "not test evaluation). dT = (T_sgd - T) / T_sgd (Eq. 5). CPU T: the process's CPU "
            "seconds over the same work, which other jobs on the machine barely disturb. "
            "MACs: multiply-accumulates "
            "over the whole run (per example per epoch, times the training set size); training MACs count "
            "the backward pass of differentiated stages as 2x their forward."]
  return "\n".join(lines) + "\n"
