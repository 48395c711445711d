"""Finished (or interrupted) runs read back from their work directories.

Reads only what `python -m ldjax.run` wrote (config.json, metrics.jsonl,
summary.json), so a report can be redone at any time without training.
A `Run` is one strategy's directory; a comparison directory holds one per
strategy. A run without summary.json gets the same fields worked out from
the epochs written so far.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldjax.strategy import rank
from ldjax.errors import UsageError
from ldjax.jsonio import read_json, read_jsonl

RUN_FILES = ("config.json", "metrics.jsonl")


@dataclass
class Run:
  """One strategy's run directory, as read back from disk.

  `summary` is summary.json, or, for a run still going or interrupted
  (`complete` False), the same fields worked out from the epochs written so far.
  The other fields are read from config.json (or the summary) when made.
  """
  path: Path
  config: dict
  metrics: list[dict]
  summary: dict
  complete: bool = True
  strategy: str = field(init=False)
  network: str = field(init=False)
  dataset: str = field(init=False)
  width: float | None = field(init=False)
  seed: int | None = field(init=False)

  def __post_init__(self):
    c, s = self.config, self.summary
    self.strategy = c.get("strategy") or s.get("strategy") or "?"
    # model_name tells VGG with BN ("vgg11_bn") from without ("vgg11"); Fig. 3 needs both.
    self.network = c.get("model_name") or s.get("model") or str(c.get("model"))
    self.dataset = s.get("dataset") or str(c.get("dataset"))
    self.width, self.seed = c.get("width"), c.get("seed")

  @property
  def stage_names(self) -> list[str]:
    return list(self.config.get("stage_names") or [])

  @property
  def group(self) -> tuple:
    """What seeds are averaged over: (network, dataset, width)."""
    return (self.network, self.dataset, self.width)

  @property
  def key(self) -> tuple:
    """What strategies are compared within: (network, dataset, width, seed)."""
    return (*self.group, self.seed)

  @property
  def epochs(self) -> np.ndarray:
    return np.array([m["epoch"] for m in self.metrics])



def _summary_from_metrics(config: dict, metrics: list[dict]) -> dict:
  """summary.json's fields from the epochs so far, the way `ldjax.train.fit` totals them."""
  n_train = config.get("num_train") or 0
  cut, events = 0, []
  for m in metrics:
    d = m.get("decision") or {}
    if d.get("drop") and d.get("new_cut") is not None:
      events.append({"epoch": m["epoch"], "stages_dropped": d["new_cut"] - cut,
                     "cut": d["new_cut"]})
      cut = d["new_cut"]
  times = [m.get("time", {}) for m in metrics]
  # The last evaluated epoch (--eval-every skips some; a complete run ends with one).
  last_eval = next((m for m in reversed(metrics) if m.get("test_accuracy") is not None), {})
  return {
      "strategy": config.get("strategy"), "model": config.get("model_name"),
      "dataset": config.get("dataset"), "epochs": len(metrics),
      "test_accuracy": last_eval.get("test_accuracy"), "test_loss": last_eval.get("test_loss"),
      "train_time_s": sum(t.get("train_s", 0.0) + t.get("extract_store_s", 0.0)
                          + t.get("compile_s", 0.0) for t in times),
      "compile_time_s": sum(t.get("compile_s", 0.0) for t in times),
      "drop_events": events, "final_cut": cut,
      "forward_macs_total": sum(m["forward_macs"] for m in metrics) * n_train,
      "train_macs_total": sum(m["train_macs"] for m in metrics) * n_train,
  }


def load_run(path: str | Path) -> Run:
  """Reads one run directory; UsageError if it is not one."""
  path = Path(path)
  if not path.is_dir():
    raise UsageError(f"{str(path)!r} is not a directory; pass a run directory written by "
                     "python -m ldjax.run")
  missing = [f for f in RUN_FILES if not (path / f).is_file()]
  if missing:
    raise UsageError(f"{str(path)!r} is not a run directory (no {' or '.join(missing)}); pass "
                     "one written by python -m ldjax.run, or its comparison directory")
  config = read_json(path / "config.json")
  metrics = read_jsonl(path / "metrics.jsonl")
  if not metrics:
    raise UsageError(f"{str(path)!r} has no finished epoch in metrics.jsonl yet")
  summary_path = path / "summary.json"
  if summary_path.is_file():
    return Run(path, config, metrics, read_json(summary_path))
  return Run(path, config, metrics, _summary_from_metrics(config, metrics), complete=False)


def _run_dirs(path: Path) -> list[Path]:
  """A run directory itself, or a comparison directory's strategy sub-directories."""
  if any((path / f).is_file() for f in RUN_FILES) or not path.is_dir():
    return [path]  # load_run says what is wrong with it, if anything
  subs = [d for d in path.iterdir() if d.is_dir() and (d / "config.json").is_file()]
  return sorted(subs, key=lambda d: rank(d.name)) or [path]


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
  """Runs of each path (run or comparison directory), each directory once."""
  runs, seen = [], set()
  for p in paths:
    for d in _run_dirs(Path(p)):
      if d.resolve() not in seen:
        seen.add(d.resolve())
        runs.append(load_run(d))
  if not runs:
    raise UsageError("no run directories given")
  return runs


def default_out(path: str | Path) -> Path:
  """Where the report of `path` goes: its comparison directory if it is in one."""
  path = Path(path)
  if not (path / "config.json").is_file():
    return path  # a comparison directory
  return path.parent if (path.parent / "comparison.json").is_file() else path
