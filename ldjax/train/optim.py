"""Optimizers and learning-rate schedules of a run, built from optax by `OptimSettings`.

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

from ldjax import settings
from ldjax.errors import UsageError

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimSettings", "decay_mask", "lr_schedule",
           "make_optimizer", "strided_learning_rate"]

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


@settings.group("optim", "the optimizer and its learning-rate schedule")
class OptimSettings:
  """The optimizer, its learning-rate schedule and the training loss's label smoothing."""
  optimizer: str = settings.setting(
      "sgd", f"one of {', '.join(OPTIMIZERS)} (default: sgd, the paper's)")
  lr: float = settings.setting(0.001, "learning rate", common=True)
  momentum: float = settings.setting(
      0.9, "momentum of sgd and nesterov (default 0.9; adamw uses betas 0.9/0.999)")
  weight_decay: float = settings.setting(
      0.0, "weight decay of conv and dense kernels (not biases or BatchNorm); coupled (L2 in "
      "the gradient) for sgd/nesterov, decoupled for adamw (default 0)")
  schedule: str | None = settings.setting(
      None, f"learning-rate schedule by global step: {', '.join(SCHEDULES)} (default: step if "
      "--lr-decay-epoch is set, else constant)")
  lr_decay_epoch: int | None = settings.setting(
      None, "with --schedule step: multiply the learning rate by --lr-decay-factor from this "
      "epoch on")
  lr_decay_factor: float = settings.setting(
      0.1, "with --schedule step: the factor of the lr decay (default 0.1)")
  warmup_lr_epochs: int = settings.setting(
      0, "linear learning-rate warm-up over the first E epochs (onecycle: its rise); not the "
      "Learn & Drop --warmup (default 0)", metavar="E")
  label_smoothing: float = settings.setting(
      0.0, "label smoothing of the training loss, in [0, 1) (default 0)")

  def check(self):
    settings.check_choice(self.optimizer, "optim.optimizer", OPTIMIZERS)
    settings.check_float(self.lr, "optim.lr", "a finite number > 0", lambda v: v > 0)
    settings.check_float(self.momentum, "optim.momentum", "a finite number in [0, 1)",
                         lambda v: 0 <= v < 1)
    settings.check_float(self.weight_decay, "optim.weight_decay", "a finite number >= 0",
                         lambda v: v >= 0)
    if self.schedule is not None:
      settings.check_choice(self.schedule, "optim.schedule", SCHEDULES)
    if self.lr_decay_epoch is not None:
      settings.check_int(self.lr_decay_epoch, "optim.lr_decay_epoch",
                         "an integer > 0 (or unset)", lambda v: v > 0)
    settings.check_float(self.lr_decay_factor, "optim.lr_decay_factor",
                         "a finite number in (0, 1]", lambda v: 0 < v <= 1)
    settings.check_int(self.warmup_lr_epochs, "optim.warmup_lr_epochs", "an integer >= 0",
                       lambda v: v >= 0)
    settings.check_float(self.label_smoothing, "optim.label_smoothing",
                         "a finite number in [0, 1)", lambda v: 0 <= v < 1)
    if self.optimizer == "nesterov" and not self.momentum:
      raise UsageError("optim.optimizer nesterov needs optim.momentum > 0")
    if self.schedule_name == "step" and self.lr_decay_epoch is None:
      raise UsageError("optim.schedule step needs optim.lr_decay_epoch (the epoch the lr "
                       "drops at)")
    if self.schedule_name != "step" and self.lr_decay_epoch is not None:
      raise UsageError(f"optim.lr_decay_epoch only applies to optim.schedule step, not "
                       f"{self.schedule_name}; drop one of them")

  @property
  def schedule_name(self) -> str:
    """The schedule in effect: `schedule`, or the paper's reading of `lr_decay_epoch`."""
    if self.schedule is not None:
      return self.schedule
    return "constant" if self.lr_decay_epoch is None else "step"


def lr_schedule(cfg: OptimSettings, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the global step (see the module docstring) over a
  schedule of `total_steps` (a run's epochs of `steps_per_epoch`, or a budget's)."""
  name = cfg.schedule_name
  total = total_steps
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


def make_optimizer(cfg: OptimSettings, steps_per_epoch: int, total_steps: int, *,
                   stride: int = 1, lr_factor: float = 1.0,
                   budget_steps: int | None = None) -> optax.GradientTransformation:
  """The run's optimizer (applied to each stage's parameters on their own).

  optax's sgd / adamw chains, built from their parts so that the learning
  rate's step can be `strided`: with `stride` k each update advances the
  schedule by k base steps and multiplies the rate by `lr_factor` (a batch of
  k x --batch-size, `ldjax.train.adaptive`). The optimizer state has the same
  structure for every k, so the head's state continues across a change.

  With `budget_steps` the rate follows the `progress` every update is given
  (`progress_learning_rate`) over a schedule of that many base steps instead of
  `total_steps`."""
  if budget_steps is not None:
    lr = progress_learning_rate(lr_schedule(cfg, steps_per_epoch, budget_steps), lr_factor)
  elif stride == 1 and lr_factor == 1.0:
    lr = optax.scale_by_learning_rate(lr_schedule(cfg, steps_per_epoch, total_steps))
  else:
    lr = strided_learning_rate(lr_schedule(cfg, steps_per_epoch, total_steps), stride,
                               lr_factor)
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
