"""JSON and JSON-lines files: written atomically, read with one-line errors.

Every JSON file ldjax writes (config, summary, manifests, comparisons,
reports) goes through `write_json_atomic`: a temporary file, fsync, rename,
so a reader never sees half a file. `metrics.jsonl` is appended a line per
epoch; `read_jsonl` tolerates a last line cut short by a kill (the epochs
before it stand) and names the line of any other damage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ldjax.errors import UsageError


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
  """The object in `path`; UsageError if it is not valid JSON."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()


def read_jsonl(path: str | os.PathLike) -> list:
  """The records of a JSON-lines file, one per non-empty line.

  A last line that is not valid JSON (a process killed while appending it)
  is left out; a bad line before it is a UsageError naming the line.
  """
  path = Path(path)
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  out = []
  for i, line in lines:
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == lines[-1][0]:
        break
      raise UsageError(f"{path}:{i}: not valid JSON ({e.msg})") from None
  return out


def write_jsonl_atomic(path: str | os.PathLike, records: list) -> None:
  """Replaces `path` by these records (used to cut metrics back on resume)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
  os.replace(tmp, path)
