"""`fit`: one strategy's run, epoch by epoch, with per-epoch records and checkpoints.

Each epoch: train (`ldjax.train.epoch.Trainer.run_epoch`), score and decide, evaluate the
full model on the test set (every `cfg.eval.every` epochs and after the
last; the other epochs' test metrics are None), append a line to `metrics.jsonl`, checkpoint.
With `resume=True`, a run continues from its last complete checkpoint: the
variables, optimizer states and drop state are restored, `metrics.jsonl` is
cut back to that epoch, and the feature store is verified against its
manifest (and rebuilt from the dropped stages if it is missing or damaged).
A killed run so loses at most the epoch in flight and, on the CPU, ends with
the same decisions and weights as an uninterrupted one.

What a run starts from is a `ldjax.train.continuation.Start`, what its caller sees
as it goes are `Hooks`; each epoch's line is an `EpochRecord` and the summary a
`RunSummary` (`ldjax.train.records`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax

from ldjax.data.batching import shard_count
from ldjax.data.datasets import Dataset, with_validation
from ldjax.data.images import POLICY as RESIZE_POLICY
from ldjax.errors import UsageError
from ldjax.jsonio import write_json_atomic
from ldjax.models import costs
from ldjax.models.staged import StagedModel, count_params
from ldjax.runs import cluster
from ldjax.runs.checkpoint import KEEP, Checkpointer, check_compatible
from ldjax.runs.config import FIELDS, Config
from ldjax.runs.workdir import RunDir
from ldjax.train import adaptive, assembly, continuation
from ldjax.train.budget import TABLE_FILE
from ldjax.train.continuation import Start
from ldjax.train.decisions import DropState
from ldjax.train.epoch import EpochResult, Trainer, param_l2
from ldjax.train.optim import lr_schedule
from ldjax.train.progress import progress_bar
from ldjax.train.records import EpochRecord, EpochTimes, RunSummary, RunTotals
from ldjax.weights import save_run_weights


# The test metrics of an epoch that --eval-every skips.
NO_EVAL = {"test_loss": None, "test_accuracy": None, "val_loss": None, "val_accuracy": None}


def fingerprint(model: StagedModel, data: Dataset, cfg: Config, strategy: str) -> dict:
  """Settings a checkpoint must share with the run that resumes it: every setting but
  those a resume may change (`resumable`), with the model and data as built."""
  values = cfg.flat() | {"schedule": cfg.optim.schedule_name,
                         "data_shards": shard_count(cfg.data.shards)}
  return {"strategy": strategy, "model": model.name, "stage_names": list(model.stage_names),
          "dataset": data.name, "image_shape": list(data.image_shape),
          "num_classes": data.num_classes, "num_train": data.num_train,
          "num_test": len(data.x_test)} | {
      f.flat: values[f.flat] for f in FIELDS
      if not f.resumable and f.flat not in ("model", "dataset")}


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What a caller of `fit` sees of the run as it goes.

  on_epoch: called with each epoch's record, after its checkpoint is started.
  on_step: called with (epoch, step, phase) before each step; phase "train", or
    "extract" while a new store fills.
  should_stop: polled every step; when it returns True the run raises
    `ldjax.errors.Interrupted` (the last complete epoch is checkpointed).
  progress: show a progress bar.
  """
  on_epoch: Callable[[EpochRecord], None] | None = None
  on_step: Callable[[int, int, str], None] | None = None
  should_stop: Callable[[], bool] | None = None
  progress: bool = True


