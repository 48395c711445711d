"""VGG and ResNet as explicit, ordered lists of Flax stages.

Learn & Drop cuts a network into a dropped prefix (the "tail") and a trained
suffix (the "head"). Here a model *is* its list of stages, and its variables
are a list with one ``{"params": ..., "batch_stats": ...}`` dict per stage, so
tail and head are plain slices of the same two sequences:

  y, _ = apply_stages(model.stages[:n], variables[:n], x)     # tail
  logits, _ = apply_stages(model.stages[n:], variables[n:], y)  # head

Every stage module is called as ``stage(x, train: bool)``; any Flax module with
that signature can be a stage, so users can build a `StagedModel` from their
own layers (see README).

Stage boundaries:
- VGG: one stage per conv layer (conv, BatchNorm, ReLU, and the max-pool
  where the architecture pools), then one stage per dense layer.
- ResNet: the stem, then one stage per residual block (its output already
  includes the skip path), then global pooling + classifier.

Input-size rules (documented in README): inputs under 128 px use the usual
small-image design (ResNet: 3x3 stride-1 stem, no max-pool; VGG: ceil-mode
pools so 28 px reaches 1x1, and a 512-wide classifier), inputs of 128 px and
more use the ImageNet design (ResNet: 7x7 stride-2 stem + max-pool; VGG:
torchvision's 4096-wide classifier on the flattened last map), which at
224x224x3 and 1000 classes has exactly torchvision's parameter counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from ldjax.errors import UsageError

IMAGENET_STEM_MIN_SIZE = 128

# torchvision initialisers: convs kaiming-normal (fan_out), VGG dense N(0, 0.01).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
vgg_dense_init = nn.initializers.normal(0.01)
# PyTorch BatchNorm defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _bn(train: bool, name: str | None = None, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, scale_init=scale_init, name=name)


# ---------------------------------------------------------------------------
# Stage modules

class VGGConvStage(nn.Module):
  """conv3x3 (+ BatchNorm) + ReLU (+ 2x2 max-pool)."""
  features: int
  pool: bool = False
  batch_norm: bool = True
  ceil_pool: bool = False  # small inputs: ceil-mode pooling (28 -> 14 -> 7 -> 4 -> 2 -> 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=conv_init)(x)
    if self.batch_norm:
      x = _bn(train)(x)
    x = nn.relu(x)
    if self.pool:
      x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME" if self.ceil_pool else "VALID")
    return x


class DenseStage(nn.Module):
  """(flatten +) dense (+ ReLU + dropout): one VGG classifier layer."""
  features: int
  relu: bool = True
  dropout: float = 0.0
  flatten: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.flatten:
      x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.features, kernel_init=vgg_dense_init)(x)
    if self.relu:
      x = nn.relu(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class ResNetStem(nn.Module):
  """Small inputs: conv3x3/1 + BN + ReLU. ImageNet: conv7x7/2 + BN + ReLU + maxpool3x3/2."""
  features: int
  imagenet: bool

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.imagenet:
      x = nn.Conv(self.features, (7, 7), (2, 2), padding=3, use_bias=False,
                  kernel_init=conv_init)(x)
    else:
      x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=conv_init)(x)
    x = nn.relu(_bn(train)(x))
    if self.imagenet:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    return x


def _shortcut(x, features: int, strides: int, train: bool):
  if x.shape[-1] == features and strides == 1:
    return x
  x = nn.Conv(features, (1, 1), (strides, strides), use_bias=False, kernel_init=conv_init,
              name="proj_conv")(x)
  return _bn(train, name="proj_bn")(x)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: two 3x3 convs; output = relu(residual + shortcut)."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding=1,
                use_bias=False, kernel_init=conv_init)(x)
    y = nn.relu(_bn(train)(y))
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=conv_init)(y)
    y = _bn(train)(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train))


class BottleneckBlock(nn.Module):
  """ResNet-50+ block (v1.5, stride on the 3x3 conv as in torchvision)."""
  features: int  # width of the 3x3 conv; the block outputs 4x this
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = self.features * 4
    y = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=conv_init)(x)
    y = nn.relu(_bn(train)(y))
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding=1,
                use_bias=False, kernel_init=conv_init)(y)
    y = nn.relu(_bn(train)(y))
    y = nn.Conv(out, (1, 1), use_bias=False, kernel_init=conv_init)(y)
    y = _bn(train)(y)
    return nn.relu(y + _shortcut(x, out, self.strides, train))


class PoolClassifier(nn.Module):
  """Global average pooling + dense classifier (ResNet's last stage)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


# ---------------------------------------------------------------------------
# The staged model and its pure functions

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


# ---------------------------------------------------------------------------
# Constructors

VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}

