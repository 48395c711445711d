"""Per-stage cost accounting: parameters and multiply-accumulates (MACs).

Learn & Drop saves compute by not running the dropped stages, so the library
needs to know what each stage costs. Everything here works by abstract
evaluation (shapes only, nothing is allocated), so even ResNet-152 at 224x224
is counted in seconds.

MACs are counted from each stage's jaxpr (traced with batch 1 in inference
mode), per example:

- ``conv_general_dilated``: output elements x kernel spatial size x input
  channels per group (``in_channels / feature_group_count``);
- ``dot_general``: output elements x contracted size.

Only conv and dense (matmul) MACs are counted. This is what fvcore reports and
the dominant term of ptflops; ptflops additionally counts about one op per
element for BatchNorm, ReLU, pooling and bias adds, and that is the only
difference (well under 1% for the built-in models). For example, at
224x224x3 with 1000 classes: resnet18 ~1.814 GMACs, resnet50 ~4.09 GMACs,
vgg16_bn ~15.47 GMACs, matching the torchvision figures.

`training_macs` turns forward MACs into the cost of one training step, and
`xla_flops` / `jit_flops` read XLA's own estimate from a compiled function, as
a cross-check that includes everything the compiler actually emits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from ldjax.errors import UsageError
from ldjax.models.staged import StagedModel, count_params
from ldjax.strategy import NAMES as TRAINING_MODES, Strategy


@dataclasses.dataclass(frozen=True)
class StageCost:
  """What one stage costs per example: its output shape, parameters and forward MACs."""
  index: int
  name: str
  output_shape: tuple[int, ...]
  params: int
  macs: int


# ---------------------------------------------------------------------------
# Counting MACs in a jaxpr

def _eqn_macs(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    # rhs_spec = (out-feature dim, in-feature dim, *spatial dims). The kernel's
    # in-feature size is already in_channels / feature_group_count.
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    per_output = rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[d] for d in rhs_spec[2:])
    return math.prod(out.shape) * per_output
  if name == "dot_general":
    lhs = eqn.invars[0].aval
    out = eqn.outvars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
  return 0


def _as_jaxpr(obj) -> Any | None:
  """The open Jaxpr inside `obj` if it is a (closed) jaxpr, else None."""
  if isinstance(obj, jex_core.ClosedJaxpr):
    return obj.jaxpr
  if isinstance(obj, jex_core.Jaxpr):
    return obj
  return None


def _sub_jaxprs(value) -> list:
  if (j := _as_jaxpr(value)) is not None:
    return [j]
  if isinstance(value, (tuple, list)):
    return [j for v in value if (j := _as_jaxpr(v)) is not None]
  return []


def jaxpr_macs(jaxpr) -> int:
  """Conv + matmul MACs of a (closed) jaxpr, recursing into sub-jaxprs.

  Sub-jaxprs of call-like primitives (pjit, closed_call, remat, custom_jvp /
  custom_vjp, ...) count once; `scan` bodies count `length` times; of `cond`
  branches only the most expensive counts (one of them runs); `while` bodies
  count once, since the trip count is unknown at trace time.
  """
  jaxpr = _as_jaxpr(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    name = eqn.primitive.name
    if name == "cond":
      total += max((jaxpr_macs(b) for b in eqn.params["branches"]), default=0)
      continue
    # Only the jaxpr params are subcomputations; avoid walking other params
    # twice (e.g. while's cond_jaxpr and body_jaxpr are distinct and both run).
    sub = sum(jaxpr_macs(j) for value in eqn.params.values() for j in _sub_jaxprs(value))
    if name == "scan":
      sub *= int(eqn.params["length"])
    total += sub
  return total


# ---------------------------------------------------------------------------
# Per-stage costs

def _abstract_trace(model: StagedModel, input_shape: Sequence[int]):
  """Abstract variables and abstract batch-1 input of every stage, in one pass."""
  input_shape = tuple(int(d) for d in input_shape)

  def run(key):
    variables = model.init(key, input_shape)
    x = jnp.zeros((1, *input_shape), jnp.float32)
    inputs = []
    for stage, v in zip(model.stages, variables):
      inputs.append(x)
      x = stage.apply(v, x, train=False)
    return variables, inputs, x

  return jax.eval_shape(run, jax.random.key(0))


def _stage_costs(model: StagedModel, input_shape: Sequence[int]) -> list[StageCost]:
  variables, inputs, last = _abstract_trace(model, input_shape)
  outputs = list(inputs[1:]) + [last]
  costs = []
  for i, (stage, v, x, y) in enumerate(zip(model.stages, variables, inputs, outputs)):
    # Bind the stage as a default so each lambda traces its own stage.
    jaxpr = jax.make_jaxpr(lambda v, x, stage=stage: stage.apply(v, x, train=False))(v, x)
    costs.append(StageCost(index=i, name=model.stage_names[i], output_shape=tuple(y.shape[1:]),
                           params=count_params(v), macs=int(jaxpr_macs(jaxpr))))
  return costs


def stage_costs(model: StagedModel, input_shape: Sequence[int]) -> list[StageCost]:
  """Index, name, output shape (no batch), trainable params and forward MACs per stage."""
  return _stage_costs(model, input_shape)


def stage_macs(model: StagedModel, input_shape: Sequence[int]) -> list[int]:
  """Forward conv + dense MACs per example, one entry per stage."""
  return [c.macs for c in _stage_costs(model, input_shape)]


def stage_params(model: StagedModel, input_shape: Sequence[int]) -> list[int]:
  """Trainable parameters per stage (abstract evaluation, nothing allocated)."""
  variables, _, _ = _abstract_trace(model, input_shape)
  return [count_params(v) for v in variables]


def training_macs(macs_per_stage: Sequence[int], cut: int, mode: str) -> int:
  """Per-example MACs of one training step when stages [:cut] are not trained.

  Convention: the backward pass of a differentiated stage costs 2x its forward
  (one pass for the gradient w.r.t. its input, one for the gradient w.r.t. its
  weights), so a trained stage costs 3x forward.

  - "sgd": everything is trained: 3 * sum(all); `cut` is ignored.
  - "freeze": stages [:cut] run forward only (no gradients flow into them):
    sum(all[:cut]) + 3 * sum(all[cut:]).
  - "drop" (Learn & Drop): stages [:cut] are not run at all, the trained
    suffix starts from cached activations: 3 * sum(all[cut:]).
  """
  if mode not in TRAINING_MODES:
    raise UsageError(f"unknown training mode {mode!r}; choose one of: {', '.join(TRAINING_MODES)}")
  macs = [int(m) for m in macs_per_stage]
  if not 0 <= cut <= len(macs):
    raise UsageError(f"cut must be between 0 and {len(macs)}, got {cut}")
  prefix, suffix = sum(macs[:cut]), sum(macs[cut:])
  if mode == Strategy.SGD:
    return 3 * (prefix + suffix)
  if mode == Strategy.FREEZE:
    return prefix + 3 * suffix
  return 3 * suffix


# ---------------------------------------------------------------------------
# XLA's own estimate

def xla_flops(compiled_or_lowered: Any) -> float | None:
  """The "flops" of XLA's cost analysis of a `jax.stages.Compiled` or `Lowered`.

  Depending on the jax version and backend, `cost_analysis()` returns a dict, a
  list with one dict per device/module, or None, or raises; a missing estimate
  gives None. Note XLA counts a multiply-add as 2 flops.
  """
  try:
    analysis = compiled_or_lowered.cost_analysis()
  except Exception:  # Some backends do not implement it at all.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not isinstance(analysis, dict):
    return None
  flops = analysis.get("flops")
  if flops is None:
    return None
  flops = float(flops)
  # XLA reports -1 (or nonsense) when it could not estimate.
  return flops if flops >= 0 and math.isfinite(flops) else None


def jit_flops(fn: Callable, *args) -> float | None:
  """XLA's flop estimate for `jax.jit(fn)(*args)` (args may be ShapeDtypeStructs)."""
  return xla_flops(jax.jit(fn).lower(*args).compile())
