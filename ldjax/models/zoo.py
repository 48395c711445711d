"""The built-in models by name: VGG-11/16/19 (with or without BatchNorm) and ResNet-18/50/101/152.

`build_model(name, input_shape, num_classes, width=...)` checks its input
and returns a `StagedModel` (see `ldjax.models.staged` for the stage
boundaries and `ldjax.models.layers` for the stage modules).

Stage boundaries:
- VGG: one stage per conv layer (conv, BatchNorm, ReLU, and the max-pool
  where the architecture pools), then one stage per dense layer.
- ResNet: the stem, then one stage per residual block (its output already
  includes the skip path), then global pooling + classifier.

Input-size rules (documented in README): inputs under 128 px use the usual
small-image design (ResNet: 3x3 stride-1 stem, no max-pool; VGG: ceil-mode
pools so 28 px reaches 1x1, and a 512-wide classifier initialised lecun-normal,
see `ldjax.models.layers.small_dense_init`), inputs of 128 px and more use the
ImageNet design (ResNet: 7x7 stride-2 stem + max-pool; VGG: torchvision's
4096-wide classifier on the flattened last map, initialised N(0, 0.01) as
torchvision does), which at 224x224x3 and 1000 classes has exactly
torchvision's parameter counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn

from ldjax import settings
from ldjax.errors import UsageError
from ldjax.models.layers import (BasicBlock, BottleneckBlock, DenseStage, PoolClassifier,
                                 ResNetStem, VGGConvStage, small_dense_init, vgg_dense_init)
from ldjax.models.staged import StagedModel

IMAGENET_STEM_MIN_SIZE = 128

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
  init = vgg_dense_init if imagenet else small_dense_init
  stages += [DenseStage(hidden, dropout=dropout, flatten=True, kernel_init=init),
             DenseStage(hidden, dropout=dropout, kernel_init=init),
             DenseStage(num_classes, relu=False, kernel_init=init)]
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
      raise UsageError(f"{name} has BatchNorm by name; drop the _bn suffix or model.batch_norm")
    key = key[:-3]
  if key not in MODEL_NAMES:
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
  if len(input_shape) != 3 or min(input_shape) <= 0:
    raise UsageError(f"input shape must be H,W,C with positive sizes, got {tuple(input_shape)}")
  if not (math.isfinite(width) and width > 0):
    raise UsageError(f"model.width must be a finite number > 0, got {width}")
  if num_classes < 2:
    raise UsageError(f"need at least 2 classes, got {num_classes}")
  h, w = input_shape[:2]
  if min(h, w) < 8:
    raise UsageError(f"images of {h}x{w} px are too small for {name}; use at least 8x8")
  if key in VGG_CONFIGS:
    return vgg(key, input_shape, num_classes, width=width, batch_norm=batch_norm)
  if not batch_norm:
    raise UsageError("model.batch_norm applies to VGG models only")
  return resnet(key, input_shape, num_classes, width=width)




PRECISIONS = ("float32", "bfloat16")   # of convolutions and dense layers (ldjax.train.precision)


@settings.group("model", "the model")
class ModelSettings:
  """Which network, how wide, at which compute precision."""
  name: str = settings.setting(
      "vgg11", f"one of {', '.join(MODEL_NAMES)}", flat="model", common=True)
  width: float = settings.setting(1.0, "channel width multiplier", common=True)
  batch_norm: bool = settings.setting(
      True, "VGG without BatchNorm (the paper advises BN)", flag="--no-batch-norm",
      negate=True)
  precision: str = settings.setting(
      "float32", "of convolutions and dense layers: float32 or bfloat16 (weights, "
      "optimizer state, BatchNorm statistics, gradients and scores stay float32)")

  def check(self):
    settings.check_choice(self.name, "model.name", MODEL_NAMES)
    settings.check_float(self.width, "model.width", "a finite number > 0", lambda v: v > 0)
    settings.check_bool(self.batch_norm, "model.batch_norm")
    settings.check_choice(self.precision, "model.precision", PRECISIONS)
