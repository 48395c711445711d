"""Optimizers and learning-rate schedules of a run, built from optax by `TrainConfig`.

- `--optimizer sgd` (the paper's: SGD with PyTorch-style momentum),
  `nesterov` (the same with Nesterov momentum) or `adamw` (decoupled weight
  decay, betas 0.9 / 0.999; `--momentum` does not apply).
- `--weight-decay W` decays conv and dense kernels only (arrays of two or
  more dimensions; biases and BatchNorm scales and offsets are left alone).
  With sgd / nesterov it is added to the gradient before the momentum
  (`optax.add_decayed_weights`, as PyTorch's SGD does); with adamw it is
  decoupled. 0 leaves the optimizer exactly the paper's.
- `--schedule constant | step | cosine | onecycle`, by global step:
  `step` multiplies the lr by `lr_decay_factor` from `--lr-decay-epoch` on;
  `cosine` decays it to 0 over the run; `onecycle` is optax's cosine
  one-cycle (a rise to `--lr`, then a decay to ~0), whose rise lasts
  `--warmup-lr-epochs` (30 % of the run if 0). For the others
  `--warmup-lr-epochs E` multiplies the schedule by min(1, (step + 1) / (E x
  steps per epoch)): a linear rise from lr/N over the first N steps. This lr
  warm-up is distinct from the Learn & Drop warm-up (`--warmup`).

The optimizer is applied per stage (the train step updates each stage with
its own optimizer state, so the state slices with the head); every transformation here is element-wise, so this equals
applying it to the whole model. Each stage's optimizer state counts its own
updates, which equals the global step for every stage still in the head, so
after a drop the head's schedule and moments continue from the full model's.

With `--budget` (`ldjax.train.budget`) the schedule runs over the budget's
base steps (B x steps per epoch) and is indexed by the budget spent, which
every step is given (`progress`), instead of by the count of updates: it
reaches its end when the budget is spent, however many steps that took.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ldjax.runs.config import OPTIMIZERS, SCHEDULES, TrainConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "decay_mask", "lr_schedule", "make_optimizer",
           "strided_learning_rate"]


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int,
                total_steps: int | None = None) -> optax.Schedule:
  """The learning rate as a function of the global step (see the module docstring);
  `total_steps`: the schedule's length (default: --epochs of steps)."""
  name = cfg.schedule_name
  total = cfg.epochs * steps_per_epoch if total_steps is None else total_steps
  warm = cfg.warmup_lr_epochs * steps_per_epoch
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(total, cfg.lr, pct_start=warm / total if warm else 0.3)
  if name == "constant":
    base = optax.constant_schedule(cfg.lr)
  elif name == "step":
    base = optax.piecewise_constant_schedule(
        cfg.lr, {cfg.lr_decay_epoch * steps_per_epoch: cfg.lr_decay_factor})
  else:
    base = optax.cosine_decay_schedule(cfg.lr, decay_steps=total)
  if not warm:
    return base
  return lambda count: base(count) * jnp.minimum(1.0, (count + 1) / warm)


def decay_mask(params):
  """True for the arrays weight decay applies to: kernels (two or more dimensions)."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, *, stride: int = 1,
                   lr_factor: float = 1.0,
                   budget_steps: int | None = None) -> optax.GradientTransformation:
  """The run's optimizer (applied to each stage's parameters on their own).

  optax's sgd / adamw chains, built from their parts so that the learning
  rate's step can be `strided`: with `stride` k each update advances the
  schedule by k base steps and multiplies the rate by `lr_factor` (a batch of
  k x --batch-size, `ldjax.train.adaptive`). The optimizer state has the same
  structure for every k, so the head's state continues across a change.

  With `budget_steps` the rate follows the `progress` every update is given
  (`progress_learning_rate`) over a schedule of that many base steps."""
  if budget_steps is not None:
    lr = progress_learning_rate(lr_schedule(cfg, steps_per_epoch, budget_steps), lr_factor)
  elif stride == 1 and lr_factor == 1.0:
    lr = optax.scale_by_learning_rate(lr_schedule(cfg, steps_per_epoch))
  else:
    lr = strided_learning_rate(lr_schedule(cfg, steps_per_epoch), stride, lr_factor)
  if cfg.optimizer == "adamw":   # optax.adamw
    return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999),
                       optax.add_decayed_weights(cfg.weight_decay, decay_mask), lr)
  momentum = (optax.trace(decay=cfg.momentum, nesterov=cfg.optimizer == "nesterov")
              if cfg.momentum else optax.identity())
  sgd = optax.chain(momentum, lr)   # optax.sgd
  if not cfg.weight_decay:
    return sgd
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), sgd)


def progress_learning_rate(schedule: optax.Schedule,
                           factor: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """optax.scale_by_learning_rate(schedule) at the `progress` passed to each update
  (an extra argument: base steps' worth of budget spent) instead of its count; the
  same state (optax.ScaleByScheduleState, still counting updates)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None, *, progress, **extra_args):
    del params, extra_args
    step_size = -factor * schedule(progress)
    updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)

  return optax.GradientTransformationExtraArgs(init, update)


def strided_learning_rate(schedule: optax.Schedule, stride: int,
                          factor: float) -> optax.GradientTransformation:
  """optax.scale_by_learning_rate(schedule), its count advanced by `stride` per update
  and its rate multiplied by `factor` (the same state: optax.ScaleByScheduleState)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    step_size = -factor * schedule(state.count)
    updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
    return updates, optax.ScaleByScheduleState(count=state.count + stride)

  return optax.GradientTransformation(init, update)
