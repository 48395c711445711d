"""Reports of finished runs: the paper's tables and figures from run directories.

  python -m ldjax.report /tmp/cmp                    # a comparison (sgd/, freeze/, drop/)
  python -m ldjax.report /tmp/seed0 /tmp/seed1 --out /tmp/report

Reads only what `python -m ldjax.run` wrote (config.json, metrics.jsonl,
summary.json), so a report can be redone at any time without training. Runs are
grouped by (network, dataset, width, seed); for each group it gives Tables 1/2
(T, A, dT against SGD) and Table 3 (forward MACs of SGD against Dropping), and
over seeds of the same (network, dataset, width) the mean and standard
deviation. The figures (Figs. 1, 3, 5 and 6 of the paper) are drawn by
`ldjax.plots`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldjax.errors import UsageError

# Paper order and names of the strategies (Tables 1/2 columns, figure legends).
STRATEGY_ORDER = ("sgd", "freeze", "drop")
STRATEGY_NAMES = {"sgd": "SGD", "freeze": "Freezing", "drop": "Dropping"}
RUN_FILES = ("config.json", "metrics.jsonl")


def strategy_name(strategy: str) -> str:
  return STRATEGY_NAMES.get(strategy, strategy)


def strategy_rank(strategy: str) -> tuple[int, str]:
  """Sort key: the paper's order first, then anything else by name."""
  return (STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER),
          strategy)


@dataclass
class Run:
  """One strategy's run directory, as read back from disk.

  `summary` is summary.json, or, for a run still going or interrupted
  (`complete` False), the same fields worked out from the epochs written so far.
  The other fields are read from config.json (or the summary) when made.
  """
  path: Path
  config: dict
  metrics: list[dict]
  summary: dict
  complete: bool = True
  strategy: str = field(init=False)
  network: str = field(init=False)
  dataset: str = field(init=False)
  width: float | None = field(init=False)
  seed: int | None = field(init=False)

  def __post_init__(self):
    c, s = self.config, self.summary
    self.strategy = c.get("strategy") or s.get("strategy") or "?"
    # model_name tells VGG with BN ("vgg11_bn") from without ("vgg11"); Fig. 3 needs both.
    self.network = c.get("model_name") or s.get("model") or str(c.get("model"))
    self.dataset = s.get("dataset") or str(c.get("dataset"))
    self.width, self.seed = c.get("width"), c.get("seed")

  @property
  def stage_names(self) -> list[str]:
    return list(self.config.get("stage_names") or [])

  @property
  def group(self) -> tuple:
    """What seeds are averaged over: (network, dataset, width)."""
    return (self.network, self.dataset, self.width)

  @property
  def key(self) -> tuple:
    """What strategies are compared within: (network, dataset, width, seed)."""
    return (*self.group, self.seed)

  @property
  def epochs(self) -> np.ndarray:
    return np.array([m["epoch"] for m in self.metrics])


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _read_metrics(path: Path) -> list[dict]:
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  out = []
  for i, line in lines:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == lines[-1][0]:
        break  # a run killed while appending its last line: the epochs before it stand
      raise UsageError(f"{path}:{i}: not valid JSON ({e.msg})") from None
  return out


def _summary_from_metrics(config: dict, metrics: list[dict]) -> dict:
  """summary.json's fields from the epochs so far, the way `loop.fit` totals them."""
  n_train = config.get("num_train") or 0
  cut, events = 0, []
  for m in metrics:
    d = m.get("decision") or {}
    if d.get("drop") and d.get("new_cut") is not None:
      events.append({"epoch": m["epoch"], "stages_dropped": d["new_cut"] - cut,
                     "cut": d["new_cut"]})
      cut = d["new_cut"]
  times = [m.get("time", {}) for m in metrics]
  # The last evaluated epoch (--eval-every skips some; a complete run ends with one).
  last_eval = next((m for m in reversed(metrics) if m.get("test_accuracy") is not None), {})
  return {
      "strategy": config.get("strategy"), "model": config.get("model_name"),
      "dataset": config.get("dataset"), "epochs": len(metrics),
      "test_accuracy": last_eval.get("test_accuracy"), "test_loss": last_eval.get("test_loss"),
      "train_time_s": sum(t.get("train_s", 0.0) + t.get("extract_store_s", 0.0)
                          + t.get("compile_s", 0.0) for t in times),
      "compile_time_s": sum(t.get("compile_s", 0.0) for t in times),
      "drop_events": events, "final_cut": cut,
      "forward_macs_total": sum(m["forward_macs"] for m in metrics) * n_train,
      "train_macs_total": sum(m["train_macs"] for m in metrics) * n_train,
  }


