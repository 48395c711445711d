"""The compiled programs of a run, as values built by functions of what they need.

A `Net` is the static part every program shares: the stages, their output
shapes and the input normalisation. Each function compiles one program for a
slice of the stages, ahead of time, from shapes only (`structs`), so it can
run in a background thread while the train step donates the arrays:
- `train_step`: the scored step of the head [cut, L) with frozen stages
  [store_cut, cut) in front, reading images (store_cut 0) or stored features;
- `extraction`: stages [start, stop) in inference mode, for feature stores;
- `evaluation`: summed test loss and correct count of stages [start, L).

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

from ldjax.train import precision, scoring, steps
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
                compute_dtype=precision.compute_dtype(self.precision))

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
               feature_dtype, label_smoothing: float = 0.0) -> steps.Compiled:
  """`steps.scored_train_step` of the head [cut, L), its state and scores donated."""
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
      label_smoothing=label_smoothing, **net.static)


def extraction(net: Net, variables: Sequence[dict], start: int, stop: int, batch: int, *,
               in_dtype, out_dtype, sharded: bool = False) -> steps.Compiled:
  """`steps.extract_features` of stages [start, stop); `in_dtype` of features (start > 0).

  The output is `host_readable` (every process can read all of it), or sharded
  over "data" like its input with `sharded` (each process reads its own rows,
  `sharding.LocalRows`; the training stores)."""
  p = net.placement
  return steps.compile_fn(
      steps.extract_features, p.structs(list(variables[start:stop])),
      net.input_struct(start, batch, in_dtype),
      out_shardings=p.batch if sharded else p.host_readable,
      stages=net.stages[start:stop], out_dtype=out_dtype, **net.static)


def evaluation(net: Net, variables: Sequence[dict], start: int, batch: int) -> steps.Compiled:
  """`steps.eval_step` of stages [start, L) on images (0) or float32 features."""
  return steps.compile_fn(
      steps.eval_step, net.placement.structs(list(variables[start:])),
      net.input_struct(start, batch, np.float32), net.batch_struct((batch,), np.int32),
      net.batch_struct((batch,), np.bool_), out_shardings=net.placement.replicated,
      stages=net.stages[start:], **net.static)
