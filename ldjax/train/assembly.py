"""A run's pieces, built from its settings: what `fit` and `run_strategies` make before training.

The `ldjax.train.epoch.Trainer` holds a run's state and runs its epochs; it
is given the objects that compile, evaluate and keep the stores, and builds
none of them. Here each piece is made from the settings groups it reads:

- `blocks_for`: this process's blocks of the training set (data.shards,
  checked against run.batch_size);
- `programs_for`: what the run compiles (`ldjax.train.programs.Programs`):
  its devices (run.devices), shapes, batch, store dtype, precision and the
  optimizer's and adaptive batch's settings, before a budget;
- `costs_for`: the cost table (budget.cost_table) and the budget
  (budget.reference_epochs) it charges, with the programs' schedule set by it;
- `start_state`: the variables and optimizer states on the programs' devices;
- `measured_table`: the "measure" table (`ldjax.train.budget.measure`);
- `trainer_for`: all of them, the stores' keeper (store.*) and the
  evaluators (eval.*), and the `Trainer` that holds them.

Nothing here compiles but the evaluators' whole-model program (an
`ldjax.train.evaluation.Evaluator` is made with it) and, with
`--cost-table measure`, the programs the measurement times.
"""

from __future__ import annotations

import jax

from ldjax.data.augment import Augment, ViewSource, ViewTable
from ldjax.data.batching import Blocks
from ldjax.data.datasets import Dataset
from ldjax.models.staged import StagedModel
from ldjax.runs import cluster
from ldjax.runs.config import Config
from ldjax.runs.workdir import RunDir
from ldjax.store.keeper import StoreKeeper
from ldjax.train import budget, device_input, evaluation, sharding
from ldjax.train.epoch import Trainer, train_block
from ldjax.train.programs import Programs, for_model

__all__ = ["blocks_for", "costs_for", "measured_table", "programs_and_state", "programs_for",
           "start_state", "trainer_for"]


def blocks_for(data: Dataset, cfg: Config) -> Blocks:
  """This process's blocks of `data`'s training set (all of it with one process)."""
  blocks = Blocks.here(data.num_train, cfg.data.shards)
  blocks.check_batch(cfg.run.batch_size)
  return blocks


def programs_for(model: StagedModel, data: Dataset, cfg: Config, variables,
                 blocks: Blocks | None = None) -> Programs:
  """What a run of `cfg` trains `model` (`variables`: arrays or shapes) on `data` with,
  on the devices of run.devices; before a budget (`costs_for` sets its schedule)."""
  blocks = blocks or blocks_for(data, cfg)
  placement = sharding.Placement.of(sharding.device_count(cfg.run.devices, cfg.run.batch_size))
  augment = cfg.augment.for_images(data.image_shape)
  return for_model(
      model, variables, image_shape=data.image_shape, mean=data.mean, std=data.std,
      view_shape=augment.view_shape(data.image_shape), placement=placement,
      batch_size=cfg.run.batch_size, n_train=blocks.used, epochs=cfg.run.epochs,
      precision=cfg.model.precision, feature_dtype=cfg.store.dtype, optim=cfg.optim,
      adaptive=cfg.adaptive)


def costs_for(model: StagedModel, cfg: Config, programs: Programs,
              cost_table: budget.CostTable | None = None
              ) -> tuple[budget.CostTable, budget.Budget | None, Programs]:
  """(table, budget, programs): `cost_table`, else budget.cost_table's (training MACs
  for "macs" and "measure", whose measurement `measured_table` makes), the budget of
  budget.reference_epochs it charges (None without one), and `programs` with the
  learning-rate schedule that budget sets."""
  table = cost_table or budget.table_for(cfg.budget.cost_table, model, programs)
  run_budget, programs = budget.budget_for(table, cfg.budget.reference_epochs, programs)
  return table, run_budget, programs


def _views(data: Dataset, cfg: Config, blocks: Blocks) -> tuple[Augment, ViewTable | None]:
  """The augmentation and the fixed views of this process's images (None: fresh ones)."""
  augment = cfg.augment.for_images(data.image_shape)
  table = augment.view_table(cfg.run.seed, data.num_train)
  return augment, None if table is None else table.block(blocks.start, blocks.stop)


