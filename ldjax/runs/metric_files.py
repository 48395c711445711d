"""The epoch records of metrics.jsonl in forms other tools open: `metrics.csv` (a
spreadsheet, pandas) and TensorBoard event files.

metrics.csv is rewritten from metrics.jsonl after every epoch (a temporary
file, renamed): one row per epoch, one column per scalar (nested dicts
flattened as ``time_train_s``, lists as JSON text, None as an empty cell), so
it always agrees with metrics.jsonl, also after a resume cuts that back.

TensorBoard event files are written by tensorboardX (no TensorFlow), into the
run's directory, one scalar per `TAGS` entry and per ``time`` entry, with the
epoch as the step; a resumed run starts its writer with ``purge_step`` so
TensorBoard drops the events of epochs it repeats. ``tensorboard --logdir
WORKDIR`` shows every strategy of a comparison as one run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

# metrics.jsonl key -> TensorBoard tag (grouped in TensorBoard by the part before "/").
TAGS = {
    "loss": "loss/train", "test_loss": "loss/test", "val_loss": "loss/val",
    "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
    "val_accuracy": "accuracy/val", "lr": "optim/lr", "batch_size": "optim/batch_size",
    "dropped_stages": "drop/dropped_stages", "stored_stages": "drop/stored_stages",
    "trainable_params": "cost/trainable_params", "forward_params": "cost/forward_params",
    "forward_macs": "cost/forward_macs", "train_macs": "cost/train_macs",
}


def flatten(record: dict) -> dict:
  """One level of scalars: nested dicts joined with "_", lists as JSON text."""
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      for k, v in flatten(value).items():
        out[f"{key}_{k}"] = v
    elif isinstance(value, (list, tuple)):
      out[key] = json.dumps(value)
    else:
      out[key] = value
  return out


def write_csv(path: str | os.PathLike, records: Sequence[dict]) -> None:
  """Writes `records` as CSV (columns in first-seen order) to `path`, atomically."""
  rows = [flatten(r) for r in records if isinstance(r, dict)]
  columns = list(dict.fromkeys(k for row in rows for k in row))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, columns, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
  finally:   # a full disk: no half-written temporary file stays
    tmp.unlink(missing_ok=True)


def scalars(record: dict) -> dict[str, float]:
  """The TensorBoard scalars of one epoch's record (numbers only; None left out)."""
  out = {tag: record[key] for key, tag in TAGS.items() if key in record}
  out |= {f"time/{k}": v for k, v in (record.get("time") or {}).items()}
  return {t: float(v) for t, v in out.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


class EventFiles:
  """TensorBoard event files in a run's directory, opened at the first record."""

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory)
    self.writer = None
    self.purge_step: int | None = None

  def add(self, record: dict) -> None:
    if self.writer is None:
      from tensorboardX import SummaryWriter   # lazy: only runs with --tensorboard need it
      # The file name has the second and the host; the suffix keeps a second writer of the
      # same second (a resume) from replacing the first's file.
      self.writer = SummaryWriter(str(self.directory), purge_step=self.purge_step,
                                  flush_secs=30, filename_suffix=f".{os.getpid()}.{id(self)}"
                                  f".{self.purge_step or 0}")
    step = int(record["epoch"])
    for tag, value in scalars(record).items():
      self.writer.add_scalar(tag, value, step)
    self.writer.flush()

  def purge_from(self, step: int) -> None:
    """Events of steps >= `step` written before are to be dropped (a resumed run)."""
    self.close()
    self.purge_step = step

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None
