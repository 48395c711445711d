"""Tests of the staged models: stage lists, shapes, torchvision parameter counts, splitting.

Big shapes and full widths are checked by abstract evaluation only (nothing is
allocated), so the file stays fast; real arrays are used only at tiny widths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldjax.errors import UsageError
from ldjax.models.staged import (StagedModel, abstract_variables, apply_stages, count_params,
                                 stage_output_shapes)
from ldjax.models.zoo import MODEL_NAMES, VGG_CONFIGS, build_model

SHAPES = [(28, 28, 1), (32, 32, 3), (160, 160, 3)]

# (conv stages, dense stages) per model.
STAGE_COUNTS = {
    "vgg11": (8, 3), "vgg16": (13, 3), "vgg19": (16, 3),
    "resnet18": (1 + 8, 1), "resnet50": (1 + 16, 1), "resnet101": (1 + 33, 1),
    "resnet152": (1 + 50, 1),
}
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3),
                 "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}

# torchvision's parameter counts at 224x224x3 and 1000 classes.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "vgg11": 132_868_840, "vgg16": 138_365_992, "vgg19": 143_678_248,
}


def expected_names(name):
  if name.startswith("vgg"):
    n_conv = STAGE_COUNTS[name][0]
    return [f"conv{i + 1}" for i in range(n_conv)] + ["fc1", "fc2", "fc3"]
  names = ["stem"]
  for layer, n in enumerate(RESNET_BLOCKS[name]):
    names += [f"layer{layer + 1}.{b}" for b in range(n)]
  return names + ["fc"]


def expected_shapes(name, input_shape, num_classes):
  """An independent statement of the architecture rules, at width 1."""
  h, w, _ = input_shape
  imagenet = min(h, w) >= 128
  # Small inputs pool in ceil mode (28 -> 14 -> 7 -> 4 -> 2 -> 1); ImageNet inputs in floor mode.
  half = (lambda s: s // 2) if imagenet else (lambda s: -(-s // 2))
  shapes = []
  if name.startswith("vgg"):
    cfg = VGG_CONFIGS[name]
    for i, c in enumerate(cfg):
      if c == "M":
        continue
      if i + 1 < len(cfg) and cfg[i + 1] == "M":
        h, w = half(h), half(w)
      shapes.append((h, w, c))
    hidden = 4096 if imagenet else 512
    return shapes + [(hidden,), (hidden,), (num_classes,)]
  ceil_half = lambda s: -(-s // 2)  # a 3x3/2 conv or pool with padding 1
  if imagenet:
    h, w = ceil_half(ceil_half(h)), ceil_half(ceil_half(w))  # conv7x7/2, maxpool3x3/2
  shapes.append((h, w, 64))
  expansion = 1 if name == "resnet18" else 4
  for layer, n in enumerate(RESNET_BLOCKS[name]):
    for b in range(n):
      if layer > 0 and b == 0:
        h, w = ceil_half(h), ceil_half(w)
      shapes.append((h, w, 64 * 2**layer * expansion))
  return shapes + [(num_classes,)]


# ---------------------------------------------------------------------------
# Stage lists and shapes

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stage_lists(name):
  model = build_model(name, (32, 32, 3), 10)
  n_conv, n_dense = STAGE_COUNTS[name]
  assert isinstance(model, StagedModel)
  assert model.num_conv == n_conv
  assert model.num_dense == n_dense
  assert model.num_stages == len(model.stages) == n_conv + n_dense
  assert list(model.stage_names) == expected_names(name)
  assert model.name == (name + "_bn" if name.startswith("vgg") else name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes(name, shape):
  model = build_model(name, shape, 10)
  assert stage_output_shapes(model, shape) == expected_shapes(name, shape, 10)


def test_output_shapes_literal():
  # Spelled out once, so the reference function above is itself checked.
  model = build_model("vgg11", (28, 28, 1), 10)
  assert stage_output_shapes(model, (28, 28, 1)) == [
      (14, 14, 64), (7, 7, 128), (7, 7, 256), (4, 4, 256), (4, 4, 512), (2, 2, 512),
      (2, 2, 512), (1, 1, 512), (512,), (512,), (10,)]
  model = build_model("resnet18", (160, 160, 3), 7)
  assert stage_output_shapes(model, (160, 160, 3)) == [
      (40, 40, 64), (40, 40, 64), (40, 40, 64), (20, 20, 128), (20, 20, 128),
      (10, 10, 256), (10, 10, 256), (5, 5, 512), (5, 5, 512), (7,)]


def test_width_scales_channels():
  model = build_model("resnet50", (32, 32, 3), 10, width=0.5)
  shapes = stage_output_shapes(model, (32, 32, 3))
  assert shapes[0] == (32, 32, 32)
  assert shapes[-2] == (4, 4, 1024)
  assert shapes[-1] == (10,)
  # Tiny widths never produce zero channels.
  model = build_model("vgg11", (28, 28, 1), 10, width=0.001)
  assert all(s[-1] >= 1 for s in stage_output_shapes(model, (28, 28, 1)))


# ---------------------------------------------------------------------------
# Parameter counts

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torchvision_param_counts(name):
  model = build_model(name, (224, 224, 3), 1000)
  assert count_params(abstract_variables(model, (224, 224, 3))) == TORCHVISION_PARAMS[name]


def test_vgg_without_batch_norm():
  model = build_model("vgg11", (224, 224, 3), 1000, batch_norm=False)
  assert model.name == "vgg11"
  variables = abstract_variables(model, (224, 224, 3))
  assert count_params(variables) == 132_863_336
  assert all("batch_stats" not in v for v in variables)


def test_count_params_accepts_one_stage():
  model = build_model("resnet18", (32, 32, 3), 10)
  variables = abstract_variables(model, (32, 32, 3))
  assert count_params(variables[0]) == 3 * 3 * 3 * 64 + 2 * 64  # conv (no bias) + BN
  assert sum(count_params(v) for v in variables) == count_params(variables)


def test_name_spellings():
  assert build_model("VGG16_bn", (32, 32, 3), 10).name == "vgg16_bn"
  assert build_model("resnet-18", (32, 32, 3), 10).name == "resnet18"


# ---------------------------------------------------------------------------
# Splitting: stages [:n] then [n:] equals all at once

def _real(model, shape, batch=4, seed=0):
  """Random variables of the right structure and an input batch.

  Filled with numpy from the abstract variables rather than `model.init`: on
  CPU, compiling jax's random initialisers for every new shape takes most of a
  second per stage, and the values themselves do not matter here.
  """
  rs = np.random.default_rng(seed)

  def fill(path, leaf):
    values = rs.normal(0.0, 0.1, leaf.shape)
    if getattr(path[-1], "key", None) == "var":  # BatchNorm variances must be positive
      values = 0.5 + np.abs(values)
    return jnp.asarray(values, leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))
  x = jnp.asarray(rs.normal(size=(batch, *shape)), jnp.float32)
  return variables, x


SPLIT_CASES = [("vgg11", (28, 28, 1)), ("vgg11", (32, 32, 3)),
               ("resnet18", (28, 28, 1)), ("resnet18", (32, 32, 3))]


@pytest.mark.parametrize("name,shape", SPLIT_CASES)
def test_split_equals_whole_inference(name, shape):
  model = build_model(name, shape, 10, width=0.125)
  variables, x = _real(model, shape)
  whole, new_vars = apply_stages(model.stages, variables, x)
  assert whole.shape == (4, 10)
  # Inference mode returns the variables unchanged.
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, new_vars, variables))
  for n in (1, model.num_conv // 2, model.num_conv, model.num_stages - 1):
    y, _ = apply_stages(model.stages[:n], variables[:n], x)
    out, _ = apply_stages(model.stages[n:], variables[n:], y)
    np.testing.assert_array_equal(out, whole)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name,shape", [("resnet18", (28, 28, 1)), ("resnet50", (32, 32, 3))])
def test_split_equals_whole_train_batch_norm(name, shape):
  # ResNets have no dropout, so training mode is deterministic: batch statistics
  # and running-statistics updates must be identical whether split or not.
  model = build_model(name, shape, 10, width=0.125)
  variables, x = _real(model, shape)
  whole, whole_vars = apply_stages(model.stages, variables, x, train=True)
  assert not np.allclose(whole_vars[0]["batch_stats"]["BatchNorm_0"]["mean"],
                         variables[0]["batch_stats"]["BatchNorm_0"]["mean"])
  for n in (1, model.num_conv // 2, model.num_stages - 1):
    y, tail_vars = apply_stages(model.stages[:n], variables[:n], x, train=True)
    out, head_vars = apply_stages(model.stages[n:], variables[n:], y, train=True)
    np.testing.assert_array_equal(out, whole)
    _assert_trees_equal(tail_vars + head_vars, whole_vars)


@pytest.mark.parametrize("name,shape", [("vgg11", (28, 28, 1)), ("vgg16", (32, 32, 3))])
def test_split_equals_whole_train_with_dropout(name, shape):
  # apply_stages folds `first_index + i` into the dropout rng, so a head given
  # its absolute position draws the same dropout masks as the whole model.
  model = build_model(name, shape, 10, width=0.125)
  variables, x = _real(model, shape)
  rng = jax.random.key(7)
  whole, whole_vars = apply_stages(model.stages, variables, x, train=True, rng=rng)
  for n in (2, model.num_conv, model.num_stages - 2, model.num_stages - 1):
    y, tail_vars = apply_stages(model.stages[:n], variables[:n], x, train=True, rng=rng)
    out, head_vars = apply_stages(model.stages[n:], variables[n:], y, train=True, rng=rng,
                                  first_index=n)
    np.testing.assert_array_equal(out, whole)
    _assert_trees_equal(tail_vars + head_vars, whole_vars)
  # Without the offset the head's dropout masks differ.
  n = model.num_conv
  y, _ = apply_stages(model.stages[:n], variables[:n], x, train=True, rng=rng)
  out, _ = apply_stages(model.stages[n:], variables[n:], y, train=True, rng=rng)
  assert not np.array_equal(out, whole)


def test_train_dropout_uses_rng():
  shape = (28, 28, 1)
  model = build_model("vgg11", shape, 10, width=0.125)
  variables, x = _real(model, shape)
  a, _ = apply_stages(model.stages, variables, x, train=True, rng=jax.random.key(1))
  b, _ = apply_stages(model.stages, variables, x, train=True, rng=jax.random.key(1))
  c, _ = apply_stages(model.stages, variables, x, train=True, rng=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Inference ignores dropout entirely.
  d, _ = apply_stages(model.stages, variables, x)
  e, _ = apply_stages(model.stages, variables, x, rng=jax.random.key(2))
  np.testing.assert_array_equal(d, e)


def test_init_is_abstractable():
  # StagedModel.init must work under eval_shape (that is how big models are inspected).
  model = build_model("resnet152", (224, 224, 3), 1000)
  variables = jax.eval_shape(lambda k: model.init(k, (224, 224, 3)), jax.random.key(0))
  assert len(variables) == model.num_stages
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(variables))


# ---------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("args,kwargs,match", [
    (("alexnet", (32, 32, 3), 10), {}, "unknown model"),
    (("vgg11", (32, 32), 10), {}, "H,W,C"),
    (("vgg11", (32, 32, 3, 1), 10), {}, "H,W,C"),
    (("vgg11", (32, 0, 3), 10), {}, "positive"),
    (("vgg11", (32, 32, -3), 10), {}, "positive"),
    (("vgg11", (32, 32, 3), 10), {"width": 0}, "width"),
    (("resnet18", (32, 32, 3), 10), {"width": -0.5}, "width"),
    (("vgg11", (32, 32, 3), 1), {}, "2 classes"),
    (("resnet18", (32, 32, 3), 0), {}, "2 classes"),
    (("vgg11", (4, 4, 1), 10), {}, "too small"),
    (("resnet18", (32, 32, 3), 10), {"batch_norm": False}, "VGG models only"),
])
def test_build_model_bad_input(args, kwargs, match):
  with pytest.raises(UsageError, match=match) as info:
    build_model(*args, **kwargs)
  assert "\n" not in str(info.value)


def test_staged_model_validation():
  model = build_model("vgg11", (32, 32, 3), 10)
  with pytest.raises(ValueError):
    StagedModel("x", model.stages, model.stage_names[:-1])
  with pytest.raises(ValueError):
    StagedModel("x", model.stages, model.stage_names, num_dense=0)
  with pytest.raises(ValueError):
    StagedModel("x", model.stages, model.stage_names, num_dense=model.num_stages)
