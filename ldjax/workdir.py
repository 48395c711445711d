"""The work directory of a run: config.json, metrics.jsonl, summary.json.

Following big_vision: the configuration (with the git revision) is written
first, one JSON line per epoch is appended as it ends, and the summary is
written last. JSON files are written to a temporary name and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

from ldjax.errors import UsageError
from ldjax.store import write_json_atomic


def git_revision() -> str | None:
  """The git revision of the ldjax source tree, if it is a git checkout."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True, timeout=5)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_writable(path: str | os.PathLike) -> Path:
  """Creates `path` if needed; UsageError if it cannot be written."""
  path = Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".ldjax_write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UsageError(f"cannot write to work directory {str(path)!r} ({e.strerror or e}); "
                     "choose another with --workdir") from None
  return path


class RunDir:
  """Files of one strategy's run."""

  def __init__(self, path: str | os.PathLike):
    self.path = ensure_writable(path)
    self.metrics_path = self.path / "metrics.jsonl"

  def write_config(self, config, **extra) -> None:
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    write_json_atomic(self.path / "config.json", cfg | extra | {"git_revision": git_revision()})

  def start_metrics(self) -> None:
    self.metrics_path.write_text("")

  def append_metrics(self, record: dict) -> None:
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()

  def truncate_metrics(self, epochs: int) -> None:
    """Keeps the lines of epochs 1..`epochs` (a resumed run rewrites the rest)."""
    lines = []
    if self.metrics_path.exists():
      lines = [line for line in self.metrics_path.read_text().splitlines()
               if line.strip() and _complete_epoch(line, epochs)]
    tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, self.metrics_path)

  def write_summary(self, summary: dict) -> None:
    write_json_atomic(self.path / "summary.json", summary)

  def read_metrics(self) -> list[dict]:
    with open(self.metrics_path) as f:
      return [json.loads(line) for line in f if line.strip()]


def _complete_epoch(line: str, epochs: int) -> bool:
  try:
    return json.loads(line)["epoch"] <= epochs
  except (ValueError, KeyError, TypeError):   # a line cut short by a kill
    return False
