"""Running several strategies side by side from the same initial weights.

`run_strategies` loads the data and builds the model once, initialises the
weights once, and trains each strategy from those same weights with the same
seed and data order, each into its own run directory; then it writes the
comparison table (`ldjax.reporting.comparison`) and the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jax

from ldjax.data.datasets import Dataset, load_dataset
from ldjax.jsonio import read_json
from ldjax.models.staged import StagedModel
from ldjax.models.zoo import build_model
from ldjax.reporting.report import report_comparison
from ldjax.runs import compile_cache
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.train.epoch import Trainer
from ldjax.train.fit import fit


def prepare(cfg: TrainConfig, strategies: Sequence[str]) -> tuple[Dataset, StagedModel]:
  """Loads the data and builds the model; raises UsageError before anything is written."""
  data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                      test_size=cfg.test_size)
  cfg.validate(len(data.x_train), data.image_shape)
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
      summaries[strategy] = read_json(run_dir.path / "summary.json")
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
  if len(strategies) > 1:   # comparison.md / .json (with time to accuracy), figures, report
    report_comparison(workdir)
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