def load_run(path: str | Path) -> Run:
  """Reads one run directory; UsageError if it is not one."""
  path = Path(path)
  if not path.is_dir():
    raise UsageError(f"{str(path)!r} is not a directory; pass a run directory written by "
                     "python -m ldjax.run")
  missing = [f for f in RUN_FILES if not (path / f).is_file()]
  if missing:
    raise UsageError(f"{str(path)!r} is not a run directory (no {' or '.join(missing)}); pass "
                     "one written by python -m ldjax.run, or its comparison directory")
  config = _read_json(path / "config.json")
  metrics = _read_metrics(path / "metrics.jsonl")
  if not metrics:
    raise UsageError(f"{str(path)!r} has no finished epoch in metrics.jsonl yet")
  summary_path = path / "summary.json"
  if summary_path.is_file():
    return Run(path, config, metrics, _read_json(summary_path))
  return Run(path, config, metrics, _summary_from_metrics(config, metrics), complete=False)


def _run_dirs(path: Path) -> list[Path]:
  """A run directory itself, or a comparison directory's strategy sub-directories."""
  if any((path / f).is_file() for f in RUN_FILES) or not path.is_dir():
    return [path]  # load_run says what is wrong with it, if anything
  subs = [d for d in path.iterdir() if d.is_dir() and (d / "config.json").is_file()]
  return sorted(subs, key=lambda d: strategy_rank(d.name)) or [path]


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
  """Runs of each path (run or comparison directory), each directory once."""
  runs, seen = [], set()
  for p in paths:
    for d in _run_dirs(Path(p)):
      if d.resolve() not in seen:
        seen.add(d.resolve())
        runs.append(load_run(d))
  if not runs:
    raise UsageError("no run directories given")
  return runs


def default_out(path: str | Path) -> Path:
  """Where the report of `path` goes: its comparison directory if it is in one."""
  path = Path(path)
  if not (path / "config.json").is_file():
    return path  # a comparison directory
  return path.parent if (path.parent / "comparison.json").is_file() else path


# ---- Tables ----------------------------------------------------------------------------------

def _reduction(base, value) -> float | None:
  """Eq. 5's form: percentage of `base` saved."""
  return None if not base or value is None else 100.0 * (base - value) / base


def _stats(values: Iterable) -> dict | None:
  """Mean and sample standard deviation (ddof=1) of the values that are not None."""
  v = [float(x) for x in values if x is not None]
  if not v:
    return None
  return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
          "n": len(v)}


def _by_key(runs: Sequence[Run]) -> dict[tuple, dict[str, Run]]:
  groups: dict[tuple, dict[str, Run]] = {}
  for r in runs:
    by_strategy = groups.setdefault(r.key, {})
    if r.strategy in by_strategy:
      raise UsageError(f"two {r.strategy} runs of {r.network} on {r.dataset} (width {r.width}, "
                       f"seed {r.seed}): {by_strategy[r.strategy].path} and {r.path}; "
                       "report them separately")
    by_strategy[r.strategy] = r
  return {k: dict(sorted(v.items(), key=lambda kv: strategy_rank(kv[0])))
          for k, v in groups.items()}


TABLE3_FIELDS = ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch", "dForward_epoch_pct",
                 "sgd_forward_macs_total", "drop_forward_macs_total", "dForward_pct",
                 "sgd_train_macs_total", "drop_train_macs_total", "dTrain_pct", "dT_pct")


def _ids(key: tuple) -> dict:
  return dict(zip(("network", "dataset", "width", "seed"), key))


def tables(runs: Sequence[Run]) -> dict:
  """Tables 1/2 and 3 per (network, dataset, width, seed), and over seeds.

  table1: per group {strategy: compare.comparison's row (T_min, A_pct, dT_pct, ...)};
  table3: per group with both sgd and drop, forward MACs per example per epoch
  (mean over epochs) and over the run, their reduction, the reduction of
  training MACs (forward + backward, what bounds the time saved) and the
  measured dT. The *_seeds tables give {mean, std, n} over the seeds of a
  (network, dataset, width) that has more than one; dT is taken per seed
  against that seed's SGD run, then averaged.
  """
  from ldjax.compare import comparison  # here, not on top: compare imports this module

  groups = _by_key(runs)
  strategies = sorted({r.strategy for r in runs}, key=strategy_rank)
  t1, t3, comparisons = [], [], []
  for key, by_s in groups.items():
    table = comparison({s: r.summary for s, r in by_s.items()}, network=key[0], dataset=key[1])
    table["width"], table["seed"] = key[2], key[3]
    comparisons.append(table)
    rows = {row["strategy"]: row for row in table["rows"]}
    t1.append(_ids(key) | {"strategies": rows})
    if "sgd" in rows and "drop" in rows:
      per_epoch = {s: float(np.mean([m["forward_macs"] for m in by_s[s].metrics])) / 1e6
                   for s in ("sgd", "drop")}
      sgd, drop = rows["sgd"], rows["drop"]
      t3.append(_ids(key) | {
          "sgd_forward_mmacs_epoch": per_epoch["sgd"],
          "drop_forward_mmacs_epoch": per_epoch["drop"],
          "dForward_epoch_pct": _reduction(per_epoch["sgd"], per_epoch["drop"]),
          "sgd_forward_macs_total": sgd["forward_macs"],
          "drop_forward_macs_total": drop["forward_macs"], "dForward_pct": drop["dForward_pct"],
          "sgd_train_macs_total": sgd["train_macs"], "drop_train_macs_total": drop["train_macs"],
          "dTrain_pct": drop["dTrain_pct"], "dT_pct": drop["dT_pct"]})
  return {"strategies": strategies, "table1": t1, "table3": t3,
          "table1_seeds": _over_seeds(t1, lambda row: {
              s: {f: _stats(r["strategies"].get(s, {}).get(f) for r in row)
                  for f in ("T_min", "A_pct", "dT_pct")} for s in strategies}),
          "table3_seeds": _over_seeds(t3, lambda row: {
              f: _stats(r[f] for r in row) for f in TABLE3_FIELDS}),
          "comparisons": comparisons}


