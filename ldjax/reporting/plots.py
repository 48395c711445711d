"""The report's figures, after Figs. 1, 3, 5 and 6 of the paper.

  aapd.png          Fig. 1: AAPD (Eq. 1) per stage per epoch, one panel per network.
  scores.png        Fig. 3: score P (Eq. 2) per stage per epoch, one panel per run, drops marked.
  accuracy_time.png Fig. 5: test accuracy per epoch per strategy (validation accuracy, with
                    the final test accuracy as a star, for runs with --val-size), and time
                    per epoch split into training, feature extraction + storing, and
                    compilation; for one seed, the time-to-accuracy target of
                    comparison.md (dotted) and the epoch each strategy reached it (a
                    triangle over its time bar).
  params_macs.png   Fig. 6: forward parameters and forward MMACs per epoch per strategy.

Figures are drawn on matplotlib's Agg canvas through `Figure` objects, never
pyplot, so no global backend or figure state is touched (a report can be
written from inside a training process). Stage colours run from purple (input)
to red-orange (output), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator

from ldjax.reporting.comparison import (SPLIT_NAMES, TARGET_POINTS, accuracy_field,
                                       accuracy_target, epoch_train_time_s, first_reaching)
from ldjax.reporting.runs import Run
from ldjax.strategy import NAMES, display_name, rank

# The paper's Fig. 5/6 colours: SGD red, Freezing blue, Dropping green. Curves often
# coincide (Freezing has SGD's forward pass, and often Dropping's accuracy), so SGD is
# wide and pale underneath and Freezing dashed on top: every curve stays visible.
STRATEGY_STYLE = {
    "sgd": dict(color="tab:red", marker="o", ls="-", lw=3.0, alpha=0.55, ms=6, zorder=2),
    "freeze": dict(color="tab:blue", marker="s", ls="--", lw=1.8, ms=4, zorder=4),
    "drop": dict(color="tab:green", marker="^", ls="-", lw=1.8, ms=5, zorder=3),
}
OTHER_COLOURS = ("tab:purple", "tab:brown", "tab:gray", "tab:olive")
# plasma stops at 0.85: its last stretch is a pale yellow that vanishes on white.
STAGE_CMAP, STAGE_CMAP_END = matplotlib.colormaps["plasma"], 0.85
MAX_LEGEND_STAGES = 12  # beyond this a colourbar reads better than a legend
MAX_PANELS = 6
DPI = 110


def strategy_style(strategy: str, i: int = 0) -> dict:
  return dict(STRATEGY_STYLE.get(strategy) or
              dict(color=OTHER_COLOURS[i % len(OTHER_COLOURS)], marker="D", ls="-.", lw=1.8, ms=4))


def stage_colours(n: int) -> list:
  return [STAGE_CMAP(STAGE_CMAP_END * i / max(n - 1, 1)) for i in range(n)]


def stage_series(run: Run, key: str = "P") -> dict[str, np.ndarray]:
  """{stage: value per epoch} of scores[key] ("P", "P_std" or "aapd"), input to output.

  Each epoch scores only the stages still in the head, so values are matched by
  stage name, not position; an epoch a stage was not scored in (it was dropped) is NaN.
  """
  order = run.stage_names
  values: dict[str, np.ndarray] = {}
  for i, m in enumerate(run.metrics):
    scores = m.get("scores") or {}
    for name, v in zip(scores.get("stages", []), scores.get(key) or []):
      if name not in order:
        order.append(name)  # config.json without stage_names: keep the order first seen
      values.setdefault(name, np.full(len(run.metrics), np.nan))[i] = v
  return {name: values[name] for name in order if name in values}


def _title(run: Run, with_strategy: bool = True) -> str:
  what = f", {display_name(run.strategy)}" if with_strategy else ""
  return f"{run.network} on {run.dataset} (width {run.width}, seed {run.seed}{what})"


def _integer_epochs(ax) -> None:
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


def _stage_panel(fig: Figure, ax, run: Run, key: str, ylabel: str, log: bool) -> bool:
  """Curves of scores[key] per stage; False if the run has no such scores."""
  series = stage_series(run, key)
  if not series:
    return False
  x = run.epochs
  warmup = run.config.get("warmup") or 0
  if warmup:
    ax.axvspan(x.min() - 0.5, x.min() - 0.5 + warmup, color="0.92", zorder=0)
  colours = stage_colours(len(series))
  for (name, y), c in zip(series.items(), colours):
    y = np.where(y > 0, y, np.nan) if log else y
    ax.plot(x, y, color=c, marker="o", ms=3.5, lw=1.6, label=name)
  if log:
    ax.set_yscale("log")
  verb = "freeze" if run.strategy == "freeze" else "drop"
  for j, ev in enumerate(run.summary.get("drop_events", [])):
    # Decided at the end of epoch e; the head loses the stages from epoch e + 1.
    ax.axvline(ev["epoch"] + 0.5, color="black", ls="--", lw=1.3)
    # Staggered, so labels of drops in consecutive epochs do not overprint; to the left of
    # the line near the right edge, so the label is not cut off.
    right = ev["epoch"] + 0.5 > x.max() - 1.5
    ax.text(ev["epoch"] + (0.45 if right else 0.55), 0.98 - 0.1 * (j % 3),
            f"{verb} {ev['stages_dropped']} (cut {ev['cut']})", transform=ax.get_xaxis_transform(),
            va="top", ha="right" if right else "left", fontsize=7.5,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
  extra = [Patch(color="0.92", label=f"warm-up ({warmup} ep.)")] if warmup else []
  if run.summary.get("drop_events"):
    extra.append(Line2D([], [], color="black", ls="--", label=f"{verb} (after epoch)"))
  if len(series) <= MAX_LEGEND_STAGES:
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
              title="stage (input → output)", title_fontsize=8)
  else:
    sm = matplotlib.cm.ScalarMappable(
        cmap=STAGE_CMAP, norm=matplotlib.colors.Normalize(0, (len(series) - 1) / STAGE_CMAP_END))
    fig.colorbar(sm, ax=ax, label="stage index (input → output)")
    if extra:
      ax.legend(handles=extra, fontsize=8, loc="best")
  ax.set_ylabel(ylabel)
  ax.set_title(_title(run), fontsize=10)
  _integer_epochs(ax)
  return True


def stage_figure(runs: Sequence[Run], path: Path, key: str, ylabel: str, suptitle: str,
                 log: bool = False) -> Path | None:
  """One panel per run (at most MAX_PANELS) of scores[key] per stage per epoch."""
  runs = [r for r in runs if stage_series(r, key)][:MAX_PANELS]
  if not runs:
    return None
  ncols = min(len(runs), 2)
  nrows = -(-len(runs) // ncols)
  fig = Figure(figsize=(7.8 * ncols, 4.4 * nrows), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, run in zip(axes, runs):
    _stage_panel(fig, ax, run, key, ylabel, log)
  for ax in axes[len(runs):]:
    ax.set_visible(False)
  fig.suptitle(suptitle)
  fig.savefig(path, dpi=DPI)
  return path


def _mean_over_seeds(runs: Sequence[Run], fn: Callable[[dict], float]):
  """(epochs, mean, std) of fn per epoch over the runs, matched by epoch number;
  epochs where fn is None (test metrics that --eval-every skipped) are left out."""
  by_epoch: dict[int, list[float]] = {}
  for r in runs:
    for m in r.metrics:
      value = fn(m)
      if value is not None:
        by_epoch.setdefault(m["epoch"], []).append(float(value))
  epochs = np.array(sorted(by_epoch))
  vals = [by_epoch[e] for e in epochs]
  return (epochs, np.array([np.mean(v) for v in vals]),
          np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]))


def _comparisons(runs: Sequence[Run]) -> list[tuple[str, dict[str, list[Run]]]]:
  """(title, {strategy: runs over seeds}) per (network, dataset, width), at most MAX_PANELS."""
  groups: dict[tuple, dict[str, list[Run]]] = {}
  for r in runs:
    groups.setdefault(r.group, {}).setdefault(r.strategy, []).append(r)
  out = []
  for (network, dataset, width), by_s in list(groups.items())[:MAX_PANELS]:
    seeds = max(len(v) for v in by_s.values())
    title = f"{network} on {dataset}, width {width}" + (f", mean of {seeds} seeds" if seeds > 1
                                                         else "")
    out.append((title, dict(sorted(by_s.items(), key=lambda kv: rank(kv[0])))))
  return out


def _group_rows(groups: list, height: float, suptitle: str) -> tuple[Figure, list]:
  """A figure with one row of two panels per group, the group's name above its row."""
  fig = Figure(figsize=(14, height * len(groups)), layout="constrained")
  subfigs = fig.subfigures(len(groups), 1, squeeze=False).ravel()
  rows = []
  for sub, (title, _) in zip(subfigs, groups):
    sub.suptitle(title, fontsize=11)
    rows.append(sub.subplots(1, 2))
  fig.suptitle(suptitle, fontsize=13, fontweight="bold")
  return fig, rows


