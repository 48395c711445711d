"""Reading and writing `.safetensors` files, with one-line errors; pickle files refused.

A `.safetensors` file is an 8-byte header length, a JSON header (each
tensor's dtype, shape and byte range, and a string -> string metadata map)
and the raw bytes: loading it runs no code, unlike torch's `.pt` / `.pth` /
`.bin` / `.ckpt` files, which are pickles (or zip archives of pickles) and
can run anything when loaded. ldjax never unpickles: such a file is refused
with the line that converts it.

`read_tensors` gives every tensor as a numpy array (bfloat16 through
ml_dtypes, which safetensors' numpy reader lacks) and the header's metadata;
a missing, empty, truncated or garbled file is a `UsageError` naming it.
`write_tensors` writes to a temporary name in the same directory and renames
it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open

from ldjax.errors import UsageError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")
CONVERT_HINT = ("convert it once where torch runs: "
                "safetensors.torch.save_file(model.state_dict(), \"x.safetensors\")")
# What numpy cannot read by name: safetensors dtype -> numpy dtype.
EXTRA_DTYPES = {"BF16": np.dtype(ml_dtypes.bfloat16)}


def pickle_error(path: Path) -> UsageError:
  return UsageError(f"{path} is a pickle file (torch.save), which ldjax does not load since "
                    f"loading it can run code; {CONVERT_HINT}")


def looks_pickled(path: Path) -> bool:
  """A zip archive (torch.save since 1.6) or a pickle (protocol 2-5) by its first bytes."""
  try:
    with open(path, "rb") as f:
      head = f.read(2)
  except OSError:
    return False
  return head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04",
                                                                  b"\x05"))


def check_readable(path: Path) -> None:
  if not path.exists():
    raise UsageError(f"weights file {str(path)!r} does not exist")
  if not path.is_file():
    raise UsageError(f"weights path {str(path)!r} is not a file")
  if path.suffix.lower() in PICKLE_SUFFIXES:
    raise pickle_error(path)


def unreadable(path: Path, e: Exception) -> UsageError:
  """The error for a file safetensors cannot parse (a pickle under another name included)."""
  if looks_pickled(path):
    return pickle_error(path)
  return UsageError(f"{path} is not a readable .safetensors file ({str(e).splitlines()[0]}); "
                    "it may be truncated, or not a safetensors file at all")


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({name: array}, header metadata) of a `.safetensors` file; UsageError if it cannot be."""
  path = Path(path)
  check_readable(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      metadata = dict(f.metadata() or {})
      dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
      tensors = {k: np.array(f.get_tensor(k)) for k, d in dtypes.items()
                 if d not in EXTRA_DTYPES}
  except safetensors.SafetensorError as e:
    raise unreadable(path, e) from None
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  extra = [k for k, d in dtypes.items() if d in EXTRA_DTYPES]
  if extra:
    tensors |= _read_raw(path, extra)
  return tensors, metadata


def _read_raw(path: Path, names: list[str]) -> dict[str, np.ndarray]:
  """Tensors of a dtype numpy lacks, from their byte ranges (the header is already checked)."""
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    out = {}
    for name in names:
      entry = header[name]
      start, end = entry["data_offsets"]
      f.seek(8 + n + start)
      raw = f.read(end - start)
      out[name] = np.frombuffer(raw, EXTRA_DTYPES[entry["dtype"]]).reshape(entry["shape"]).copy()
  return out


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
  """The header metadata alone (no tensor is read); UsageError as `read_tensors`."""
  path = Path(path)
  check_readable(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      return dict(f.metadata() or {})
  except safetensors.SafetensorError as e:
    raise unreadable(path, e) from None


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
  """{name: shape} from the header alone (no tensor is read); UsageError as `read_tensors`."""
  path = Path(path)
  check_readable(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except safetensors.SafetensorError as e:
    raise unreadable(path, e) from None


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                  metadata: Mapping[str, str]) -> Path:
  """Writes `tensors` atomically (a temporary name in the same directory, then a rename)."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  try:
    safetensors.numpy.save_file(arrays, str(tmp), metadata=dict(metadata))
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path