def fit(model: StagedModel, data: Dataset, cfg: Config, strategy: str, *,
        start: Start | None = None, run_dir: RunDir | None = None, resume: bool = False,
        hooks: Hooks | None = None) -> dict:
  """Trains `model` on `data` with `strategy`; returns the run's summary: summary.json's
  dict (`RunSummary.to_json`) and the final "variables".

  Args:
    start: the variables and drop state to start from, and the run they continue
      (`ldjax.train.continuation.Start`); pass the same one to compare strategies
      from one start. Without it: `model.init` with `cfg.run.seed`, nothing dropped,
      and the summary names no earlier run.
    run_dir: where metrics, checkpoints and large feature stores go; without
      it nothing is written and stores stay in memory.
    resume: continue from the last checkpoint in `run_dir`, if any.
    hooks: callbacks and the progress bar (`Hooks`).
  """
  hooks = hooks or Hooks()
  name = data.name   # the summary's data_seen: before a hold-out
  data = _checked_data(model, data, cfg, strategy, start)
  variables = (model.init(jax.random.key(cfg.run.seed), data.image_shape) if start is None
               else start.variables)
  trainer = assembly.trainer_for(model, data, cfg, strategy, variables, run_dir)
  if start is not None and start.drop is not None:
    trainer.drop = start.drop
  ckpt = None if run_dir is None else Checkpointer(run_dir.path / "checkpoints")
  fp = fingerprint(model, data, cfg, strategy)
  totals = RunTotals(compile_time_s=trainer.eval_compile_s)
  if trainer.budget is not None:
    totals.budget_spent, totals.steps = 0.0, 0
    if run_dir is not None and run_dir.writes:
      write_json_atomic(run_dir.path / TABLE_FILE, trainer.costs.to_json())
  first, ev = 0, None
  if resume and ckpt is not None and ckpt.latest_epoch() is not None:
    first, ev = _restore(trainer, ckpt, totals, fp)
  elif run_dir is not None:
    run_dir.start_metrics()
  try:
    # With --budget the bar counts base steps' worth of budget (a head's steps are cheaper).
    total = (cfg.run.epochs * trainer.steps_per_epoch if trainer.budget is None
             else trainer.budget.total_steps)
    with progress_bar(total, f"{strategy:>6} {model.name}", enabled=hooks.progress) as bar:
      bar.update(first * trainer.steps_per_epoch if trainer.budget is None
                 else round(trainer.budget.progress()))
      epoch = first
      while trainer.has_epoch(epoch):
        if ckpt is not None:   # the store's free-space check counts the checkpoints to come
          trainer.keeper.disk_reserve_bytes = _checkpoint_bytes_to_come(trainer, epoch)
        rec, ev = _train_epoch(trainer, cfg, epoch, bar, ev, totals, hooks)
        _save(trainer, ckpt, rec, _meta(trainer, epoch + 1, totals, ev, fp))
        if hooks.on_epoch is not None:
          hooks.on_epoch(rec)
        bar.set_postfix(loss=f"{rec.loss:.3f}", cut=trainer.drop.cut,
                        **_shown(ev))
        epoch += 1
  finally:   # a save in flight is committed even when the run stops
    if ckpt is not None:
      ckpt.close()
  seen = None if start is None else (*start.data_seen, name)
  return _finish(trainer, cfg, run_dir, ev, totals, start, seen)


def _checked_data(model: StagedModel, data: Dataset, cfg: Config, strategy: str,
                  start: Start | None) -> Dataset:
  """The run's data, checked against the settings (UsageError), normalized as `start`'s
  weights were trained, its validation split held out."""
  if start is not None and start.normalization is not None:
    data = _normalized(data, cfg, strategy, start)
  # The training set before a validation split that is already held out (`prepare` with
  # several processes, or a start with other input normalization).
  held = 0 if data.x_val is None or not cfg.data.val_size else len(data.x_val)
  cfg.check_data(data.num_train + held, data.image_shape)
  cfg.check_strategies([strategy])
  if cfg.drop.schedule and max(cfg.drop.schedule.values()) > model.num_conv - 1:
    raise UsageError(f"drop.drop_at {cfg.drop.drop_at}: a cut is at most {model.num_conv - 1} "
                     f"for {model.name} (its last conv stage is never dropped)")
  return with_validation(data, cfg.data.val_size)


def _normalized(data: Dataset, cfg: Config, strategy: str, start: Start) -> Dataset:
  """`data` normalized as `start`'s weights were trained (`ldjax.train.continuation`),
  its validation split held out first (the hold-out recomputes mean and std)."""
  data = with_validation(data, cfg.data.val_size)
  return continuation.with_normalization(data, {strategy: start})


def _train_epoch(trainer: Trainer, cfg: Config, epoch: int, bar, ev: dict | None,
                 totals: RunTotals, hooks: Hooks) -> tuple[EpochRecord, dict | None]:
  """Trains, decides and (when due) evaluates one epoch; adds to `totals`.

  Returns the epoch's metrics.jsonl record and the latest evaluation.
  """
  cut, store_cut = trainer.drop.cut, trainer.drop.store_cut
  lr = _epoch_lr(trainer, cfg, epoch)
  out = trainer.run_epoch(epoch, bar, hooks.should_stop, hooks.on_step)
  decided = trainer.score_and_decide(out.scores, epoch)
  t0, eval_compiled = time.perf_counter(), trainer.eval_compile_s
  now = _evaluate(trainer, cfg, epoch)
  ev = NO_EVAL | (ev or {}) | now   # the latest evaluation of each split
  times = dataclasses.replace(out.times, eval_s=time.perf_counter() - t0)
  budget = {}
  if trainer.budget is not None:
    totals.budget_spent = trainer.budget.spent
    totals.steps += out.steps
    budget = dict(steps=out.steps, budget_spent=trainer.budget.spent_epochs())
  rec = _epoch_record(trainer, cfg, epoch, cut, store_cut, out, NO_EVAL | now, times, lr,
                      decided, budget)
  # Per example per epoch, times the examples this epoch trained on (fewer in a partial one).
  seen = trainer.n_train if trainer.budget is None else min(
      trainer.n_train, out.steps * trainer.batch_size)
  totals.add_epoch(rec, seen, times.compile_s + trainer.eval_compile_s - eval_compiled)
  return rec, ev


