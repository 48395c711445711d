"""Accuracy-versus-cost fronts of budgeted runs (`--budget`): the fair comparison.

Every run trained to a compute budget B (reference epochs, `ldjax.train.budget`)
is a point: its final validation and test accuracy against the reference
cost it spent. Runs are grouped by their variant (the strategy, and a store
setting that differs from the default) and budget; seeds are averaged, their
spread shown. The table adds, per budget, each variant's test accuracy minus
SGD's on the same seed (paired), the comparison "No Train No Gain" asks for.

  python -m ldjax.report --fronts DIR [DIR ...] [--out OUT]

writes OUT/fronts.md, OUT/fronts.json and OUT/fronts.png.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ldjax.errors import UsageError
from ldjax.jsonio import write_json_atomic
from ldjax.reporting.runs import Run
from ldjax.strategy import display_name


def variant(run: Run) -> str:
  """The strategy, with the store settings that differ from the defaults."""
  c = run.config
  name = display_name(run.strategy)
  extra = []
  if c.get("crop_store", "views") != "views" and "crop" in str(c.get("augment")):
    extra.append(f"{c['crop_store']} crop")
  if c.get("crop_views") is not None and "crop" in str(c.get("augment")):
    extra.append(f"K={c['crop_views']}")
  if c.get("feature_dtype", "float32") != "float32" and run.strategy == "drop":
    extra.append(str(c["feature_dtype"]))
  if c.get("decision_rule", "paper") != "paper" and run.strategy != "sgd":
    extra.append(f"{c['decision_rule']} rule")
  # SGD spends a budget the same way under any table (whole-model steps only).
  if c.get("cost_table", "macs") != "macs" and run.strategy != "sgd":
    extra.append(f"{Path(str(c['cost_table'])).stem} costs")
  return name + (f" ({', '.join(extra)})" if extra else "")


def front_points(runs: list[Run]) -> dict[str, dict[float, list[dict]]]:
  """{variant: {budget: [one dict per seed]}} of the complete budgeted runs."""
  out: dict = defaultdict(lambda: defaultdict(list))
  for run in runs:
    b = run.summary.get("budget")
    if not run.complete or b is None:
      continue
    s = run.summary
    out[variant(run)][float(b["reference_epochs"])].append({
        "seed": run.seed, "test": s["test_accuracy"], "val": s.get("val_accuracy"),
        "spent": b["spent_reference_epochs"], "wall_s": s["train_time_s"],
        "cpu_s": s["train_cpu_s"], "epochs": s["epochs"],
        "drops": [e["cut"] for e in s.get("drop_events", [])], "path": str(run.path)})
  if not out:
    raise UsageError("no finished run trained to a --budget among the directories given")
  return {k: dict(v) for k, v in out.items()}


def _stats(values: list[float]) -> tuple[float, float, float, float]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not v.size:
    return (np.nan,) * 4
  return float(v.mean()), float(v.std()), float(v.min()), float(v.max())


def paired_gaps(points: dict, of: str, base: str = "SGD") -> dict[float, list[float]]:
  """{budget: [test accuracy of `of` minus `base`'s, per seed both have]}."""
  gaps = {}
  for b, rows in points.get(of, {}).items():
    ref = {r["seed"]: r["test"] for r in points.get(base, {}).get(b, [])}
    gaps[b] = [r["test"] - ref[r["seed"]] for r in rows if r["seed"] in ref]
  return gaps


def fronts_table(points: dict) -> str:
  lines = ["| variant | budget (ref. epochs) | seeds | test acc (%) | val acc (%) | "
           "paired test gap vs SGD (points, per seed) | epochs | wall T (s) | CPU T (s) | "
           "cuts |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
  for name in sorted(points, key=lambda n: (n != "SGD", n)):
    gaps = paired_gaps(points, name) if name != "SGD" else {}
    for b in sorted(points[name]):
      rows = points[name][b]
      t, v = _stats([r["test"] for r in rows]), _stats([r["val"] for r in rows])
      gap = ", ".join(f"{g:+.2f}" for g in gaps.get(b, [])) or "-"
      lines.append(
          f"| {name} | {b:g} | {len(rows)} | {t[0]:.2f} ± {t[1]:.2f} | {v[0]:.2f} ± {v[1]:.2f} "
          f"| {gap} | {np.mean([r['epochs'] for r in rows]):.1f} | "
          f"{np.mean([r['wall_s'] for r in rows]):.0f} | {np.mean([r['cpu_s'] for r in rows]):.0f}"
          f" | {'; '.join(','.join(map(str, r['drops'])) or '-' for r in rows)} |")
  return "\n".join(lines)


def fronts_figure(points: dict) -> Figure:
  """Validation and test accuracy against the budget spent, mean over seeds with their
  range."""
  fig = Figure(figsize=(10, 4), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  for ax, split, title in zip(axes, ("val", "test"), ("validation", "test")):
    for i, name in enumerate(sorted(points, key=lambda n: (n != "SGD", n))):
      budgets = sorted(points[name])
      x = [np.mean([r["spent"] for r in points[name][b]]) for b in budgets]
      s = [_stats([r[split] for r in points[name][b]]) for b in budgets]
      mean, lo, hi = (np.array([q[k] for q in s]) for k in (0, 2, 3))
      line, = ax.plot(x, mean, marker="o", label=name, color=f"C{i}")
      ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("reference cost spent (epochs of the whole model)")
    ax.set_title(f"{title} accuracy at equal budgets (seed range shaded)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy (%)")
  axes[1].legend(loc="lower right", fontsize="small")
  return fig


def write_fronts(runs: list[Run], out: Path) -> list[Path]:
  points = front_points(runs)
  out.mkdir(parents=True, exist_ok=True)
  table = fronts_table(points)
  md = out / "fronts.md"
  md.write_text("# Accuracy at equal compute budgets\n\n" + table + "\n\nBudget: reference "
                "epochs (one epoch of the whole model, costed by the run's cost table); the "
                "learning-rate schedule of every run ends with its budget. Paired gap: the "
                "variant's test accuracy minus SGD's at the same budget and seed.\n")
  write_json_atomic(out / "fronts.json", {k: {f"{b:g}": rows for b, rows in v.items()}
                                          for k, v in points.items()})
  fig = fronts_figure(points)
  fig.savefig(out / "fronts.png", dpi=120)
  return [md, out / "fronts.json", out / "fronts.png"]
