"""Tests of ldjax.costs: MAC counting (by hand and against published figures), training costs, XLA flops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from ldjax.models.costs import (StageCost, jaxpr_macs, jit_flops, stage_costs, stage_macs, stage_params,
                         training_macs, xla_flops)
from ldjax.errors import UsageError
from ldjax.models.layers import DenseStage, VGGConvStage
from ldjax.models.staged import StagedModel, abstract_variables, count_params, stage_output_shapes
from ldjax.models.zoo import MODEL_NAMES, build_model

IMAGENET = (224, 224, 3)


# ---------------------------------------------------------------------------
# Published figures (conv + fc MACs, as fvcore / the torchvision docs report)

@pytest.mark.parametrize("name,gmacs", [("resnet18", 1.814), ("vgg16", 15.47), ("resnet50", 4.09)])
def test_imagenet_macs_match_published(name, gmacs):
  model = build_model(name, IMAGENET, 1000)
  assert sum(stage_macs(model, IMAGENET)) == pytest.approx(gmacs * 1e9, rel=0.01)


def test_resnet18_stage_macs_by_hand():
  macs = stage_macs(build_model("resnet18", IMAGENET, 1000), IMAGENET)
  assert len(macs) == 10
  assert macs[0] == 112 * 112 * 64 * (7 * 7 * 3)  # stem conv7x7/2
  assert macs[1] == 2 * 56 * 56 * 64 * (3 * 3 * 64)  # two 3x3 convs, no projection
  # First block of layer2: 3x3/2 conv, 3x3 conv, and the 1x1/2 projection.
  assert macs[3] == 28 * 28 * 128 * (9 * 64 + 9 * 128 + 64)
  assert macs[-1] == 512 * 1000  # global pooling is not counted, the fc is


def test_vgg16_first_and_dense_stages_by_hand():
  macs = stage_macs(build_model("vgg16", IMAGENET, 1000), IMAGENET)
  assert macs[0] == 224 * 224 * 64 * (3 * 3 * 3)
  assert macs[-3:] == [7 * 7 * 512 * 4096, 4096 * 4096, 4096 * 1000]


def test_batch_norm_is_not_counted():
  with_bn = stage_macs(build_model("vgg11", (32, 32, 3), 10), (32, 32, 3))
  without = stage_macs(build_model("vgg11", (32, 32, 3), 10, batch_norm=False), (32, 32, 3))
  assert with_bn == without


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_stage_costs_something(name):
  model = build_model(name, (32, 32, 3), 10, width=0.25)
  costs = stage_costs(model, (32, 32, 3))
  assert all(c.macs > 0 and c.params > 0 for c in costs)


# ---------------------------------------------------------------------------
# Small models worked by hand

def tiny_model():
  # conv3x3 (2 -> 4 channels, + BN) with a 2x2 max-pool, then a dense layer.
  return StagedModel("tiny", (VGGConvStage(4, pool=True), DenseStage(5, relu=False, flatten=True)),
                     ("conv1", "fc"))


def test_tiny_model_by_hand():
  model = tiny_model()
  shape = (6, 6, 2)
  conv_macs = (6 * 6 * 4) * (3 * 3 * 2)  # output elements x kernel size x in channels = 2592
  dense_macs = (3 * 3 * 4) * 5  # the pooled 3x3x4 map, flattened, times 5 outputs = 180
  assert stage_macs(model, shape) == [conv_macs, dense_macs]
  conv_params = 3 * 3 * 2 * 4 + 4 + 2 * 4  # kernel, bias, BN scale and offset
  assert stage_params(model, shape) == [conv_params, 36 * 5 + 5]
  costs = stage_costs(model, shape)
  assert costs == [StageCost(0, "conv1", (3, 3, 4), conv_params, conv_macs),
                   StageCost(1, "fc", (5,), 36 * 5 + 5, dense_macs)]


class GroupedConv(nn.Module):
  """A strided, grouped, dilated conv: checks the per-output cost formula."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3), strides=(2, 2), padding="VALID", feature_group_count=2)(x)
    return nn.Conv(4, (3, 3), kernel_dilation=(2, 2), padding="VALID", use_bias=False)(x)