def start_state(programs: Programs, variables) -> tuple[list, list]:
  """(variables, optimizer states) to start from on the programs' devices: copies of
  `variables` (the steps donate their buffers, and callers reuse `variables`) and the
  optimizer's fresh states."""
  placement = programs.placement
  variables = placement.replicate(list(variables))
  tx = programs.optimizer()
  return variables, placement.replicate([tx.init(v.get("params", {})) for v in variables])


def programs_and_state(model: StagedModel, data: Dataset, cfg: Config, variables,
                       blocks: Blocks | None = None) -> tuple[Programs, list, list]:
  """(programs, variables, optimizer states) of a run of `cfg` as `trainer_for` starts
  it (the schedule set by its budget, the state on the programs' devices): what the
  benchmarks time without a Trainer."""
  _, _, programs = costs_for(model, cfg, programs_for(model, data, cfg, variables, blocks))
  return (programs, *start_state(programs, variables))


def _measure(model: StagedModel, cfg: Config, programs: Programs, variables, opt_states,
             images, augment: Augment, view_table: ViewTable | None,
             blocks: Blocks) -> budget.CostTable:
  return budget.measure(model, programs, variables, opt_states,
                        ViewSource(images, augment, view_table), seed=cfg.run.seed,
                        local_batch=cfg.run.batch_size // blocks.processes)


def measured_table(model: StagedModel, data: Dataset, cfg: Config,
                   variables) -> budget.CostTable:
  """The "measure" cost table of a run of `cfg` (`ldjax.train.budget.measure`): what
  a Trainer of `trainer_for` with budget.cost_table "measure" charges."""
  blocks = blocks_for(data, cfg)
  images, _ = train_block(data, blocks)
  programs, variables, opt_states = programs_and_state(model, data, cfg, variables, blocks)
  return _measure(model, cfg, programs, variables, opt_states, images,
                  *_views(data, cfg, blocks), blocks)


def trainer_for(model: StagedModel, data: Dataset, cfg: Config, strategy: str, variables,
                run_dir: RunDir | None, cost_table: budget.CostTable | None = None) -> Trainer:
  """A `Trainer` of `strategy` for `model` on `data`, starting from `variables` (the
  caller's stay its own), with every piece built from `cfg`; `run_dir`: where large
  stores go (None: in memory, nothing written). `cost_table`: the table to charge
  instead of budget.cost_table's (a measured one is measured here)."""
  blocks = blocks_for(data, cfg)
  images, _ = train_block(data, blocks)
  programs = programs_for(model, data, cfg, variables, blocks)
  table, run_budget, programs = costs_for(model, cfg, programs, cost_table)
  variables, opt_states = start_state(programs, variables)
  augment, view_table = _views(data, cfg, blocks)
  # Stores hold `views` maps per image: K exact views, or the padded image's with the
  # crop's window (`ldjax.data.augment`).
  keeper = StoreKeeper(
      augment.views * len(images), programs.view_net.shapes, cfg.store.dtype,
      memory_budget_bytes=cfg.store.memory_bytes,
      directory=None if run_dir is None else cluster.store_directory(run_dir.path),
      agree=cluster.agree if jax.process_count() > 1 else None)
  evaluator, val_evaluator = evaluation.evaluators(
      programs.net, data, variables, batch_size=cfg.eval.batch_size,
      memory_bytes=cfg.store.memory_bytes)
  if cost_table is None and cfg.budget.cost_table == "measure":
    table = _measure(model, cfg, programs, variables, opt_states, images, augment,
                     view_table, blocks)
    run_budget, programs = budget.budget_for(table, cfg.budget.reference_epochs, programs)
  return Trainer(model, data, strategy, programs=programs, variables=variables,
                 opt_states=opt_states, blocks=blocks, augment=augment, view_table=view_table,
                 keeper=keeper, evaluator=evaluator, val_evaluator=val_evaluator, costs=table,
                 run_budget=run_budget, drop_settings=cfg.drop, seed=cfg.run.seed,
                 epochs=cfg.run.epochs, reader_threads=cfg.run.threads, run_dir=run_dir,
                 on_devices=device_input.DeviceInput(programs.placement, device_input.budget_bytes(
                     cfg.store.device_memory_gb, programs.placement)))