def _shown(ev: dict | None) -> dict:
  """The progress bar's accuracy: validation if there is one, else test."""
  for split in ("val", "test"):
    if ev is not None and ev.get(f"{split}_accuracy") is not None:
      return {split: f"{ev[f'{split}_accuracy']:.2f}%"}
  return {}


def _evaluate(trainer: Trainer, cfg: Config, epoch: int) -> dict:
  """The evaluations due after `epoch`: every --eval-every epochs and after the last,
  the validation split if there is one (else the test set); the test set after the
  last epoch, and with --test-every-epoch whenever the validation split is."""
  last = trainer.is_last(epoch)
  due = (epoch + 1) % cfg.eval.every == 0 or last
  has_val = trainer.val_evaluator is not None
  out = trainer.evaluate("val") if due and has_val else {}
  if last or (due and (not has_val or cfg.eval.test_every_epoch)):
    out |= trainer.evaluate("test")
  return out


def _save(trainer: Trainer, ckpt: Checkpointer | None, rec: EpochRecord, meta: dict) -> None:
  """Appends the epoch's record and starts its checkpoint; then deletes retired stores,
  kept until a checkpoint that no longer needs them is on disk."""
  if ckpt is not None:
    trainer.run_dir.append_metrics(rec.to_json())
    ckpt.save(meta["epoch"], {"variables": trainer.variables, "opt_states": trainer.opt_states},
              meta)
  if trainer.keeper.retired:
    if ckpt is not None:
      ckpt.wait()
    trainer.keeper.delete_retired()


def _checkpoint_bytes_to_come(trainer: Trainer, epoch: int) -> int:
  """Disk the checkpoints still to be written may take beyond those already there.

  A checkpoint holds the variables and optimizer states; orbax keeps `KEEP`
  and writes the next one before deleting the oldest.
  """
  nbytes = sum(int(x.nbytes) for x in jax.tree.leaves((trainer.variables, trainer.opt_states)))
  return (KEEP + 1 - min(epoch, KEEP)) * nbytes


def _finish(trainer: Trainer, cfg: Config, run_dir: RunDir | None, ev: dict,
            totals: RunTotals, start: Start | None, data_seen: tuple[str, ...] | None) -> dict:
  """The run's summary (written to summary.json, last) with its "variables"; frees the
  store."""
  summary = RunSummary(
      strategy=trainer.strategy.value, model=trainer.model.name, dataset=trainer.data.name,
      epochs=trainer.epochs_run, test_accuracy=ev["test_accuracy"], test_loss=ev["test_loss"],
      val_accuracy=ev.get("val_accuracy"), val_size=cfg.data.val_size, totals=totals,
      drop_events=list(trainer.drop.events), final_cut=trainer.drop.cut,
      final_store_cut=trainer.drop.store_cut, devices=trainer.placement.devices,
      store_fallbacks=trainer.keeper.fallbacks, param_l2=param_l2(trainer.variables),
      drop_state=trainer.drop.to_json(),
      continued_from=None if start is None else start.source, data_seen=data_seen,
      budget=None if trainer.budget is None else trainer.budget.to_json()).to_json()
  if run_dir is not None and run_dir.writes:   # the weights first: a run with a summary has them
    data = trainer.data
    save_run_weights(run_dir.path, trainer.model, trainer.variables, {
        "width": cfg.model.width, "batch_norm": cfg.model.batch_norm,
        "image_shape": list(data.image_shape), "input_mean": list(data.mean),
        "input_std": list(data.std), "dataset": data.name, "strategy": trainer.strategy.value,
        "class_names": data.class_names and list(data.class_names), "resize": RESIZE_POLICY})
    run_dir.write_summary(summary)
  if run_dir is not None:
    cluster.barrier("run written")   # the next chunk of a data schedule reads it
  trainer.keeper.delete()   # a cache: the run is complete, free the disk
  trainer.device_input.release()   # and the devices' copies
  summary["variables"] = trainer.variables
  return summary


