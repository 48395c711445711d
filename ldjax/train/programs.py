"""The compiled programs of a run, as values built by functions of what they need.

A `Net` is the static part every program shares: the stages, their output
shapes and the input normalisation. Each function compiles one program for a
slice of the stages, ahead of time, from shapes only (`structs`), so it can
run in a background thread while the train step donates the arrays:
- `train_step`: the scored step of the head [cut, L) with frozen stages
  [store_cut, cut) in front, reading images (store_cut 0) or stored features;
- `extraction`: stages [start, stop) in inference mode, for feature stores;
- `evaluation`: summed test loss and correct count of stages [start, L).

`Programs` is what one run compiles, made by `for_model` from the model, the
shapes of its variables and data, the placement and the settings the programs
read (batch size, store dtype, precision, the optimizer's and the adaptive
batch's settings): its `step`, `head_step` and `extraction` give a run's
programs for any cut, the same ones the `ldjax.train.epoch.Trainer` trains
with, so that a benchmark or a cost measurement (`ldjax.train.budget.measure`)
can compile them without a Trainer.

The Net's `placement` (`ldjax.train.sharding`) says which devices a program
runs on: each is compiled for batches sharded over the mesh's "data" axis and
for replicated variables, states and scores; on one device the mesh has one
device and the programs are those of a plain `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from ldjax.models import costs
from ldjax.models.staged import StagedModel
from ldjax.store.features import storage_dtype
from ldjax.train import scoring, steps
from ldjax.train.adaptive import AdaptiveSettings, fits_memory, lr_scale, multiplier
from ldjax.train.optim import OptimSettings, make_optimizer
from ldjax.train.precision import compute_dtype
from ldjax.train.sharding import Placement


def structs(tree):
  """The shapes and dtypes of a pytree of arrays (enough to compile for it)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


