"""Starting a model from saved weights: ldjax's own, torchvision's or timm's.

  variables, info = init_from("resnet18.safetensors", model, model.init(key, shape))

The template is the model's fresh variables; every one of its arrays is
replaced by the file's, after the checks, each a `UsageError` of one line:

- the file: missing, a pickle (refused), corrupt, or tensor names of no
  known format (`ldjax.weights.torch_names.detect_format`);
- the architecture: tensors the model lacks or has no place for (another
  depth, BatchNorm or not, a torch file for the small-image design); the
  message names the model the file looks like;
- ldjax metadata, when present: the model name, and `width` / `image_shape`
  when the caller gives them;
- shapes (another width, another input size for VGG's first dense layer):
  the message names the tensor and both shapes.

The classifier, the last stage, is the exception: when only its number of
classes differs, it keeps its fresh initialisation and `info` says so
(fine-tuning on new classes); with `keep_classifier=True` that is an error.
Arrays are cast to the template's dtypes. The template may be abstract
(`ldjax.models.staged.abstract_variables`, nothing allocated) when the file
fills every array, as with `keep_classifier=True`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ldjax.errors import UsageError
from ldjax.models.layers import ResNetStem, VGGConvStage
from ldjax.models.staged import StagedModel
from ldjax.weights.files import read_tensors
from ldjax.weights.ldjax_format import parse_ldjax
from ldjax.weights.names import leaves, tensor_name
from ldjax.weights.run_weights import weights_path
from ldjax.weights.torch_names import (FORMAT_TITLES, LDJAX, RESNET, Source, detect_format,
                                       guess_architecture, identity, model_family,
                                       to_torch_shape, torch_sources, unused)


@dataclasses.dataclass(frozen=True)
class InitInfo:
  """What `init_from` loaded."""
  source: str                       # the .safetensors file read
  format: str                       # "ldjax", "torchvision/timm ResNet", "timm VGG", ...
  loaded: int                       # arrays taken from the file
  reinitialized: tuple[str, ...]    # stages kept at their fresh init (the classifier, or none)
  file_classes: int | None          # the file's number of classes, where it differs
  model_classes: int
  meta: dict | None = None          # the file's ldjax metadata, if any

  def __str__(self) -> str:
    line = f"{self.format} weights, {self.loaded} arrays from {self.source}"
    if self.reinitialized:
      line += (f"; classifier ({', '.join(self.reinitialized)}) initialised afresh for "
               f"{self.model_classes} classes (the file's has {self.file_classes})")
    return line


def init_from(source_path: str | os.PathLike, model: StagedModel,
              template_variables: Sequence[Mapping], *, keep_classifier: bool = False,
              strategy: str | None = None, width: float | None = None,
              image_shape: Sequence[int] | None = None) -> tuple[list[dict], InitInfo]:
  """`template_variables` (a fresh `model.init`) with the weights of `source_path` (a
  `.safetensors` file or a run's work directory; `strategy` picks a comparison's run).

  Returns (variables, info); see the module doc for the checks. `width` and
  `image_shape`, if given, are compared with ldjax metadata's."""
  path = weights_path(source_path, strategy)
  tensors, header = read_tensors(path)
  arrays, info = load_arrays(path, tensors, header, model, template_variables,
                             keep_classifier=keep_classifier, width=width,
                             image_shape=image_shape)
  return rebuild(template_variables, arrays), info