class NestedCalls(nn.Module):
  """Matmuls hidden in jit, remat and custom_jvp sub-jaxprs must all be found."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    w = self.param("w", nn.initializers.ones, (x.shape[-1], 3))
    x = jax.jit(lambda a, b: a @ b)(x, w)  # pjit
    x = nn.remat(nn.Dense)(4)(x)  # checkpoint

    @jax.custom_jvp
    def f(a):
      return a @ jnp.ones((4, 2))

    f.defjvp(lambda primals, tangents: (f(*primals), tangents[0] @ jnp.ones((4, 2))))
    return f(x)


def test_grouped_strided_dilated_conv():
  model = StagedModel("g", (GroupedConv(), DenseStage(2, flatten=True)), ("conv", "fc"))
  shape = (11, 11, 4)
  # 11 -> (11 - 3) // 2 + 1 = 5 px, 6 channels, each output sees 3x3 x (4 / 2 groups) inputs;
  # then a dilated 3x3 (5 px effective): 5 -> 1 px, 4 channels, 3x3x6 inputs each.
  first = 5 * 5 * 6 * (3 * 3 * 2)
  second = 1 * 1 * 4 * (3 * 3 * 6)
  assert stage_macs(model, shape) == [first + second, 4 * 2]
  assert stage_output_shapes(model, shape)[0] == (1, 1, 4)


def test_nested_sub_jaxprs():
  model = StagedModel("n", (VGGConvStage(1), NestedCalls()), ("conv", "nested"))
  shape = (2, 2, 1)
  conv = 2 * 2 * 1 * 9
  assert stage_macs(model, shape) == [conv, 4 * 3 + 3 * 4 + 4 * 2]


def test_jaxpr_macs_control_flow():
  def fn(x, w):
    y, _ = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)  # 5 x (2*4*4)
    # Only one branch runs: the dearer one (two matmuls) is counted.
    return jax.lax.cond(y.sum() > 0, lambda: y @ w, lambda: y @ w @ w)

  jaxpr = jax.make_jaxpr(fn)(jnp.ones((2, 4)), jnp.ones((4, 4)))
  assert jaxpr_macs(jaxpr) == 5 * 32 + 2 * 32


def test_batched_dot_general():
  jaxpr = jax.make_jaxpr(lambda a, b: jnp.einsum("bij,bjk->bik", a, b))(
      jnp.ones((3, 2, 5)), jnp.ones((3, 5, 7)))
  assert jaxpr_macs(jaxpr) == 3 * 2 * 7 * 5


def test_costs_are_abstract_and_consistent():
  # ResNet-152 at 224 px would need ~240 MB of weights; everything here is shapes only.
  model = build_model("resnet152", IMAGENET, 1000)
  costs = stage_costs(model, IMAGENET)
  assert [c.index for c in costs] == list(range(model.num_stages))
  assert [c.name for c in costs] == list(model.stage_names)
  assert [c.output_shape for c in costs] == stage_output_shapes(model, IMAGENET)
  assert sum(c.params for c in costs) == 60_192_808
  assert [c.params for c in costs] == [count_params(v)
                                      for v in abstract_variables(model, IMAGENET)]
  assert sum(c.macs for c in costs) == pytest.approx(11.51e9, rel=0.01)


# ---------------------------------------------------------------------------
# Training cost

def test_training_macs_literal():
  macs = [1, 2, 3, 4]
  assert training_macs(macs, 2, "sgd") == 30
  assert training_macs(macs, 2, "freeze") == (1 + 2) + 3 * (3 + 4)
  assert training_macs(macs, 2, "drop") == 3 * (3 + 4)
  # Nothing cut: every mode is plain training.
  assert {training_macs(macs, 0, m) for m in ("sgd", "freeze", "drop")} == {30}
  # Everything cut: freezing still runs the forward pass, dropping runs nothing.
  assert training_macs(macs, 4, "freeze") == 10
  assert training_macs(macs, 4, "drop") == 0
  assert training_macs((10, 20), 1, "drop") == 60


@pytest.mark.parametrize("cut,mode", [(1, "adam"), (-1, "drop"), (5, "freeze")])
def test_training_macs_bad_input(cut, mode):
  with pytest.raises(UsageError):
    training_macs([1, 2, 3, 4], cut, mode)


# ---------------------------------------------------------------------------
# XLA's estimate

def test_jit_flops_matmul():
  a, b = jnp.ones((4, 8)), jnp.ones((8, 16))
  flops = jit_flops(lambda x, y: x @ y, a, b)
  assert flops is not None and flops >= 4 * 8 * 16  # XLA counts 2 flops per MAC
  lowered = jax.jit(lambda x, y: x @ y).lower(a, b)
  assert xla_flops(lowered) > 0
  assert xla_flops(lowered.compile()) == flops


def test_jit_flops_accepts_shape_structs():
  s = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  assert jit_flops(lambda x: x @ x.T, s) > 0


class _Fake:
  def __init__(self, result):
    self.result = result

  def cost_analysis(self):
    if isinstance(self.result, Exception):
      raise self.result
    return self.result


@pytest.mark.parametrize("result,expected", [
    ({"flops": 12.0}, 12.0),
    ([{"flops": 7.0, "bytes accessed": 3.0}], 7.0),  # older jax: one dict per device
    ([], None),
    (None, None),
    ({"bytes accessed": 3.0}, None),
    ({"flops": -1.0}, None),
    (NotImplementedError("no cost analysis"), None),
])
def test_xla_flops_return_forms(result, expected):
  assert xla_flops(_Fake(result)) == expected