def _meta(trainer: Trainer, epochs_done: int, totals: RunTotals, ev: dict, fp: dict) -> dict:
  store = trainer.keeper.current
  return {"epoch": epochs_done, "fingerprint": fp, "totals": totals.to_json(), "eval": ev,
          "drop": trainer.drop.to_json(), "store_fallbacks": trainer.keeper.fallbacks,
          "store_manifest": None if store is None or store.path is None
          else str(store.manifest_path)}


def _restore(trainer: Trainer, ckpt: Checkpointer, totals: RunTotals, fp: dict):
  """Loads the last checkpoint into `trainer`; returns (first epoch to run, last eval)."""
  meta = ckpt.restore_meta()
  check_compatible(meta["fingerprint"], fp)
  state = ckpt.restore({"variables": trainer.variables, "opt_states": trainer.opt_states})
  trainer.variables, trainer.opt_states = list(state["variables"]), list(state["opt_states"])
  trainer.drop = DropState.from_json(meta["drop"])
  trainer.keeper.fallbacks = list(meta.get("store_fallbacks", []))
  totals.update(meta["totals"])
  if trainer.budget is not None:
    trainer.budget.spent = float(totals.budget_spent)
  epoch = int(meta["epoch"])
  trainer.epochs_run = epoch
  trainer.run_dir.truncate_metrics(epoch)
  trainer.keeper.clean_directory(trainer.drop.store_cut)
  if trainer.drop.store_cut > 0:
    trainer.reopen_store(on_disk=meta.get("store_manifest") is not None)
  return epoch, meta["eval"]


def _epoch_lr(trainer: Trainer, cfg: Config, epoch: int) -> float:
  """The schedule's learning rate at the epoch's first step (before a grown batch's
  scale)."""
  steps = trainer.steps_per_epoch
  at = epoch * steps if trainer.budget is None else trainer.budget.progress()
  total = trainer.budget_steps or trainer.schedule_steps
  return float(lr_schedule(cfg.optim, steps, total)(at))


def _epoch_record(trainer: Trainer, cfg: Config, epoch: int, cut: int, store_cut: int,
                  out: EpochResult, ev: dict, times: EpochTimes, lr: float, decided: dict,
                  budget: dict) -> EpochRecord:
  """The metrics.jsonl line of one epoch.

  `cut` / `store_cut`: the cut positions while it trained; `out.extracted`:
  the stage range it ran once to fill a new store (drop only). MACs are per
  example: `forward_macs` of the forward pass, `train_macs` of forward and
  backward (see `costs.training_macs`), both including the extraction.
  `decided`: the decision rule's scores and decision; `budget`: steps and budget
  spent, with a budget.
  """
  macs, view_macs = trainer.programs.macs, trainer.programs.view_macs
  extracted = out.extracted
  forward_from = extracted[1] if extracted else store_cut
  # The extraction runs once per stored view (of the padded image with crop).
  extra = (trainer.augment.views * sum(view_macs[extracted[0]:extracted[1]])
           if extracted else 0)
  forward = sum(macs[forward_from:]) + extra
  train = sum(macs[forward_from:cut]) + costs.training_macs(macs, cut, "drop") + extra
  lr_scale = adaptive.lr_scale(trainer.step_k, cfg.adaptive.lr_rule)
  # What a step reads per example, a stored row or the uint8 image: with train_macs, the
  # numbers of the input-bandwidth model (`ldjax.models.bandwidth`).
  input_bytes = (math.prod(trainer.programs.view_net.shapes[forward_from - 1])
                 * trainer.programs.feature_dtype.itemsize if forward_from
                 else math.prod(trainer.data.image_shape))
  return EpochRecord(
      epoch=epoch + 1, strategy=trainer.strategy.value, lr=lr_scale * lr,
      batch_size=trainer.batch_size, lr_scale=lr_scale,
      loss=out.loss, train_accuracy=out.train_accuracy,
      test_loss=ev["test_loss"], test_accuracy=ev["test_accuracy"],
      val_loss=ev["val_loss"], val_accuracy=ev["val_accuracy"], time=times,
      dropped_stages=cut, stored_stages=forward_from,
      trainable_params=count_params(trainer.variables[cut:]),
      forward_params=count_params(trainer.variables[forward_from:]),
      forward_macs=int(forward), train_macs=int(train),
      xla_step_flops=trainer.step_fn.flops, store=out.store, augment=out.augment,
      input_bytes_per_example=input_bytes, scores=decided["scores"],
      decision=decided["decision"], cpu_s=out.cpu_s, **budget)
