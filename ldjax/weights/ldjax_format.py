"""ldjax's own weights file: a model's per-stage variables and its metadata in one
`.safetensors` file (names and metadata: `ldjax.weights.names`).

  save_safetensors("w.safetensors", model, variables, {"width": 0.25, "image_shape": (28, 28, 1)})
  variables, meta = load_safetensors("w.safetensors")

The load gives the arrays as numpy, bit for bit what was saved, in the stage
order of the metadata's ``stage_names``; `ldjax.weights.finetune.init_from`
puts them into a model's fresh variables, with shape checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ldjax.errors import UsageError
from ldjax.models.staged import StagedModel
from ldjax.weights import names
from ldjax.weights.files import read_tensors, write_tensors
from ldjax.weights.torch_names import FORMAT_TITLES, LDJAX, detect_format

REQUIRED_META = ("width", "image_shape")


def num_classes_of(variables: Sequence[Mapping]) -> int:
  """The classifier's output size: the last leaf axis of the last stage's dense kernel."""
  kernels = [leaf for path, leaf in names.leaves(variables[-1].get("params", {}))
             if path[-1] == "kernel"]
  if not kernels:
    raise ValueError("the last stage has no dense kernel")
  return int(np.shape(kernels[-1])[-1])


def file_meta(model: StagedModel, variables: Sequence[Mapping],
              meta: Mapping[str, Any]) -> dict[str, Any]:
  """The metadata object a file of `model` gets (ValueError without width / image_shape)."""
  missing = [k for k in REQUIRED_META if meta.get(k) is None]
  if missing:
    raise ValueError(f"weights metadata needs {', '.join(missing)}")
  if meta.get("model", model.name) != model.name:
    raise ValueError(f"metadata names model {meta['model']!r}, the model is {model.name!r}")
  return names.make_meta(model.name, model.stage_names, num_classes_of(variables), meta)


def save_safetensors(path: str | os.PathLike, model: StagedModel, variables: Sequence[Mapping],
                     meta: Mapping[str, Any]) -> Path:
  """Writes `variables` (one dict per stage of `model`) to `path` atomically.

  `meta` must hold ``width`` and ``image_shape`` (H, W, C); ``model``,
  ``stage_names``, ``num_classes``, ``batch_norm`` and ``ldjax_version`` are
  set here; anything else JSON-able is kept (e.g. ``input_mean``/``input_std``).
  """
  tensors = names.flatten(model.stage_names, variables)
  return write_tensors(path, tensors, names.encode_meta(file_meta(model, variables, meta)))


def parse_ldjax(path: Path, tensors: Mapping[str, np.ndarray],
                header: Mapping[str, str]) -> tuple[list[dict], dict[str, Any]]:
  """(per-stage variables, metadata) of ldjax-named `tensors`; UsageError if they are not."""
  try:
    meta = names.decode_meta(header)
  except ValueError as e:
    raise UsageError(f"{path} has a garbled ldjax metadata entry ({e}); save the weights "
                     "again") from None
  if meta is None or not isinstance(meta.get("stage_names"), list):
    raise UsageError(f"{path} has ldjax tensor names but no ldjax metadata (stage_names); "
                     "save it with ldjax.weights.save_safetensors")
  try:
    variables = names.unflatten(meta["stage_names"], tensors)
  except ValueError as e:
    raise UsageError(f"{path}: tensor {e} is of no stage its metadata lists") from None
  return variables, meta


def load_safetensors(path: str | os.PathLike) -> tuple[list[dict], dict[str, Any]]:
  """(per-stage variables as numpy arrays, metadata) of an ldjax weights file.

  UsageError (one line) for a missing, pickled, corrupt or non-ldjax file; a
  torchvision / timm file loads into a model with `init_from` instead."""
  path = Path(path)
  tensors, header = read_tensors(path)
  fmt = detect_format(tensors)
  if fmt != LDJAX:
    what = FORMAT_TITLES.get(fmt, "no ldjax")
    raise UsageError(f"{path} holds {what} tensor names, not ldjax's; load it into a model "
                     "with ldjax.weights.init_from (or start.init_from)")
  return parse_ldjax(path, tensors, header)
