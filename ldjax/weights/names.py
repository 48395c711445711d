"""ldjax's own names for a model's variables in a `.safetensors` file, and its metadata.

A model's variables are a list with one ``{"params": ..., "batch_stats": ...}``
dict per stage (`ldjax.models.staged`). In a file each array is one tensor
named

    {stage_name}/{collection}/{module}/.../{leaf}

with the stage names of `StagedModel.stage_names` and the collection
``params`` or ``batch_stats``, e.g. ``layer1.0/params/Conv_0/kernel`` or
``stem/batch_stats/BatchNorm_0/mean``. Arrays keep Flax's layout (conv
kernels HWIO, dense kernels (in, out)) and dtype, so a save and a load give
the same bits. Stage names hold no "/" (checked), Flax module names never do.

The header's metadata (safetensors keeps a string -> string map) holds one
entry, ``"ldjax"``, a JSON object: ``format_version``, ``model`` (the
`StagedModel.name`, e.g. ``vgg11_bn``), ``stage_names``, ``width``,
``batch_norm``, ``image_shape`` (H, W, C), ``num_classes``, ``ldjax_version``,
and whatever else the writer adds (a run adds ``input_mean`` / ``input_std``,
the per-channel normalization its inputs had, and e.g. ``strategy``,
``dataset``). A reader needs nothing but this module to rebuild the stage list.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

META_KEY = "ldjax"
FORMAT_VERSION = 1
COLLECTIONS = ("params", "batch_stats")
SEP = "/"


def ldjax_version() -> str:
  try:
    return importlib.metadata.version("ldjax")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def tensor_name(stage: str, collection: str, path: Sequence[str]) -> str:
  return SEP.join((stage, collection, *path))


def flatten(stage_names: Sequence[str], variables: Sequence[Mapping]) -> dict[str, np.ndarray]:
  """{tensor name: numpy array} of a per-stage variable list (see the module doc)."""
  if len(stage_names) != len(variables):
    raise ValueError(f"{len(variables)} stage variables for {len(stage_names)} stage names")
  out = {}
  for stage, v in zip(stage_names, variables):
    if SEP in stage:
      raise ValueError(f"stage name {stage!r} holds {SEP!r}; it cannot name a tensor")
    for collection, tree in v.items():
      for path, leaf in leaves(tree):
        out[tensor_name(stage, collection, path)] = np.asarray(leaf)
  return out


def leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
  """(path, leaf) of a nested dict, in key order."""
  out = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out += leaves(value, (*prefix, str(key)))
    else:
      out.append(((*prefix, str(key)), value))
  return out


def unflatten(stage_names: Sequence[str], tensors: Mapping[str, np.ndarray]) -> list[dict]:
  """The per-stage variable list of `tensors` named by `flatten`; ValueError for a name
  outside the scheme or of another stage."""
  index = {s: i for i, s in enumerate(stage_names)}
  out: list[dict] = [{} for _ in stage_names]
  for name, array in tensors.items():
    stage, collection, *path = name.split(SEP)
    if stage not in index or collection not in COLLECTIONS or not path:
      raise ValueError(name)
    node = out[index[stage]].setdefault(collection, {})
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = array
  return out


def is_ldjax_name(name: str) -> bool:
  parts = name.split(SEP)
  return len(parts) >= 3 and parts[1] in COLLECTIONS


def make_meta(model_name: str, stage_names: Sequence[str], num_classes: int,
              meta: Mapping[str, Any]) -> dict[str, Any]:
  """The metadata object: `meta` (a writer's, JSON-able) plus the entries ldjax sets."""
  batch_norm = meta.get("batch_norm", not model_name.startswith("vgg")
                        or model_name.endswith("_bn"))
  out = {**meta, "format_version": FORMAT_VERSION, "model": model_name,
         "stage_names": list(stage_names), "num_classes": int(num_classes),
         "batch_norm": bool(batch_norm), "ldjax_version": ldjax_version()}
  if out.get("image_shape") is not None:
    out["image_shape"] = [int(s) for s in out["image_shape"]]
  return out


def encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
  return {META_KEY: json.dumps(meta, sort_keys=True, allow_nan=False)}


def decode_meta(header: Mapping[str, str] | None) -> dict[str, Any] | None:
  """The metadata object of a file's header; None if the file has none (not ldjax's).
  ValueError for an entry that is not a JSON object."""
  if not header or META_KEY not in header:
    return None
  meta = json.loads(header[META_KEY])
  if not isinstance(meta, dict):
    raise ValueError("not a JSON object")
  return meta