@dataclasses.dataclass(frozen=True)
class Net:
  """What every program of a staged model needs besides variables."""
  stages: tuple[nn.Module, ...]
  image_shape: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]   # output shape of each stage, without the batch
  mean: tuple[float, ...]
  std: tuple[float, ...]
  precision: str = "float32"            # of the matrix products (`ldjax.train.precision`)
  placement: Placement = dataclasses.field(default_factory=Placement.of)   # the devices

  @property
  def static(self) -> dict:
    """The static arguments every step shares: normalisation and compute dtype."""
    return dict(mean=self.mean, std=self.std,
                compute_dtype=compute_dtype(self.precision))

  def input_struct(self, start: int, batch: int, dtype) -> jax.ShapeDtypeStruct:
    """A batch entering stage `start`: uint8 images at 0, else features of `dtype`."""
    if start == 0:
      return self.batch_struct((batch, *self.image_shape), np.uint8)
    return self.batch_struct((batch, *self.shapes[start - 1]), dtype)

  def batch_struct(self, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    """A batch-major array sharded over the devices' "data" axis."""
    return self.placement.batch_struct(jax.ShapeDtypeStruct(shape, dtype))


def train_step(net: Net, tx: optax.GradientTransformation, variables: Sequence[dict],
               opt_states: Sequence, store_cut: int, cut: int, batch: int,
               feature_dtype, label_smoothing: float = 0.0,
               round_at: tuple[int, ...] = ()) -> steps.Compiled:
  """`steps.scored_train_step` of the head [cut, L), its state and scores donated; the
  frozen stages' maps rounded to `feature_dtype` after the first b of them for each b in
  `round_at` (`steps.frozen_forward`)."""
  params, stats = steps.split_variables(variables[cut:])
  p = net.placement
  state = p.structs(steps.TrainState(params, stats, list(opt_states[cut:])))
  return steps.compile_fn(
      steps.scored_train_step, state, p.structs(scoring.init(params)),
      p.structs(list(variables[store_cut:cut])), net.input_struct(store_cut, batch, feature_dtype),
      net.batch_struct((batch,), np.int32), p.structs(jax.random.key(0)), np.int32(0),
      np.float32(0),
      donate_argnums=(0, 1), out_shardings=p.replicated, head_stages=net.stages[cut:],
      frozen_stages=net.stages[store_cut:cut], tx=tx, head_index=cut,
      label_smoothing=label_smoothing, round_at=round_at, store_dtype=feature_dtype,
      **net.static)


def extraction(net: Net, variables: Sequence[dict], start: int, stop: int, batch: int, *,
               in_dtype, out_dtype, sharded: bool = False,
               round_at: tuple[int, ...] = ()) -> steps.Compiled:
  """`steps.extract_features` of stages [start, stop); `in_dtype` of features (start > 0);
  the maps rounded to `out_dtype` after the first b stages for each b in `round_at`.

  The output is `host_readable` (every process can read all of it), or sharded
  over "data" like its input with `sharded` (each process reads its own rows,
  `sharding.LocalRows`; the training stores)."""
  p = net.placement
  return steps.compile_fn(
      steps.extract_features, p.structs(list(variables[start:stop])),
      net.input_struct(start, batch, in_dtype),
      out_shardings=p.batch if sharded else p.host_readable,
      stages=net.stages[start:stop], out_dtype=out_dtype, round_at=round_at, **net.static)


def evaluation(net: Net, variables: Sequence[dict], start: int, batch: int) -> steps.Compiled:
  """`steps.eval_step` of stages [start, L) on images (0) or float32 features."""
  return steps.compile_fn(
      steps.eval_step, net.placement.structs(list(variables[start:])),
      net.input_struct(start, batch, np.float32), net.batch_struct((batch,), np.int32),
      net.batch_struct((batch,), np.bool_), out_shardings=net.placement.replicated,
      stages=net.stages[start:], **net.static)


@dataclasses.dataclass(frozen=True)
class Programs:
  """What one run compiles, for any cut: everything its programs need but the values
  of the variables (`for_model` makes it).

  `net` runs on the head's input (images, or stored features), `view_net` on the
  stored views the extractions read (the padded images with the window crop
  store; else `net` itself). `variables` and `opt_states` are shapes only
  (`structs`), one entry per stage. The optimizer follows `optim` over
  `schedule_steps` base steps, or over `budget_steps` with a budget
  (`with_budget`); a step on k x `batch_size` examples (`--adaptive-batch`) has
  its learning rate scaled by `adaptive.lr_rule`.
  """
  net: Net
  view_net: Net
  macs: tuple[int, ...]        # per example, of each stage on `net`'s input
  view_macs: tuple[int, ...]   # the same on `view_net`'s
  variables: tuple             # structs of the variables
  opt_states: tuple            # structs of the optimizer states
  batch_size: int              # the base batch (--batch-size), over all processes
  n_train: int                 # examples of one epoch, over all processes
  feature_dtype: np.dtype      # of the stores
  optim: OptimSettings
  adaptive: AdaptiveSettings
  schedule_steps: int          # the schedule's length without a budget, in base steps
  budget_steps: int | None = None

  @property
  def placement(self) -> Placement:
    return self.net.placement

  @property
  def shapes(self) -> tuple[tuple[int, ...], ...]:
    """The output shape of each stage on the head's input (no batch)."""
    return self.net.shapes

  @property
  def steps_per_epoch(self) -> int:
    """Base steps (of `batch_size`) in an epoch."""
    return self.n_train // self.batch_size

  def with_budget(self, budget_steps: int | None) -> Programs:
    """The same programs with the learning-rate schedule of a budget of `budget_steps`
    base steps (`ldjax.train.budget`), or without a budget (None)."""
    return dataclasses.replace(self, budget_steps=budget_steps)

  def optimizer(self, k: int = 1) -> optax.GradientTransformation:
    """The optimizer of a step on k x `batch_size` examples (its rate strided and scaled
    for them, `ldjax.train.adaptive`)."""
    if k == 1:
      return make_optimizer(self.optim, self.steps_per_epoch, self.schedule_steps,
                            budget_steps=self.budget_steps)
    return make_optimizer(self.optim, self.steps_per_epoch, self.schedule_steps, stride=k,
                          lr_factor=lr_scale(k, self.adaptive.lr_rule),
                          budget_steps=self.budget_steps)

  def rounding(self, boundaries: Sequence[int], start: int, stop: int) -> tuple[int, ...]:
    """Where a frozen pass over stages [start, stop) rounds its maps to the store's dtype:
    after its first c - start stages for each boundary start < c <= stop (the cuts where
    Drop holds a store, `ldjax.train.decisions.DropState.boundaries`). None with float32
    stores, whose programs stay those without rounding."""
    if self.feature_dtype == np.float32:
      return ()
    return tuple(sorted({c - start for c in boundaries if start < c <= stop}))

  def step(self, store_cut: int, cut: int, k: int = 1,
           boundaries: Sequence[int] = ()) -> steps.Compiled:
    """The train step with stages [0, store_cut) stored and [store_cut, cut) frozen, on
    batches of k x `batch_size`; the frozen maps rounded at `boundaries` as the stores
    round them (`rounding`), so that Freeze reads what Drop reads."""
    return train_step(self.net, self.optimizer(k), self.variables, self.opt_states, store_cut,
                      cut, self.batch_size * k, self.feature_dtype,
                      label_smoothing=self.optim.label_smoothing,
                      round_at=self.rounding(boundaries, store_cut, cut))

  def multiplier(self, cut: int) -> int:
    """k of the head at `cut`: 1 unless `adaptive.enabled` (`ldjax.train.adaptive`)."""
    if not self.adaptive.enabled:
      return 1
    return multiplier(self.macs, cut, batch_size=self.batch_size, n_train=self.n_train,
                      max_batch_size=self.adaptive.max_batch_size)

  def head_step(self, store_cut: int, cut: int,
                boundaries: Sequence[int] = ()) -> tuple[steps.Compiled, int]:
    """(step, k): the `step` of (store_cut, cut) and `boundaries` at the head's batch
    multiplier (`multiplier`), halved while the step does not fit the device's memory."""
    k = self.multiplier(cut)
    device = next(d for d in self.placement.mesh.devices.flat   # one of this process's
                  if d.process_index == jax.process_index())
    while True:
      compiled = self.step(store_cut, cut, k, boundaries)
      # With several processes only --max-batch-size caps k: their memory checks could
      # disagree, and this runs in a thread, where a collective to agree could cross the
      # main thread's (the processes must run the same steps).
      if k == 1 or jax.process_count() > 1 or fits_memory(compiled.fn, device):
        return compiled, k
      k //= 2

  def extraction(self, start: int, stop: int, k: int = 1, *, views: bool = True,
                 boundaries: Sequence[int] = ()) -> steps.Compiled:
    """Stages [start, stop) on a batch of k x `batch_size` stored views (`views`; on the
    head's input else), out in the store's dtype, sharded like its input (each process
    reads its own rows: `Placement.local_rows`); the maps rounded on the way at the
    `boundaries` inside (start, stop) (`rounding`), as a chain of stores would be."""
    round_at = tuple(b for b in self.rounding(boundaries, start, stop) if b < stop - start)
    return extraction(self.view_net if views else self.net, self.variables, start, stop,
                      self.batch_size * k, in_dtype=self.feature_dtype,
                      out_dtype=self.feature_dtype, sharded=True, round_at=round_at)


def for_model(model: StagedModel, variables: Sequence[dict], *, image_shape, mean, std,
              view_shape, placement: Placement, batch_size: int, n_train: int, epochs: int,
              precision: str, feature_dtype: str, optim: OptimSettings,
              adaptive: AdaptiveSettings) -> Programs:
  """The `Programs` of a run of `model` (its `variables`: arrays or shapes) on images of
  `image_shape` normalised with `mean` and `std`, whose stores hold views of
  `view_shape`; `n_train` examples an epoch, `epochs` of them without a budget.
  `precision`: of the matrix products; `feature_dtype`: the stores' (store.dtype)."""
  stage_costs = costs.stage_costs(model, image_shape)   # one abstract trace for both
  shapes = tuple(c.output_shape for c in stage_costs)
  net = Net(tuple(model.stages), tuple(image_shape), shapes, tuple(mean), tuple(std),
            precision, placement)
  view_net, macs = net, tuple(c.macs for c in stage_costs)
  view_macs = macs
  if tuple(view_shape) != tuple(image_shape):
    view_costs = costs.stage_costs(model, tuple(view_shape))
    view_net = dataclasses.replace(net, image_shape=tuple(view_shape),
                                   shapes=tuple(c.output_shape for c in view_costs))
    view_macs = tuple(c.macs for c in view_costs)
  schedule_steps = epochs * (n_train // batch_size)
  tx = make_optimizer(optim, n_train // batch_size, schedule_steps)
  opt_states = [jax.eval_shape(tx.init, v.get("params", {})) for v in variables]
  return Programs(net, view_net, macs, view_macs, tuple(structs(list(variables))),
                  tuple(structs(opt_states)), batch_size, n_train, storage_dtype(feature_dtype),
                  optim, adaptive, schedule_steps)
