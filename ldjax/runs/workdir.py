"""The work directory of a run: config.json, metrics.jsonl (and metrics.csv, TensorBoard
event files: `ldjax.runs.metric_files`), summary.json.

Following big_vision: the configuration (with the git revision) is written
first, one JSON line per epoch is appended as it ends, and the summary is
written last. JSON files are written to a temporary name and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from ldjax import writable
from ldjax.errors import UsageError
from ldjax.runs import cluster
from ldjax.jsonio import append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
from ldjax.runs.metric_files import EventFiles, write_csv


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
    writable.probe(path)
  except OSError as e:
    raise UsageError(f"cannot write to work directory {str(path)!r} ({e.strerror or e}); "
                     "choose another with --workdir") from None
  return path


def _if_writer(method):
  """A RunDir method that does nothing in a process that does not write (`RunDir.writes`)."""
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    if self.writes:
      return method(self, *args, **kwargs)
  return wrapper


class RunDir:
  """Files of one strategy's run.

  In a run of several processes only the primary one writes them
  (`writes`, `ldjax.runs.cluster`); the others' writes do nothing.
  """

  def __init__(self, path: str | os.PathLike, writes: bool | None = None,
               tensorboard: bool = False):
    self.path = ensure_writable(path)
    self.metrics_path = self.path / "metrics.jsonl"
    self.csv_path = self.path / "metrics.csv"
    self.writes = cluster.is_primary() if writes is None else writes
    self.events = EventFiles(self.path) if tensorboard else None

  @_if_writer
  def write_config(self, config, **extra) -> None:
    """config.json: the settings by flat name (`Config.flat`, or a dict) and `extra`."""
    cfg = config.flat() if hasattr(config, "flat") else dict(config)
    write_json_atomic(self.path / "config.json", cfg | extra | {"git_revision": git_revision()})

  @_if_writer
  def start_metrics(self) -> None:
    self.metrics_path.write_text("")
    self.csv_path.unlink(missing_ok=True)

  @_if_writer
  def append_metrics(self, record: dict) -> None:
    append_jsonl(self.metrics_path, record)
    write_csv(self.csv_path, self.read_metrics())
    if self.events is not None:
      self.events.add(record)

  @_if_writer
  def truncate_metrics(self, epochs: int) -> None:
    """Keeps the lines of epochs 1..`epochs` (a resumed run rewrites the rest)."""
    records = read_jsonl(self.metrics_path) if self.metrics_path.exists() else []
    write_jsonl_atomic(self.metrics_path, [r for r in records if _epoch_of(r) <= epochs])
    write_csv(self.csv_path, self.read_metrics())
    if self.events is not None:
      self.events.purge_from(epochs + 1)

  @_if_writer
  def write_summary(self, summary: dict) -> None:
    write_json_atomic(self.path / "summary.json", summary)
    if self.events is not None:
      self.events.close()

  def read_metrics(self) -> list[dict]:
    return read_jsonl(self.metrics_path)


def _epoch_of(record) -> float:
  """The epoch a metrics record is of; infinity for a record that is not one."""
  epoch = record.get("epoch") if isinstance(record, dict) else None
  return epoch if isinstance(epoch, int) else float("inf")