def load_arrays(path: Path, tensors: Mapping[str, np.ndarray], header: Mapping[str, str],
                model: StagedModel, template_variables: Sequence[Mapping], *,
                keep_classifier: bool = False, width: float | None = None,
                image_shape: Sequence[int] | None = None) -> tuple[dict[tuple, Any], InitInfo]:
  """`init_from` on tensors already read (`path` names them in messages): {(stage index,
  collection, flax path): numpy array in ldjax's layout} for the leaves the file fills."""
  fmt = detect_format(tensors)
  if fmt is None:
    example = ", ".join(sorted(tensors)[:3]) or "no tensors at all"
    raise UsageError(f"{path} holds neither ldjax's, torchvision's nor timm's tensor names "
                     f"({example}); ldjax loads ResNet and VGG weights of those three")
  meta = None
  if fmt == LDJAX:
    _, meta = parse_ldjax(path, tensors, header)
    check_meta(path, meta, model, width, image_shape)
    sources = {(i, c, p): Source(tensor_name(s, c, p), identity)
               for i, (s, v) in enumerate(zip(model.stage_names, template_variables))
               for c, tree in v.items() for p, _ in leaves(tree)}
  else:
    check_torch_target(path, fmt, tensors, model)
    sources = torch_sources(model, template_variables, fmt, tensors)
  return fill(path, fmt, tensors, sources, model, template_variables, keep_classifier, meta)


def check_meta(path: Path, meta: Mapping[str, Any], model: StagedModel, width: float | None,
               image_shape: Sequence[int] | None) -> None:
  if meta.get("model") not in (None, model.name):
    raise UsageError(f"{path} holds {meta['model']} weights, the model is {model.name}; "
                     f"build a {meta['model']} (model.name {meta['model']})")
  if width is not None and meta.get("width") is not None and float(meta["width"]) != width:
    raise UsageError(f"{path} holds {model.name} weights of width {meta['width']}, the model "
                     f"has width {width}; use model.width {meta['width']}")
  file_shape = meta.get("image_shape")
  if image_shape is not None and file_shape is not None and list(file_shape) != list(
      image_shape):
    raise UsageError(f"{path} was trained on {'x'.join(map(str, file_shape))} inputs, the "
                     f"model takes {'x'.join(map(str, image_shape))}; use inputs of that shape")


def check_torch_target(path: Path, fmt: str, tensors: Mapping, model: StagedModel) -> None:
  """UsageError unless `model` is a built-in model of the file's family, ImageNet design."""
  family = model_family(model)
  title, guess = FORMAT_TITLES[fmt], guess_architecture(fmt, tensors)
  looks = f" ({guess})" if guess else ""
  if family is None:
    raise UsageError(f"{path} holds {title} weights{looks}; they load into ldjax's built-in "
                     "ResNet and VGG models only")
  if (family == "resnet") != (fmt == RESNET):
    raise UsageError(f"{path} holds {title} weights{looks}, the model is {model.name}; "
                     f"build the model the file is of" + (f" (model.name {guess})" if guess else ""))
  small = any((isinstance(s, ResNetStem) and not s.imagenet)
              or (isinstance(s, VGGConvStage) and s.ceil_pool) for s in model.stages)
  if small:
    raise UsageError(f"{path} holds {title} weights, which need ldjax's ImageNet design of "
                     f"{model.name} (inputs of at least 128x128 px); this model is built for "
                     "smaller inputs")


def fill(path: Path, fmt: str, tensors: Mapping[str, np.ndarray], sources: Mapping[tuple, Source],
         model: StagedModel, template: Sequence[Mapping], keep_classifier: bool,
         meta: dict | None) -> tuple[dict[tuple, Any], InitInfo]:
  """{leaf key: array} of the file for every template leaf; the checks of the module doc."""
  shapes = {(i, c, p): leaf for i, v in enumerate(template) for c, tree in v.items()
            for p, leaf in leaves(tree)}
  arrays, used, missing, mismatched = {}, set(), [], []
  for key, src in sources.items():
    if src.name not in tensors:
      missing.append(src.name)
      continue
    used.add(src.name)
    raw = tensors[src.name]
    arr = src.convert(raw)
    want = shapes[key]
    if arr.shape != tuple(want.shape):
      mismatched.append((key, src, raw.shape, arr.shape))
      continue
    arrays[key] = np.asarray(arr, dtype=want.dtype)
  extra = unused(tensors, used)
  if missing or extra:
    raise architecture_error(path, fmt, tensors, model, missing, extra, meta)
  last = model.num_stages - 1
  classes = [m for m in mismatched if m[0][0] == last and classes_only(m[3], m[0], shapes)]
  others = [m for m in mismatched if m not in classes]
  if others:   # a kernel's shape tells most: it first
    others.sort(key=lambda m: (m[0][1] != "params", m[0][2][-1] != "kernel"))
    raise shape_error(path, fmt, model, shapes, others[0])
  file_classes, reinit = None, ()
  model_classes = int([shapes[k] for k in shapes if k[0] == last][-1].shape[-1])
  if classes:
    file_classes = int(classes[0][3][-1])
    if keep_classifier:
      raise UsageError(f"{path} has a classifier of {file_classes} classes, the model "
                       f"{model_classes}; without keep_classifier (start.keep_classifier) it "
                       "starts afresh")
    arrays = {k: a for k, a in arrays.items() if k[0] != last}
    reinit = (model.stage_names[last],)
  return arrays, InitInfo(str(path), FORMAT_TITLES[fmt], len(arrays), reinit, file_classes,
                          model_classes, meta)


