"""Running several strategies side by side, and the paper's Table 1 comparison.

`run_strategies` loads the data and builds the model once, initialises the
weights once, and trains each strategy from those same weights with the same
seed and data order, each into its own run directory. `comparison` turns the
runs' summaries into the paper's Table 1 form (T, A, dT against SGD) plus the
reduction of forward and of training MACs, which bound the time saved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from ldjax import compile_cache
from ldjax.config import TrainConfig
from ldjax.data import Dataset, load_dataset
from ldjax.loop import Trainer
from ldjax.train import fit
from ldjax.models import StagedModel, build_model
from ldjax.store import write_json_atomic
from ldjax.workdir import RunDir


def prepare(cfg: TrainConfig, strategies: Sequence[str]) -> tuple[Dataset, StagedModel]:
  """Loads the data and builds the model; raises UsageError before anything is written."""
  data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                      test_size=cfg.test_size)
  cfg.validate(len(data.x_train))
  cfg.validate_strategies(strategies)
  model = build_model(cfg.model, data.image_shape, data.num_classes, width=cfg.width,
                      batch_norm=cfg.batch_norm)
  return data, model


def run_strategies(cfg: TrainConfig, strategies: Sequence[str], workdir: str | Path, *,
                   data: Dataset | None = None, model: StagedModel | None = None,
                   progress: bool = True, resume: bool = False, should_stop=None,
                   log=print) -> dict:
  """Trains each strategy from the same initial weights; returns {strategy: summary}.

  With `resume`, strategies whose run is complete are read back, and the
  others continue from their last checkpoint. With JAX's compilation cache on
  (`ldjax.compile_cache`), the whole-model step is compiled into it before
  the first strategy, so that every strategy loads it (see `warm_cache`).
  """
  if data is None or model is None:
    data, model = prepare(cfg, strategies)
  workdir = Path(workdir)
  variables = model.init(jax.random.key(cfg.seed), data.image_shape)
  if len(strategies) > 1 and compile_cache.enabled():
    log(f"compiled the whole-model step into the compilation cache in "
        f"{warm_cache(model, data, cfg, variables):.1f} s (outside every strategy's T)")
  summaries = {}
  for strategy in strategies:
    run_dir = RunDir(workdir / strategy if len(strategies) > 1 else workdir)
    if resume and (run_dir.path / "summary.json").exists():
      summaries[strategy] = json.loads((run_dir.path / "summary.json").read_text())
      log(f"{strategy}: already complete")
      continue
    if not (resume and (run_dir.path / "config.json").exists()):
      run_dir.write_config(cfg, strategy=strategy, strategies=list(strategies),
                           model_name=model.name, stage_names=list(model.stage_names),
                           num_train=len(data.x_train), num_test=len(data.x_test))
    summary = fit(model, data, cfg, strategy, variables=variables, run_dir=run_dir,
                  progress=progress, resume=resume, should_stop=should_stop)
    summary.pop("variables")
    summaries[strategy] = summary
    log(f"{strategy}: test accuracy {summary['test_accuracy']:.2f}%, "
        f"training time {summary['train_time_s']:.1f} s, drops {summary['drop_events']}")
  if len(strategies) > 1:
    table = comparison(summaries, network=model.name, dataset=data.name)
    write_json_atomic(workdir / "comparison.json", table)
    (workdir / "comparison.md").write_text(comparison_markdown(table))
    # Imported here: a module-level import would load ldjax.report with the
    # package and make `python -m ldjax.report` warn about a double import.
    from ldjax import report
    report.report_comparison(workdir)
  return summaries


def warm_cache(model: StagedModel, data: Dataset, cfg: TrainConfig, variables) -> float:
  """Compiles the first epoch's step and the evaluation once; returns seconds.

  All strategies start with these programs. With the cache on, the first
  strategy to compile them would pay a compile that the later ones only
  load, which would flatter their T against it; compiled here, outside every
  run, each strategy's T includes the same load.
  """
  t0 = time.perf_counter()
  Trainer(model, data, cfg, "sgd", variables, None).compile_first_step()
  return time.perf_counter() - t0


def _reduction(base: float | None, value: float | None) -> float | None:
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
      row["dT_pct"] = _reduction(base["train_time_s"], s["train_time_s"])
      row["dT_cpu_pct"] = _reduction(base.get("train_cpu_s"), s.get("train_cpu_s"))
      row["dForward_pct"] = _reduction(base["forward_macs_total"], s["forward_macs_total"])
      row["dTrain_pct"] = _reduction(base["train_macs_total"], s["train_macs_total"])
      row["dA_points"] = (None if s["test_accuracy"] is None or base["test_accuracy"] is None
                          else s["test_accuracy"] - base["test_accuracy"])
    rows.append(row)
  return {"network": network, "dataset": dataset, "rows": rows}


def _fmt(v, spec: str) -> str:
  return "-" if v is None else format(v, spec)


def comparison_markdown(table: dict) -> str:
  lines = [f"Network: {table['network']}  Dataset: {table['dataset']}", "",
           "| Strategy | T (min) | A (%) | dT (%) | dA (points) | CPU T (min) | dT CPU (%) "
           "| forward MACs | dFwd (%) | train MACs | dTrain (%) | drops |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in table["rows"]:
    lines.append(
        f"| {r['strategy']} | {r['T_min']:.2f} | {_fmt(r['A_pct'], '.2f')} | "
        f"{_fmt(r.get('dT_pct'), '.2f')} | {_fmt(r.get('dA_points'), '+.2f')} | "
        f"{r['T_cpu_min']:.2f} | {_fmt(r.get('dT_cpu_pct'), '.2f')} | "
        f"{r['forward_macs']:.3e} | {_fmt(r.get('dForward_pct'), '.2f')} | "
        f"{r['train_macs']:.3e} | {_fmt(r.get('dTrain_pct'), '.2f')} | {r['drop_events']} |")
  lines += ["", "T: training time (train steps, feature extraction and storage, compilation; "
            "not test evaluation). dT = (T_sgd - T) / T_sgd (Eq. 5). CPU T: the process's CPU "
            "seconds over the same work, which other jobs on the machine barely disturb. "
            "MACs: multiply-accumulates "
            "over the whole run (per example per epoch, times the training set size); training MACs count "
            "the backward pass of differentiated stages as 2x their forward."]
  return "\n".join(lines) + "\n"
