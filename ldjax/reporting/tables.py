"""The paper's tables from runs: Tables 1/2 (T, A, dT) and Table 3 (MACs), per seed and over seeds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ldjax.strategy import display_name, rank
from ldjax.errors import UsageError
from ldjax.reporting.comparison import (SPLIT_NAMES, TARGET_POINTS, cell, comparison, reduction,
                                        target_cell)
from ldjax.reporting.runs import Run


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
  return {k: dict(sorted(v.items(), key=lambda kv: rank(kv[0])))
          for k, v in groups.items()}


TABLE3_FIELDS = ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch", "dForward_epoch_pct",
                 "sgd_forward_macs_total", "drop_forward_macs_total", "dForward_pct",
                 "sgd_train_macs_total", "drop_train_macs_total", "dTrain_pct", "dT_pct")


def _ids(key: tuple) -> dict:
  return dict(zip(("network", "dataset", "width", "seed"), key))


def tables(runs: Sequence[Run]) -> dict:
  """Tables 1/2 and 3 per (network, dataset, width, seed), and over seeds.

  table1: per group {strategy: compare.comparison's row (T_min, A_pct, dT_pct,
  T_target_min, target_reached, ...)} and the group's time-to-accuracy
  `target` (None without an SGD run);
  table3: per group with both sgd and drop, forward MACs per example per epoch
  (mean over epochs) and over the run, their reduction, the reduction of
  training MACs (forward + backward, what bounds the time saved) and the
  measured dT. The *_seeds tables give {mean, std, n} over the seeds of a
  (network, dataset, width) that has more than one; dT and the time to
  accuracy are taken per seed against that seed's SGD run, then averaged (the
  latter over the seeds that reached the target, `never` counting the others).
  """
  groups = _by_key(runs)
  strategies = sorted({r.strategy for r in runs}, key=rank)
  t1, t3, comparisons = [], [], []
  for key, by_s in groups.items():
    table = comparison({s: r.summary for s, r in by_s.items()}, network=key[0], dataset=key[1],
                       records={s: r.metrics for s, r in by_s.items()})
    table["width"], table["seed"] = key[2], key[3]
    comparisons.append(table)
    rows = {row["strategy"]: row for row in table["rows"]}
    t1.append(_ids(key) | {"strategies": rows, "target": table["target"]})
    if "sgd" in rows and "drop" in rows:
      per_epoch = {s: float(np.mean([m["forward_macs"] for m in by_s[s].metrics])) / 1e6
                   for s in ("sgd", "drop")}
      sgd, drop = rows["sgd"], rows["drop"]
      t3.append(_ids(key) | {
          "sgd_forward_mmacs_epoch": per_epoch["sgd"],
          "drop_forward_mmacs_epoch": per_epoch["drop"],
          "dForward_epoch_pct": reduction(per_epoch["sgd"], per_epoch["drop"]),
          "sgd_forward_macs_total": sgd["forward_macs"],
          "drop_forward_macs_total": drop["forward_macs"], "dForward_pct": drop["dForward_pct"],
          "sgd_train_macs_total": sgd["train_macs"], "drop_train_macs_total": drop["train_macs"],
          "dTrain_pct": drop["dTrain_pct"], "dT_pct": drop["dT_pct"]})
  return {"strategies": strategies, "table1": t1, "table3": t3,
          "table1_seeds": _over_seeds(t1, lambda row: {
              s: {f: _stats(r["strategies"].get(s, {}).get(f) for r in row)
                  for f in ("T_min", "A_pct", "dT_pct")}
              | {"T_target_min": _target_stats(r["strategies"].get(s, {}) for r in row)}
              for s in strategies}),
          "table3_seeds": _over_seeds(t3, lambda row: {
              f: _stats(r[f] for r in row) for f in TABLE3_FIELDS}),
          "comparisons": comparisons}


def _target_stats(rows: Iterable[dict]) -> dict | None:
  """Time to accuracy over seeds: _stats of the seeds that reached it, and `never`, how
  many did not; None if no seed has a target."""
  rows = [r for r in rows if "target_reached" in r]
  if not rows:
    return None
  reached = _stats(r["T_target_min"] for r in rows if r["target_reached"])
  return (reached or {"mean": None, "std": None, "n": 0}) | {
      "never": sum(not r["target_reached"] for r in rows)}


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


def _mspec(v) -> str:
  """MMACs: two decimals as in Table 3, but significant digits for the tiny test networks."""
  return ",.2f" if v is None or abs(v) >= 1 else ".3g"


def _ms(stat: dict | None, spec: str = ".2f") -> str:
  if stat is None:
    return "-"
  std = "" if stat["std"] is None else f" ± {format(stat['std'], spec)}"
  return f"{format(stat['mean'], spec)}{std}"


def md_row(cells: Iterable) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(cols: Sequence[str], n_text: int) -> list[str]:
  return [md_row(cols), md_row(["---"] * n_text + ["---:"] * (len(cols) - n_text))]


def _target_text(target: dict | None) -> str:
  """The Target cell: the accuracy to reach and on which split, e.g. "86.10 test"."""
  return "-" if target is None else f"{target['target_pct']:.2f} {SPLIT_NAMES[target['field']]}"


def _target_ms(stat: dict | None) -> str:
  """Time to accuracy over seeds: mean ± std of the seeds that reached it, "never" if none."""
  if stat is None:
    return "-"
  if not stat["n"]:
    return "never"
  never = f" (never in {stat['never']} of {stat['n'] + stat['never']})" if stat["never"] else ""
  return _ms(stat) + never


def _table1_markdown(t: dict) -> list[str]:
  """Tables 1/2 (T, A, dT per strategy, then time to accuracy) and their means over seeds."""
  strategies, base = t["strategies"], "sgd" in t["strategies"]
  cols = []
  for s in strategies:
    cols += [(s, "T_min", "T (min)"), (s, "A_pct", "A (%)")]
    if base and s != "sgd":
      cols.append((s, "dT_pct", "dT (%)"))
  names = [f"{display_name(s)} {label}" for s, _, label in cols]
  tta = any(r["target"] for r in t["table1"])
  tta_names = (["Target (%)"] + [f"{display_name(s)} T to target (min)" for s in strategies]
               if tta else [])
  out = ["### Training time and accuracy (Tables 1/2)", "",
         *_head(["Network", "Dataset", "Width", "Seed", *names, *tta_names], 4)]
  for r in t["table1"]:
    by_s = r["strategies"]
    out.append(md_row([r["network"], r["dataset"], r["width"], r["seed"],
                       *(cell(by_s.get(s, {}).get(f)) for s, f, _ in cols),
                       *([_target_text(r["target"])] if tta else []),
                       *(target_cell(by_s.get(s, {})) for s in strategies if tta)]))
  if t["table1_seeds"]:
    out += ["", "Mean ± standard deviation over seeds:", "",
            *_head(["Network", "Dataset", "Width", "Seeds", *names, *tta_names[1:]], 4)]
    for r in t["table1_seeds"]:
      st = r["stats"]
      out.append(md_row([r["network"], r["dataset"], r["width"], len(r["seeds"]),
                         *(_ms(st[s][f]) for s, f, _ in cols),
                         *(_target_ms(st[s]["T_target_min"]) for s in strategies if tta)]))
  out += ["", "T: training time in minutes (training steps, feature extraction and storing, "
          "compilation; test evaluation excluded), warm-up included. A: final test accuracy. "
          "dT = (T_SGD - T) / T_SGD x 100 (Eq. 5), against the SGD run of the same seed."]
  if tta:
    out[-1] += (f" T to target: T at the end of the first epoch whose accuracy reached the "
                f"Target, the same seed's final SGD accuracy minus {TARGET_POINTS:g} points, "
                "on the validation split when the runs have one, else on the test set; never: "
                "not reached; -: no SGD run. Over seeds: the mean of the seeds that reached it.")
  return out + [""]


def tables_markdown(t: dict) -> str:
  """Markdown of `tables(...)`: Tables 1/2, Table 3, and their means over seeds."""
  out = _table1_markdown(t)
  out += ["### Forward MACs, SGD vs Dropping (Table 3)", ""]
  if not t["table3"]:
    return "\n".join(out + ["No group has both an sgd and a drop run.", ""])
  out += _head(["Network", "Dataset", "Width", "Seed", "SGD fwd MMACs/epoch",
                "Dropping fwd MMACs/epoch", "dFwd/epoch (%)", "SGD fwd MACs (run)",
                "Dropping fwd MACs (run)", "dFwd run (%)", "dTrain MACs (%)",
                "measured dT (%)"], 4)
  for r in t["table3"]:
    out.append(md_row([r["network"], r["dataset"], r["width"], r["seed"],
                     *(cell(r[k], _mspec(r[k]))
                       for k in ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch")),
                     cell(r["dForward_epoch_pct"]), cell(r["sgd_forward_macs_total"], ".3e"),
                     cell(r["drop_forward_macs_total"], ".3e"), cell(r["dForward_pct"]),
                     cell(r["dTrain_pct"]), cell(r["dT_pct"])]))
  if t["table3_seeds"]:
    out += ["", "Mean ± standard deviation over seeds:", "",
            *_head(["Network", "Dataset", "Width", "Seeds", "SGD fwd MMACs/epoch",
                    "Dropping fwd MMACs/epoch", "dFwd run (%)", "dTrain MACs (%)",
                    "measured dT (%)"], 4)]
    for r in t["table3_seeds"]:
      st = r["stats"]
      out.append(md_row([r["network"], r["dataset"], r["width"], len(r["seeds"]),
                       *(_ms(st[k], _mspec(st[k] and st[k]["mean"]))
                         for k in ("sgd_forward_mmacs_epoch", "drop_forward_mmacs_epoch")),
                       _ms(st["dForward_pct"]), _ms(st["dTrain_pct"]), _ms(st["dT_pct"])]))
  out += ["", "fwd MMACs/epoch: forward multiply-accumulates per example, in millions, averaged "
          "over the epochs (an epoch that extracts features counts the dropped stages once). "
          "(run): the same times the examples seen over the whole run. dTrain: reduction of "
          "training MACs (forward + backward of the stages trained), which is what bounds the "
          "time saved; measured dT beside it.", ""]
  return "\n".join(out)
