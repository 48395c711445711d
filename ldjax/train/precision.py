"""Mixed precision: convolutions and dense layers in bfloat16, everything kept in float32.

`--precision bfloat16` runs every `nn.Conv` and `nn.Dense` of the stages in
bfloat16 (their inputs, kernels and biases cast; XLA accumulates in float32 on
the hardware that supports it) while
- the master weights, the optimizer state and the gradients stay float32
  (the cast is inside the differentiated function, so gradients flow back to
  the float32 parameters in float32);
- BatchNorm normalises with float32 statistics, and its running statistics
  are updated and kept in float32;
- stage outputs, logits and the loss are float32, so the scores S and A of
  Eq. 2 are summed in float32 from float32 gradients.

The casts are applied by a Flax method interceptor, so a user's own stages
built from `nn.Conv` / `nn.Dense` get the same treatment. Every program of a
run (train step, extraction, evaluation) uses the same precision, so a
stored feature map is what the frozen stages compute in the train step:
Freeze and Drop stay equal under bfloat16 too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldjax.models.staged import apply_stages
from ldjax.models.zoo import PRECISIONS

__all__ = ["PRECISIONS", "apply", "compute_dtype", "matmuls_in"]


def compute_dtype(precision: str):
  return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def _cast_matmul_inputs(dtype):
  def interceptor(next_fun, args, kwargs, context):
    if (context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense))
        and args and jnp.issubdtype(args[0].dtype, jnp.floating)):
      args = (args[0].astype(dtype), *args[1:])
    return next_fun(*args, **kwargs)
  return interceptor


@contextlib.contextmanager
def matmuls_in(dtype):
  """Within the block, `nn.Conv` and `nn.Dense` inputs are cast to `dtype`."""
  if dtype == jnp.float32:
    yield
    return
  with nn.intercept_methods(_cast_matmul_inputs(dtype)):
    yield


def apply(stages: Sequence[nn.Module], variables: Sequence[dict], x: jax.Array, dtype,
          **kwargs) -> tuple[jax.Array, list[dict]]:
  """`apply_stages` with its matrix products in `dtype`; output and the updated
  statistics in float32 (see the module docstring)."""
  if dtype == jnp.float32:
    return apply_stages(stages, variables, x, **kwargs)
  cast = [{k: jax.tree.map(lambda a: a.astype(dtype), c) if k == "params" else c
           for k, c in v.items()} for v in variables]
  with matmuls_in(dtype):
    out, new = apply_stages(stages, cast, x, **kwargs)
  new = [{**v, **{k: c for k, c in n.items() if k == "batch_stats"}}
         for v, n in zip(variables, new, strict=True)]
  return out.astype(jnp.float32), new