def _over_seeds(rows: list[dict], stats: Callable[[list[dict]], dict]) -> list[dict]:
  """One row per (network, dataset, width) that has several seeds: `stats` of its rows."""
  by_group: dict[tuple, list[dict]] = {}
  for r in rows:
    by_group.setdefault((r["network"], r["dataset"], r["width"]), []).append(r)
  out = []
  for (network, dataset, width), group in by_group.items():
    if len(group) > 1:
      out.append({"network": network, "dataset": dataset, "width": width,
                  "seeds": [r["seed"] for r in group]} | {"stats": stats(group)})
  return out


def _f(v, spec: str = ".2f") -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _mspec(v) -> str:
  """MMACs: two decimals as in Table 3, but significant digits for the tiny test networks."""
  return ",.2f" if v is None or abs(v) >= 1 else ".3g"


def _ms(stat: dict | None, spec: str = ".2f") -> str:
  if stat is None:
    return "-"
  std = "" if stat["std"] is None else f" ± {format(stat['std'], spec)}"
  return f"{format(stat['mean'], spec)}{std}"


def _row(cells: Iterable) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(cols: Sequence[str], n_text: int) -> list[str]:
  return [_row(cols), _row(["---"] * n_text + ["---:"] * (len(cols) - n_text))]


def tables_markdown(t: dict) -> str:
  """Markdown of `tables(...)`: Tables 1/2, Table 3, and their means over seeds."""
  strategies, base = t["strategies"], "sgd" in t["strategies"]
  cols = []
  for s in strategies:
    cols += [(s, "T_min", "T (min)"), (s, "A_pct", "A (%)")]
    if base and s != "sgd":
      cols.append((s, "dT_pct", "dT (%)"))
  names = [f"{strategy_name(s)} {label}" for s, _, label in cols]
  out = ["### Training time and accuracy (Tables 1/2)", "",
         *_head(["Network", "Dataset", "Width", "Seed", *names], 4)]
  for r in t["table1"]:
    out.append(_row([r["network"], r["dataset"], r["width"], r["seed"],
                     *(_f(r["strategies"].get(s, {}).get(f)) for s, f, _ in cols)]))
  if t["table1_seeds"]:
    out += ["", "Mean ± standard deviation over seeds:", "",
            *_head(["Network", "Dataset", "Width", "Seeds", *names], 4)]
    for r in t["table1_seeds"]:
      out.append(_row([r["network"], r["dataset"], r["width"], len(r["seeds"]),
                       *(_ms(r["stats"][s][f]) for s, f, _ in cols)]))
  out += ["", "T: training time in minutes (training steps, feature extraction and storing, "
          "compilation; test evaluation excluded), warm-up included. A: final test accuracy. "
          "dT = (T_SGD - T) / T_SGD x 100 (Eq. 5), against the SGD run of the same seed.", ""]
  out += ["### Forward MACs, SGD vs Dropping (Table 3)", ""]
  if not t["table3"]:
    return "\n".join(out + ["No group has both an sgd and a drop run.", ""])
  out += _head(["Network", "Dataset", "Width", "Seed", "SGD fwd MMACs/epoch",
                "Dropping fwd MMACs/epoch", "dFwd/epoch (%)", "SGD fwd MACs (run)",
                "Dropping fwd MACs (run)", "dFwd run (%)", "dTrain MACs (%)",
                "measured dT (%)"], 4)
  for r in t["table3"]:
    out.append(_row([r["network"], r["dataset"], r["width"], r["seed"],
                     *(_f(r[k], _mspec(r[k]))
                       for k in ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch")),
                     _f(r["dForward_epoch_pct"]), _f(r["sgd_forward_macs_total"], ".3e"),
                     _f(r["drop_forward_macs_total"], ".3e"), _f(r["dForward_pct"]),
                     _f(r["dTrain_pct"]), _f(r["dT_pct"])]))
  if t["table3_seeds"]:
    out += ["", "Mean ± standard deviation over seeds:", "",
            *_head(["Network", "Dataset", "Width", "Seeds", "SGD fwd MMACs/epoch",
                    "Dropping fwd MMACs/epoch", "dFwd run (%)", "dTrain MACs (%)",
                    "measured dT (%)"], 4)]
    for r in t["table3_seeds"]:
      st = r["stats"]
      out.append(_row([r["network"], r["dataset"], r["width"], len(r["seeds"]),
                       *(_ms(st[k], _mspec(st[k] and st[k]["mean"]))
                         for k in ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch")),
                       _ms(st["dForward_pct"]), _ms(st["dTrain_pct"]), _ms(st["dT_pct"])]))
  out += ["", "fwd MMACs/epoch: forward multiply-accumulates per example, in millions, averaged "
          "over the epochs (an epoch that extracts features counts the dropped stages once). "
          "(run): the same times the examples seen over the whole run. dTrain: reduction of "
          "training MACs (forward + backward of the stages trained), which is what bounds the "
          "time saved; measured dT beside it.", ""]
  return "\n".join(out)


# ---- Report ----------------------------------------------------------------------------------

def _rel(path: Path, start: Path) -> str:
  try:
    return str(path.resolve().relative_to(start.resolve()))
  except ValueError:
    return str(path)


def report_markdown(runs: Sequence[Run], t: dict, figures: Sequence[tuple[Path, str]],
                    out_dir: Path) -> str:
  from ldjax.compare import comparison_markdown  # here, not on top: compare imports this module

  lines = ["# Learn & Drop report", "", "| Run | Strategy | Network | Dataset | Width | Seed "
           "| Epochs | Drops (after epoch: stages) |", "|---|---|---|---|---:|---:|---:|---|"]
  for r in runs:
    drops = ", ".join(f"{e['epoch']}: {e['stages_dropped']}"
                      for e in r.summary.get("drop_events", [])) or "-"
    status = "" if r.complete else " (incomplete: no summary.json)"
    lines.append(_row([f"`{_rel(r.path, out_dir)}`{status}", strategy_name(r.strategy),
                       r.network, r.dataset, r.width, r.seed, len(r.metrics), drops]))
  lines += ["", "## Tables", "", tables_markdown(t)]
  if figures:
    lines += ["## Figures", ""]
    for path, caption in figures:
      lines += [f"![{path.stem}]({_rel(path, out_dir)})", "", caption, ""]
  lines += ["## Per group (compare.py's table)", ""]
  for table in t["comparisons"]:
    lines += [f"#### {table['network']} on {table['dataset']}, width {table['width']}, "
              f"seed {table['seed']}", "", comparison_markdown(table)]
  return "\n".join(lines)


def write_report(runs: Sequence[Run], out_dir: str | Path) -> list[Path]:
  """Writes report.md, report.json (the tables) and the figures; returns their paths."""
  from ldjax import plots  # matplotlib only when figures are drawn

  out_dir = Path(out_dir)
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UsageError(f"cannot write the report to {str(out_dir)!r} ({e.strerror or e}); "
                     "choose another with --out") from None
  t = tables(runs)
  figures = plots.write_figures(runs, out_dir)
  md, js = out_dir / "report.md", out_dir / "report.json"
  md.write_text(report_markdown(runs, t, figures, out_dir))
  js.write_text(json.dumps(t, indent=1) + "\n")
  return [md, js, *(p for p, _ in figures)]


def report_comparison(workdir: str | Path) -> list[Path]:
  """The report of a comparison run, written into its work directory."""
  return write_report(load_runs([workdir]), workdir)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m ldjax.report",
      description="Write report.md (Tables 1/2 and 3 of the paper) and figures (AAPD, scores P, "
                  "accuracy and time per epoch, parameters and MACs per epoch) from run "
                  "directories, without training.")
  p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                 help="a run directory written by python -m ldjax.run, or a comparison directory "
                      "(its strategy sub-directories are all read); several seeds or networks "
                      "may be given together")
  p.add_argument("--out", metavar="DIR",
                 help="directory for report.md, report.json and the PNG figures (default: the "
                      "first RUN_DIR, or the comparison directory it belongs to)")
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    runs = load_runs(args.run_dirs)
    paths = write_report(runs, Path(args.out) if args.out else default_out(args.run_dirs[0]))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {paths[0]} ({len(runs)} run{'s' * (len(runs) != 1)}) and {len(paths) - 2} figures: "
        + ", ".join(p.name for p in paths[2:]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
