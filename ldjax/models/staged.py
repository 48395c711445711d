"""A model as an explicit, ordered list of Flax stages, and its pure functions.

Learn & Drop cuts a network into a dropped prefix (the "tail") and a trained
suffix (the "head"). Here a model *is* its list of stages, and its variables
are a list with one ``{"params": ..., "batch_stats": ...}`` dict per stage, so
tail and head are plain slices of the same two sequences:

  y, _ = apply_stages(model.stages[:n], variables[:n], x)     # tail
  logits, _ = apply_stages(model.stages[n:], variables[n:], y)  # head

Every stage module is called as ``stage(x, train: bool)``; any Flax module with
that signature can be a stage, so users can build a `StagedModel` from their
own layers (see README).

The built-in VGG and ResNet models are in `ldjax.models.zoo`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class StagedModel:
  """An ordered list of stages; the last `num_dense` are the dense classifier.

  Dense stages are never scored nor dropped by Learn & Drop; the conv stages
  are the first `num_conv`.
  """
  name: str
  stages: tuple[nn.Module, ...]
  stage_names: tuple[str, ...]
  num_dense: int = 1

  def __post_init__(self):
    if len(self.stages) != len(self.stage_names):
      raise ValueError("stages and stage_names differ in length")
    if not 0 < self.num_dense < len(self.stages):
      raise ValueError("a staged model needs at least one conv and one dense stage")

  @property
  def num_stages(self) -> int:
    return len(self.stages)

  @property
  def num_conv(self) -> int:
    return len(self.stages) - self.num_dense

  def init(self, key: jax.Array, input_shape: Sequence[int]) -> list[dict]:
    """Variables per stage for inputs of shape (H, W, C). Works under jax.eval_shape.

    Jitted as a whole (op by op, every initialiser would compile on its own),
    with an "rbg" key derived from `key`: XLA:CPU compiles the threefry
    generator of every initialiser about 5x slower than RngBitGenerator.
    """
    init = functools.partial(init_stages, self.stages, input_shape=tuple(input_shape))
    return jax.jit(lambda k: init(_rbg_key(k)))(key)


def _rbg_key(key: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) == "rbg":
      return key
  else:   # a raw uint32 key from jax.random.PRNGKey
    key = jax.random.wrap_key_data(key)
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def init_stages(stages: Sequence[nn.Module], key: jax.Array,
                input_shape: Sequence[int]) -> list[dict]:
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = []
  for i, stage in enumerate(stages):
    v = stage.init({"params": jax.random.fold_in(key, i)}, x, train=False)
    variables.append(dict(v))
    x = stage.apply(v, x, train=False)
  return variables


def apply_stages(stages: Sequence[nn.Module], variables: Sequence[dict], x: jax.Array, *,
                 train: bool = False, rng: jax.Array | None = None, first_index: int = 0
                 ) -> tuple[jax.Array, list[dict]]:
  """Applies `stages` in order. Returns the output and the new variables.

  In training mode BatchNorm uses batch statistics and the returned variables
  carry the updated running statistics; in inference mode they are returned
  unchanged. Stage i's dropout key is `fold_in(rng, first_index + i)`, so a
  slice of the model given its absolute position draws the same randomness
  as the whole model.
  """
  new_variables = []
  for i, (stage, v) in enumerate(zip(stages, variables, strict=True)):
    if not train:
      x = stage.apply(v, x, train=False)
    else:
      rngs = {"dropout": jax.random.fold_in(rng, first_index + i)} if rng is not None else {}
      if "batch_stats" in v:
        x, updates = stage.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])
        v = {**v, **updates}
      else:
        x = stage.apply(v, x, train=True, rngs=rngs)
    new_variables.append(v)
  return x, new_variables


def count_params(variables: Sequence[dict] | dict) -> int:
  """Trainable parameters (the "params" collection) of a stage list or one stage."""
  if isinstance(variables, dict):
    variables = [variables]
  return sum(int(p.size) for v in variables for p in jax.tree.leaves(v.get("params", {})))


def stage_output_shapes(model: StagedModel, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
  """Per-stage output shapes (without batch), by abstract evaluation (no allocation)."""
  def run(key):
    variables = model.init(key, input_shape)
    x = jnp.zeros((1, *input_shape), jnp.float32)
    outs = []
    for stage, v in zip(model.stages, variables):
      x = stage.apply(v, x, train=False)
      outs.append(x)
    return outs
  outs = jax.eval_shape(run, jax.random.key(0))
  return [tuple(o.shape[1:]) for o in outs]


def abstract_variables(model: StagedModel, input_shape: Sequence[int]) -> list[dict]:
  """Shape/dtype structs of the variables, without allocating them."""
  return jax.eval_shape(lambda k: model.init(k, input_shape), jax.random.key(0))

