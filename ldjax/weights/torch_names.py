"""torchvision's and timm's tensor names and layouts, mapped onto ldjax's built-in models.

A state dict of torchvision's `resnet18/50/101/152` or `vgg11/16/19(_bn)`,
or of timm's models of the same names, saved with
`safetensors.torch.save_file(model.state_dict(), ...)`, keeps torch's names
and layouts. For each variable of an ldjax model (`ldjax.models.zoo`, at the
ImageNet design: inputs of 128 px and more) this module names the torch
tensor it comes from and converts it:

- conv kernels OIHW -> HWIO; dense kernels (out, in) -> (in, out);
- BatchNorm ``weight``/``bias`` -> params ``scale``/``bias``,
  ``running_mean``/``running_var`` -> batch_stats ``mean``/``var``
  (``num_batches_tracked`` is not needed); torch's and ldjax's epsilon are
  both 1e-5;
- ResNet: ``conv1``/``bn1`` -> stage ``stem``; ``layerL.B.convK``/``bnK`` ->
  stage ``layerL.B`` ``Conv_{K-1}``/``BatchNorm_{K-1}``;
  ``layerL.B.downsample.0/1`` -> ``proj_conv``/``proj_bn``; ``fc`` -> ``fc``.
  timm's ResNets use the same names, so the two are one format here;
- VGG: ``features.N`` (the conv at N, its BatchNorm at N+1) -> stage
  ``convK``; torchvision's ``classifier.0/3/6`` or timm's conv-as-dense
  ``pre_logits.fc1``/``pre_logits.fc2`` and ``head.fc`` -> ``fc1/fc2/fc3``.
  torch flattens the last map as (C, H, W), ldjax as (H, W, C), so the
  first classifier layer's rows are reordered; torchvision's classifier reads
  the 7x7 map of its adaptive pool, which is ldjax's last map at 224x224
  inputs (up to 239 px), so torchvision's VGG weights fit those inputs only.

`detect_format` tells the format from the names alone; `guess_architecture`
names the torch model a state dict is of, for error messages.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ldjax.models.layers import (BasicBlock, BottleneckBlock, DenseStage, PoolClassifier,
                                 ResNetStem, VGGConvStage)
from ldjax.models.staged import StagedModel
from ldjax.models.zoo import RESNET_CONFIGS, VGG_CONFIGS
from ldjax.weights.names import is_ldjax_name, leaves

LDJAX, RESNET, TORCHVISION_VGG, TIMM_VGG = "ldjax", "resnet", "torchvision-vgg", "timm-vgg"
FORMAT_TITLES = {LDJAX: "ldjax", RESNET: "torchvision/timm ResNet",
                 TORCHVISION_VGG: "torchvision VGG", TIMM_VGG: "timm VGG"}
IGNORED = re.compile(r".*\.num_batches_tracked$")
LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
              ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one ldjax variable comes from: a torch tensor's name, and its conversion."""
  name: str
  convert: Callable[[np.ndarray], np.ndarray]


def detect_format(names: Iterable[str]) -> str | None:
  """LDJAX, RESNET, TORCHVISION_VGG or TIMM_VGG from the tensor names; None if none fits."""
  names = set(names)
  if names and all(is_ldjax_name(n) for n in names):
    return LDJAX
  if {"conv1.weight", "fc.weight"} <= names and any(n.startswith("layer1.") for n in names):
    return RESNET
  if "features.0.weight" in names and "classifier.0.weight" in names:
    return TORCHVISION_VGG
  if "features.0.weight" in names and "pre_logits.fc1.weight" in names:
    return TIMM_VGG
  return None


