"""The stage modules of the built-in models: VGG conv and dense stages, ResNet stem and blocks.

Each is a Flax module called as ``stage(x, train)``; `ldjax.models.zoo` puts
them in order. Initialisers and BatchNorm settings follow torchvision, so a
full-width model at 224x224x3 matches torchvision's parameter counts, except
the dense layers of the small-image VGG classifier (see `small_dense_init`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

# torchvision initialisers: convs kaiming-normal (fan_out), VGG dense N(0, 0.01).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
vgg_dense_init = nn.initializers.normal(0.01)
# The small-image VGG classifier (512 x width wide): lecun-normal, variance 1 / fan_in (Flax's
# Dense default, as ResNet's classifier). torchvision's N(0, 0.01) is sized for its 4096-wide
# layers (std x sqrt(fan_in) = 0.64 there); on a 128-wide classifier each of the three layers
# scales the signal, forwards and backwards, by 0.01 x sqrt(128) = 0.11: at init the logits
# have std ~0.002 and the convs' gradients are ~1e-4 of their weights, so SGD sits at chance
# for epochs (VGG-16-BN, width 0.25, Fashion-MNIST, lr 0.01: 10.6 % after 5 epochs; 81.0 %
# with this init; experiments/results/reference/README.md).
small_dense_init = nn.initializers.lecun_normal()
# PyTorch BatchNorm defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _bn(train: bool, name: str | None = None, scale_init=nn.initializers.ones):
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, scale_init=scale_init, name=name)


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
  kernel_init: nn.initializers.Initializer = vgg_dense_init

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.flatten:
      x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.features, kernel_init=self.kernel_init)(x)
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