# Stacked parts of an epoch's time T: (metrics key, legend, face alpha, hatch).
TIME_PARTS = (("train_s", "training", 1.0, None),
              ("extract_store_s", "feature extraction + storing", 0.3, "////"),
              ("compile_s", "XLA compilation", 0.12, "...."))


TARGET_LABEL = f"SGD's final - {TARGET_POINTS} pt"


def _accuracy_field(by_strategy: dict[str, list[Run]]) -> str:
  """"val_accuracy" when every run of the group has a validation accuracy, else the test's."""
  fields = {accuracy_field(r.metrics) for srs in by_strategy.values() for r in srs}
  return "val_accuracy" if fields == {"val_accuracy"} else "test_accuracy"


def _time_to_target_mark(ax_a, ax_t, runs: Sequence[Run], sgd_runs: Sequence[Run] | None,
                         field: str, colour, offset: float) -> None:
  """The time-to-accuracy target (SGD's final accuracy minus TARGET_POINTS, as in
  comparison.md) as a dotted line on the accuracy panel, once per group; on the time
  panel, a triangle just above the bar of the epoch where this strategy first reached it (one seed:
  the mean over seeds can reach it where no single run did, so nothing is marked)."""
  if not sgd_runs or len(sgd_runs) != 1 or len(runs) != 1:
    return
  target = accuracy_target(sgd_runs[0].metrics)
  if target is None or target["field"] != field:
    return
  if not any(line.get_label() == TARGET_LABEL for line in ax_a.lines):
    ax_a.axhline(target["target_pct"], color="0.3", ls=":", lw=1.2, label=TARGET_LABEL,
                 zorder=1)
  first = first_reaching(runs[0].metrics, target["target_pct"], field)
  if first is not None:   # just above that epoch's stacked time bar
    m = runs[0].metrics[first]
    ax_t.plot([m["epoch"] + offset], [epoch_train_time_s(m) * 1.05], marker="v", ms=8,
              color=colour, markeredgecolor="black", markeredgewidth=0.6, ls="none", zorder=5)