def guess_architecture(fmt: str, names: Iterable[str]) -> str | None:
  """The torch model name (e.g. "resnet50", "vgg16_bn") whose state dict has `names`."""
  names = set(names)
  if fmt == RESNET:
    blocks = tuple(1 + max((int(m.group(2)) for n in names
                            if (m := re.match(r"layer(\d)\.(\d+)\.", n)) and m.group(1) == str(k)),
                           default=-1) for k in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in names
    for name, (block, sizes) in RESNET_CONFIGS.items():
      if sizes == blocks and (block is BottleneckBlock) == bottleneck:
        return name
    return None
  if fmt in (TORCHVISION_VGG, TIMM_VGG):
    convs = [n for n in names if re.fullmatch(r"features\.\d+\.weight", n)
             and f"{n[:-len('weight')]}running_mean" not in names]
    bn = any(re.fullmatch(r"features\.\d+\.running_mean", n) for n in names)
    for name, cfg in VGG_CONFIGS.items():
      if sum(c != "M" for c in cfg) == len(convs):
        return name + ("_bn" if bn else "")
  return None


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO."""
  return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """(out, in) -> (in, out); a timm 1x1 conv-as-dense (out, in, 1, 1) too."""
  if w.ndim == 4 and w.shape[2:] == (1, 1):
    w = w[:, :, 0, 0]
  return w.T if w.ndim == 2 else w


def flattened_kernel(channels: int | None) -> Callable[[np.ndarray], np.ndarray]:
  """The first VGG classifier layer: torch's rows in (C, H, W) order -> ldjax's (H, W, C).

  timm's is a conv with a HxW kernel (out, C, H, W); torchvision's a dense
  (out, C*H*W) on a square map of `channels` channels."""
  def convert(w: np.ndarray) -> np.ndarray:
    if w.ndim == 2 and channels and w.shape[1] % channels == 0:
      side = math.isqrt(w.shape[1] // channels)
      if side * side * channels == w.shape[1]:
        w = w.reshape(w.shape[0], channels, side, side)
    if w.ndim != 4:
      return w   # does not fit: the shape check names it
    return np.transpose(w, (2, 3, 1, 0)).reshape(-1, w.shape[0])
  return convert


def identity(w: np.ndarray) -> np.ndarray:
  return w


def leaf_source(module_name: str, collection: str, leaf: str, kernel) -> Source | None:
  torch_leaf = LEAF_NAMES.get((collection, leaf))
  if torch_leaf is None:
    return None
  return Source(f"{module_name}.{torch_leaf}", kernel if leaf == "kernel" else identity)


def resnet_module(stage: str, module: str) -> tuple[str, Callable] | None:
  """The torch module of flax module `module` in ResNet stage `stage`, and its kernel layout."""
  if stage == "fc":
    return ("fc", dense_kernel) if module == "Dense_0" else None
  prefix = "" if stage == "stem" else f"{stage}."
  if m := re.fullmatch(r"(Conv|BatchNorm)_(\d+)", module):
    kind = "conv" if m.group(1) == "Conv" else "bn"
    return f"{prefix}{kind}{int(m.group(2)) + 1}", conv_kernel
  if module in ("proj_conv", "proj_bn") and stage != "stem":
    return f"{stage}.downsample.{0 if module == 'proj_conv' else 1}", conv_kernel
  return None


def vgg_modules(model: StagedModel, fmt: str) -> tuple[dict[str, dict], str | None]:
  """({stage name: {flax module: (torch module, kernel layout)}}, the last conv's torch
  module) of a VGG model; "flatten" marks the first classifier layer."""
  out, index, last_conv = {}, 0, None
  for stage, name in zip(model.stages, model.stage_names):
    if isinstance(stage, VGGConvStage):
      last_conv = f"features.{index}"
      out[name] = {"Conv_0": (last_conv, conv_kernel)}
      if stage.batch_norm:
        out[name]["BatchNorm_0"] = (f"features.{index + 1}", conv_kernel)
      index += (3 if stage.batch_norm else 2) + (1 if stage.pool else 0)
  dense = [n for s, n in zip(model.stages, model.stage_names) if isinstance(s, DenseStage)]
  torch_dense = (("classifier.0", "classifier.3", "classifier.6") if fmt == TORCHVISION_VGG
                 else ("pre_logits.fc1", "pre_logits.fc2", "head.fc"))
  for k, (name, torch_name) in enumerate(zip(dense, torch_dense)):
    out[name] = {"Dense_0": (torch_name, "flatten" if k == 0 else dense_kernel)}
  return out, last_conv


def model_family(model: StagedModel) -> str | None:
  kinds = {type(s) for s in model.stages}
  if kinds <= {ResNetStem, BasicBlock, BottleneckBlock, PoolClassifier} and ResNetStem in kinds:
    return "resnet"
  if kinds <= {VGGConvStage, DenseStage} and VGGConvStage in kinds:
    return "vgg"
  return None


def torch_sources(model: StagedModel, template: Sequence[Mapping], fmt: str,
                  tensors: Mapping[str, np.ndarray]) -> dict[tuple, Source]:
  """{(stage index, collection, flax path): Source} for every leaf of `template`.

  A leaf with no torch counterpart maps to a Source whose name is missing
  from `tensors`, so the caller reports it as a tensor the file lacks."""
  out, vgg, channels = {}, None, None
  if fmt in (TORCHVISION_VGG, TIMM_VGG):
    vgg, last_conv = vgg_modules(model, fmt)
    w = tensors.get(f"{last_conv}.weight")
    channels = int(w.shape[0]) if w is not None and w.ndim == 4 else None
  for i, (name, v) in enumerate(zip(model.stage_names, template)):
    for collection, tree in v.items():
      for path, _ in leaves(tree):
        module, leaf = ".".join(path[:-1]), path[-1]
        found = (vgg.get(name, {}).get(module) if vgg is not None
                 else resnet_module(name, module))
        src = None
        if found is not None:
          kernel = flattened_kernel(channels) if found[1] == "flatten" else found[1]
          src = leaf_source(found[0], collection, leaf, kernel)
        out[(i, collection, path)] = src or Source(f"<no torch tensor for {name}/"
                                                   f"{collection}/{'/'.join(path)}>", identity)
  return out


def unused(names: Iterable[str], used: set[str]) -> list[str]:
  """Tensors of the file that no variable of the model takes (buffers torch needs only aside)."""
  return sorted(n for n in names if n not in used and not IGNORED.match(n))


def to_torch_shape(source: Source, ldjax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """An ldjax shape in torch's layout, for messages: HWIO -> OIHW, (in, out) -> (out, in)."""
  if len(ldjax_shape) == 4:
    h, w, i, o = ldjax_shape
    return (o, i, h, w)
  if len(ldjax_shape) == 2:
    return tuple(reversed(ldjax_shape))
  return ldjax_shape
