"""Pure train, evaluation and feature-extraction steps on staged models.

One train step serves all three strategies. Its model is split in two:
`frozen_stages` run first in inference mode and are not differentiated, then
`head_stages` are trained. Plain SGD has no frozen stages and reads images;
Freeze passes the frozen prefix and reads images; Drop reads the cached output
of the dropped prefix (with frozen stages only where a store could not be
written). With a store dtype other than float32 the frozen stages' maps are
rounded to it where Drop holds a store (`frozen_forward`), so that Freeze reads
what Drop reads. Only the head's
parameters are arguments of `jax.grad`, so no gradient is ever computed for
frozen or dropped stages (masking an optimizer does not guarantee that).

The step functions are top-level and pure; `compile_*` helpers jit them with
`functools.partial` over the static parts (stages, optimizer, normalisation)
and compile them ahead of time, which also yields the compile time and XLA's
FLOP count. A compiled function never retraces: one compile per drop decision.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from ldjax.models import costs
from ldjax.train import precision, scoring

PyTree = Any


class TrainState(NamedTuple):
  """What the head step updates: one entry per head stage in each list."""
  params: list[PyTree]
  batch_stats: list[PyTree]     # {} for stages without BatchNorm
  opt_state: list[PyTree]       # one optimizer state per stage, so it slices with the head


def split_variables(variables: Sequence[dict]) -> tuple[list, list]:
  return ([v.get("params", {}) for v in variables],
          [v.get("batch_stats", {}) for v in variables])


def merge_variables(params: Sequence[PyTree], batch_stats: Sequence[PyTree]) -> list[dict]:
  """Inverse of `split_variables`; a stage keeps only the collections it has."""
  return [{**({"params": p} if p else {}), **({"batch_stats": b} if b else {})}
          for p, b in zip(params, batch_stats, strict=True)]


def head_state(variables: Sequence[dict], opt_states: Sequence, cut: int) -> TrainState:
  """The state of the head [cut, L): its slice of the variables and optimizer states."""
  params, stats = split_variables(variables[cut:])
  return TrainState(params, stats, list(opt_states[cut:]))


def init_train_state(variables: Sequence[dict], tx: optax.GradientTransformation) -> TrainState:
  params, stats = split_variables(variables)
  return TrainState(params, stats, [tx.init(p) for p in params])


def prepare_input(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Images arrive as uint8 and are normalised here, on the device; cached
  features (float32 or bfloat16) are only cast to float32."""
  if x.dtype == jnp.uint8:
    return (x.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
        std, jnp.float32)
  return x.astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy; with `label_smoothing` a, against (1 - a) one-hot + a / classes."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def round_to(h: jax.Array, dtype) -> jax.Array:
  """float32 `h` rounded to `dtype`'s precision (to nearest even), still float32: what
  a store of `dtype` holds and a step reads back. `reduce_precision` rather than two
  casts, which XLA may fold where it allows excess precision (on GPUs)."""
  info = jnp.finfo(dtype)
  return jax.lax.reduce_precision(h, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def frozen_forward(stages: Sequence[nn.Module], variables: Sequence[dict], h: jax.Array,
                   compute_dtype: Any = jnp.float32, round_at: Sequence[int] = (),
                   store_dtype: Any = jnp.float32) -> jax.Array:
  """`stages` in inference mode; the maps after the first b of them, for each b in
  `round_at` (1..len(stages)), rounded to `store_dtype` (`round_to`) as a store of that
  dtype holds them (`ldjax.train.decisions.DropState.boundaries`)."""
  if not round_at:
    return precision.apply(stages, variables, h, compute_dtype, train=False)[0]
  edges = sorted({0, len(stages), *round_at})
  for a, b in zip(edges, edges[1:]):
    h, _ = precision.apply(stages[a:b], variables[a:b], h, compute_dtype, train=False)
    if b in round_at:
      h = round_to(h, store_dtype)
  return h


def train_step(state: TrainState, frozen_variables: Sequence[dict], x: jax.Array,
               y: jax.Array, rng: jax.Array, progress: jax.Array | float = 0.0, *, head_stages: Sequence[nn.Module],
               frozen_stages: Sequence[nn.Module], tx: optax.GradientTransformation,
               mean: Sequence[float], std: Sequence[float], head_index: int = 0,
               label_smoothing: float = 0.0, compute_dtype: Any = jnp.float32,
               round_at: Sequence[int] = (), store_dtype: Any = jnp.float32):
  """One optimizer step of the head. Returns (new state, metrics, per-stage gradients).

  `head_index` is the head's position in the whole model; it keys the
  dropout randomness so that every split of the model draws the same masks.
  `progress` is passed to the optimizer's update (a budget's schedule reads it,
  `ldjax.train.optim.progress_learning_rate`; other optimizers ignore it).
  `round_at` and `store_dtype`: where the frozen stages' maps are rounded as a store
  of that dtype would round them (`frozen_forward`; none: nothing changes).
  """
  h = prepare_input(x, mean, std)
  if frozen_stages:
    h = frozen_forward(frozen_stages, frozen_variables, h, compute_dtype, round_at, store_dtype)
    h = jax.lax.stop_gradient(h)
  first = head_index

  def loss_fn(params):
    variables = merge_variables(params, state.batch_stats)
    logits, new_vars = precision.apply(head_stages, variables, h, compute_dtype, train=True,
                                       rng=rng, first_index=first)
    new_stats = [v.get("batch_stats", {}) for v in new_vars]
    return cross_entropy(logits, y, label_smoothing), (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_params, new_opt = [], []
  tx = optax.with_extra_args_support(tx)
  for p, g, s in zip(state.params, grads, state.opt_state, strict=True):
    updates, s = tx.update(g, s, p, progress=progress)
    new_params.append(optax.apply_updates(p, updates))
    new_opt.append(s)
  # The loss alone misses some divergence: ReLU can map NaN maps to 0, and a
  # finite loss then hides NaN weights.
  # One reduction over all the weights (per-array reductions cost compile time).
  leaves = [jnp.ravel(w).astype(jnp.float32) for w in jax.tree.leaves(new_params)]
  finite = jnp.isfinite(loss)
  if leaves:
    finite &= jnp.all(jnp.isfinite(jnp.concatenate(leaves)))
  metrics = {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == y), "finite": finite}
  return TrainState(new_params, new_stats, new_opt), metrics, grads


def scored_train_step(state: TrainState, scores: scoring.ScoreState,
                      frozen_variables: Sequence[dict], x: jax.Array, y: jax.Array,
                      rng: jax.Array, step: jax.Array, progress: jax.Array, **static):
  """`train_step` plus folding its gradients into the running layer scores."""
  state, metrics, grads = train_step(state, frozen_variables, x, y,
                                     jax.random.fold_in(rng, step), progress, **static)
  return state, scoring.update(grads, scores), metrics


def extract_features(variables: Sequence[dict], x: jax.Array, *,
                     stages: Sequence[nn.Module], mean: Sequence[float],
                     std: Sequence[float], out_dtype: Any,
                     compute_dtype: Any = jnp.float32, round_at: Sequence[int] = ()) -> jax.Array:
  """Output of `stages` in inference mode (BatchNorm on running statistics), in
  `out_dtype`; the maps after the first b stages, for each b in `round_at` (inner
  boundaries), rounded to `out_dtype` on the way (`frozen_forward`): a chain of stores
  computed in one pass."""
  h = frozen_forward(stages, variables, prepare_input(x, mean, std), compute_dtype, round_at,
                     out_dtype)
  return h.astype(out_dtype)


def eval_step(variables: Sequence[dict], x: jax.Array, y: jax.Array, mask: jax.Array, *,
              stages: Sequence[nn.Module], mean: Sequence[float], std: Sequence[float],
              compute_dtype: Any = jnp.float32):
  """Summed loss and correct count of the full model over the unmasked examples."""
  logits, _ = precision.apply(stages, variables, prepare_input(x, mean, std), compute_dtype,
                              train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = (jnp.argmax(logits, -1) == y) & mask
  return {"loss": jnp.sum(jnp.where(mask, losses, 0.0)), "correct": jnp.sum(correct)}


class Compiled(NamedTuple):
  fn: Any            # a jax.stages.Compiled
  seconds: float     # lowering + compilation time
  flops: float | None  # XLA's FLOP count of one call


def compile_fn(fn, *example_args, donate_argnums=(), out_shardings=None, **static) -> Compiled:
  """jit(partial(fn, **static)) compiled ahead of time for `example_args`' shapes.

  The inputs' shardings are those of `example_args` (`jax.ShapeDtypeStruct`s
  may carry one); `out_shardings`, if given, places the outputs
  (`ldjax.train.sharding`). Without either, the program runs on one device.
  """
  t0 = time.perf_counter()
  placed = {} if out_shardings is None else {"out_shardings": out_shardings}
  jitted = jax.jit(functools.partial(fn, **static), donate_argnums=donate_argnums, **placed)
  compiled = jitted.lower(*example_args).compile()
  seconds = time.perf_counter() - t0
  return Compiled(compiled, seconds, costs.xla_flops(compiled))