def accuracy_time_figure(runs: Sequence[Run], path: Path) -> Path:
  """Fig. 5, written to `path` (see `accuracy_time_plot`)."""
  accuracy_time_plot(runs).savefig(path, dpi=DPI)
  return path


def accuracy_time_plot(runs: Sequence[Run]) -> Figure:
  """Fig. 5: test (or validation) accuracy per epoch (left), time per epoch as stacked
  bars (right), one row per (network, dataset, width)."""
  groups = _comparisons(runs)
  fig, rows = _group_rows(groups, 4.8, "Accuracy and time per epoch (Fig. 5)")
  for (title, by_s), (ax_a, ax_t) in zip(groups, rows):
    width = 0.8 / len(by_s)
    field = _accuracy_field(by_s)
    for i, (strategy, srs) in enumerate(by_s.items()):
      style = strategy_style(strategy, i)
      colour = matplotlib.colors.to_rgb(style["color"])
      x, acc, acc_std = _mean_over_seeds(srs, lambda m: m.get(field))
      ax_a.plot(x, acc, label=display_name(strategy), **style)
      if len(srs) > 1:
        ax_a.fill_between(x, acc - acc_std, acc + acc_std, color=colour, alpha=0.12, lw=0)
      if field != "test_accuracy":   # the test accuracy, evaluated at the end: a star
        xt, test, _ = _mean_over_seeds(srs, lambda m: m.get("test_accuracy"))
        if len(xt):
          ax_a.plot(xt[-1:], test[-1:], marker="*", ms=13, ls="none", color=style["color"],
                    markeredgecolor="black", markeredgewidth=0.6, zorder=5)
      _time_to_target_mark(ax_a, ax_t, srs, by_s.get("sgd"), field, style["color"],
                           offset=(i - (len(by_s) - 1) / 2) * width)
      bottom = None
      for key, _, alpha, hatch in TIME_PARTS:
        xt, y, _ = _mean_over_seeds(srs, lambda m: m.get("time", {}).get(key, 0.0))
        bottom = np.zeros(len(xt)) if bottom is None else bottom
        ax_t.bar(xt + (i - (len(by_s) - 1) / 2) * width, y, width, bottom=bottom,
                 facecolor=(*colour, alpha), edgecolor=colour, hatch=hatch, lw=0.6)
        bottom += y
    split = SPLIT_NAMES[field]
    ax_a.set_ylabel(f"{split} accuracy (%)")
    ax_a.set_title(f"{split} accuracy" + ("" if field == "test_accuracy" else
                                          " (★: test accuracy, last epoch)"), fontsize=10)
    ax_a.legend(fontsize=9, title="strategy" + (" (band: ±1 std)" if "mean" in title else ""))
    _integer_epochs(ax_a)
    handles = [Patch(color=strategy_style(s, i)["color"], label=display_name(s))
               for i, s in enumerate(by_s)]
    handles += [Patch(facecolor=(0.3, 0.3, 0.3, a), edgecolor="0.3", hatch=h, label=label)
                for _, label, a, h in TIME_PARTS]
    if any(line.get_marker() == "v" for line in ax_t.lines):
      handles.append(Line2D([], [], marker="v", ms=8, color="0.5", markeredgecolor="black",
                            ls="none", label="first epoch at the target"))
      ax_t.set_ylim(top=ax_t.get_ylim()[1] * 1.1)
    ax_t.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax_t.set_ylabel("time per epoch (s)")
    ax_t.set_title("time per epoch (test evaluation excluded)", fontsize=10)
    _integer_epochs(ax_t)
  return fig