def classes_only(shape: tuple[int, ...], key: tuple, shapes: Mapping) -> bool:
  """A classifier array that differs from the model's in its last axis (the classes) only."""
  want = tuple(shapes[key].shape)
  return len(shape) == len(want) and shape[:-1] == want[:-1] and shape[-1] != want[-1]


def architecture_error(path: Path, fmt: str, tensors: Mapping, model: StagedModel,
                       missing: list[str], extra: list[str], meta: dict | None) -> UsageError:
  parts = []
  if missing:
    parts.append(f"it lacks {len(missing)} tensors the model needs (e.g. {missing[0]})")
  if extra:
    parts.append(f"has {len(extra)} the model has no place for (e.g. {extra[0]})")
  guess = (meta or {}).get("model") if fmt == LDJAX else guess_architecture(fmt, tensors)
  looks = f"; it looks like {guess}" if guess and guess != model.name else ""
  if looks and guess.startswith("vgg") and not guess.endswith("_bn"):
    looks += " (ldjax: --model " + guess + " --no-batch-norm)"
  return UsageError(f"{path} ({FORMAT_TITLES[fmt]}) does not fit {model.name}: "
                    f"{' and '.join(parts)}{looks}")


def shape_error(path: Path, fmt: str, model: StagedModel, shapes: Mapping,
                mismatch: tuple) -> UsageError:
  key, src, raw_shape, _ = mismatch
  i, collection, leaf_path = key
  want = tuple(shapes[key].shape)
  ours = tensor_name(model.stage_names[i], collection, leaf_path)
  if fmt == LDJAX:
    line = f"tensor {src.name} has shape {raw_shape}, the model's is {want}"
  else:
    line = (f"tensor {src.name} has shape {tuple(raw_shape)}, the model's {ours} needs "
            f"{to_torch_shape(src, want) if src.convert is not identity else want} "
            f"in torch's layout")
  hint = "; another width?"
  if src.name in ("classifier.0.weight", "pre_logits.fc1.weight"):
    hint = "; torch's VGG classifier reads a 7x7 map (224x224 inputs)"
  elif fmt == LDJAX and src.name.startswith(f"{model.stage_names[model.num_conv]}/"):
    hint = "; another width or input size?"
  return UsageError(f"{path} does not fit {model.name}: {line}{hint}")


def rebuild(template: Sequence[Mapping], arrays: Mapping[tuple, Any]) -> list[dict]:
  """The template's structure, each leaf the loaded array where there is one."""
  def tree(node, i, collection, prefix):
    return {k: tree(v, i, collection, (*prefix, str(k))) if isinstance(v, Mapping)
            else (jnp.asarray(arrays[(i, collection, (*prefix, str(k)))])
                  if (i, collection, (*prefix, str(k))) in arrays else v)
            for k, v in node.items()}
  return [{c: tree(t, i, c, ()) for c, t in v.items()} for i, v in enumerate(template)]