RESNET_CONFIGS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (BottleneckBlock, (3, 4, 6, 3)),
    "resnet101": (BottleneckBlock, (3, 4, 23, 3)),
    "resnet152": (BottleneckBlock, (3, 8, 36, 3)),
}

MODEL_NAMES = tuple(VGG_CONFIGS) + tuple(RESNET_CONFIGS)


def _scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def vgg(name: str, input_shape: Sequence[int], num_classes: int, *, width: float = 1.0,
        batch_norm: bool = True, dropout: float = 0.5) -> StagedModel:
  imagenet = min(input_shape[:2]) >= IMAGENET_STEM_MIN_SIZE
  cfg = VGG_CONFIGS[name]
  stages, names = [], []
  for i, c in enumerate(cfg):
    if c == "M":
      continue
    pool = i + 1 < len(cfg) and cfg[i + 1] == "M"
    stages.append(VGGConvStage(_scaled(c, width), pool=pool, batch_norm=batch_norm,
                               ceil_pool=not imagenet))
    names.append(f"conv{len(names) + 1}")
  hidden = _scaled(4096 if imagenet else 512, width)
  stages += [DenseStage(hidden, dropout=dropout, flatten=True),
             DenseStage(hidden, dropout=dropout),
             DenseStage(num_classes, relu=False)]
  names += ["fc1", "fc2", "fc3"]
  suffix = "_bn" if batch_norm else ""
  return StagedModel(name + suffix, tuple(stages), tuple(names), num_dense=3)


def resnet(name: str, input_shape: Sequence[int], num_classes: int, *,
           width: float = 1.0) -> StagedModel:
  imagenet = min(input_shape[:2]) >= IMAGENET_STEM_MIN_SIZE
  block, sizes = RESNET_CONFIGS[name]
  stages: list[nn.Module] = [ResNetStem(_scaled(64, width), imagenet=imagenet)]
  names = ["stem"]
  for layer, n_blocks in enumerate(sizes):
    for b in range(n_blocks):
      strides = 2 if layer > 0 and b == 0 else 1
      stages.append(block(_scaled(64 * 2**layer, width), strides=strides))
      names.append(f"layer{layer + 1}.{b}")
  stages.append(PoolClassifier(num_classes))
  names.append("fc")
  return StagedModel(name, tuple(stages), tuple(names), num_dense=1)


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *,
                width: float = 1.0, batch_norm: bool = True) -> StagedModel:
  """Builds a built-in model by name (see `MODEL_NAMES`); raises UsageError on bad input."""
  key = name.lower().replace("-", "")
  if key.endswith("_bn") and key[:-3] in VGG_CONFIGS:
    if not batch_norm:
      raise UsageError(f"{name} has BatchNorm by name; drop the _bn suffix or --no-batch-norm")
    key = key[:-3]
  if key not in MODEL_NAMES:
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
  if len(input_shape) != 3 or min(input_shape) <= 0:
    raise UsageError(f"input shape must be H,W,C with positive sizes, got {tuple(input_shape)}")
  if not (math.isfinite(width) and width > 0):
    raise UsageError(f"--width must be a finite number > 0, got {width}")
  if num_classes < 2:
    raise UsageError(f"need at least 2 classes, got {num_classes}")
  h, w = input_shape[:2]
  if min(h, w) < 8:
    raise UsageError(f"images of {h}x{w} px are too small for {name}; use at least 8x8")
  if key in VGG_CONFIGS:
    return vgg(key, input_shape, num_classes, width=width, batch_norm=batch_norm)
  if not batch_norm:
    raise UsageError("--no-batch-norm applies to VGG models only")
  return resnet(key, input_shape, num_classes, width=width)


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