def params_macs_figure(runs: Sequence[Run], path: Path) -> Path:
  """Fig. 6: forward parameters (left) and forward MMACs per example (right) per epoch."""
  groups = _comparisons(runs)
  fig, rows = _group_rows(groups, 4.6, "Forward parameters and MACs per epoch (Fig. 6)")
  # (metrics key, scale, y label, title, tick formatter): parameters as 35k / 1.2M; MACs
  # already in the paper's MMACs, where an SI prefix would read as a second multiplier.
  panels = (("forward_params", 1.0, "forward parameters", "parameters in the forward pass",
             EngFormatter(sep="")),
            ("forward_macs", 1e-6, "forward MMACs per example", "forward MMACs", None))
  for (title, by_s), row in zip(groups, rows):
    for ax, (key, scale, ylabel, what, formatter) in zip(row, panels):
      for i, (strategy, srs) in enumerate(by_s.items()):
        x, y, _ = _mean_over_seeds(srs, lambda m: m[key] * scale)
        # Steps: the value holds for the whole epoch, and changes from one to the next.
        ax.plot(x, y, label=display_name(strategy), drawstyle="steps-mid",
                **strategy_style(strategy, i))
      # From zero, so a reduction reads at its true size.
      ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.08)
      if formatter is not None:
        ax.yaxis.set_major_formatter(formatter)
      ax.set_ylabel(ylabel)
      ax.set_title(what, fontsize=10)
      ax.legend(fontsize=9, loc="lower left")
      _integer_epochs(ax)
  fig.savefig(path, dpi=DPI)
  return path


def _pick(runs: Sequence[Run], prefer: Sequence[str]) -> list[Run]:
  """One run per (network, dataset, width): the first strategy in `prefer`, lowest seed."""
  best: dict[tuple, Run] = {}
  order = {s: i for i, s in enumerate(prefer)}
  for r in sorted(runs, key=lambda r: (order.get(r.strategy, len(order)), str(r.seed))):
    best.setdefault(r.group, r)
  return list(best.values())


def write_figures(runs: Sequence[Run], out_dir: Path) -> list[tuple[Path, str]]:
  """Draws every figure the runs have data for; (path, caption) of each."""
  out = []
  # SGD scores every stage every epoch, so its AAPD curves run the whole length.
  p = stage_figure(_pick(runs, NAMES), out_dir / "aapd.png", "aapd",
                   "AAPD, Eq. 1 (log scale)",
                   "Average absolute partial derivative per stage (Fig. 1)", log=True)
  if p:
    out.append((p, "AAPD (Eq. 1) per stage per epoch, one panel per network: purple = stages "
                   "near the input, orange = near the output; grey band = warm-up."))
  p = stage_figure(_pick(runs, ("drop", "freeze", "sgd")), out_dir / "scores.png", "P",
                   "score P, Eq. 2 (1 = stopped learning)", "Layer scores P per stage (Fig. 3)")
  if p:
    out.append((p, "Scores P (Eq. 2) per stage per epoch, one panel per network; dashed lines "
                   "mark a drop decided at the end of that epoch (stages leave the head the "
                   "next epoch), after which the dropped stages are no longer scored."))
  out.append((accuracy_time_figure(runs, out_dir / "accuracy_time.png"),
              "Test (or, with --val-size, validation) accuracy per epoch per strategy (left) "
              "and time per epoch (right) split into training, feature extraction + storing, "
              "and compilation (Fig. 5). With one seed, the dotted line is the "
              "time-to-accuracy target of the comparison table and a triangle marks the "
              "epoch each strategy first reached it."))
  out.append((params_macs_figure(runs, out_dir / "params_macs.png"),
              "Parameters used by the forward pass and forward MMACs per example, per epoch "
              "per strategy (Fig. 6); Freezing keeps the whole forward pass, so it coincides "
              "with SGD."))
  return out
