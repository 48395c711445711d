"""What a run records, typed: `EpochRecord` (a line of metrics.jsonl), `RunTotals` and
`RunSummary` (summary.json), and `EpochTimes` (an epoch's wall time, split).

`ldjax.train.fit` builds them field by field; each `to_json()` gives the dict
that is written, its keys in the order of the files earlier versions wrote, so a
run's metrics.jsonl and summary.json are the same bytes as before these types.
Entries that only some runs have (a budget's, a continued run's) are left out of
the JSON when unset, as they were.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EpochTimes:
  """Wall seconds of one epoch: training steps, filling a new store, waiting for
  compiles, the evaluation after it; `input_wait_s` is the part of `train_s` the
  loop waited for its batches (`ldjax.train.reader`)."""
  train_s: float = 0.0
  extract_store_s: float = 0.0
  compile_s: float = 0.0
  eval_s: float = 0.0
  input_wait_s: float = 0.0

  @property
  def epoch_s(self) -> float:
    return sum((self.train_s, self.extract_store_s, self.compile_s, self.eval_s))

  @property
  def training_s(self) -> float:
    """The epoch's part of T (`RunTotals.train_time_s`): all but the evaluation."""
    return self.train_s + self.extract_store_s + self.compile_s

  def to_json(self) -> dict:
    return {"train_s": self.train_s, "extract_store_s": self.extract_store_s,
            "compile_s": self.compile_s, "eval_s": self.eval_s, "epoch_s": self.epoch_s,
            "input_wait_s": self.input_wait_s}


@dataclasses.dataclass(frozen=True)
class EpochRecord:
  """One epoch of a run: a line of metrics.jsonl.

  `dropped_stages` / `stored_stages`: the cut positions while it trained (stages
  [0, stored) read from the store, [stored, dropped) frozen). MACs are per
  example: `forward_macs` of the forward pass, `train_macs` of forward and
  backward, both including a new store's extraction. `scores` and `decision`:
  the decision rule's (`ldjax.train.decisions.score_and_decide`). `steps` and
  `budget_spent` (in reference epochs): with a budget only.
  """
  epoch: int                       # 1-based
  strategy: str
  lr: float                        # at the epoch's first step, times lr_scale
  batch_size: int
  lr_scale: float
  loss: float
  train_accuracy: float
  test_loss: float | None          # None: not evaluated after this epoch
  test_accuracy: float | None
  val_loss: float | None
  val_accuracy: float | None
  time: EpochTimes
  dropped_stages: int
  stored_stages: int
  trainable_params: int
  forward_params: int
  forward_macs: int
  train_macs: int
  xla_step_flops: float | None
  store: dict | None               # the store filled this epoch, if any
  augment: dict                    # what augmentation the head's input had
  input_bytes_per_example: int
  scores: dict
  decision: dict | None
  cpu_s: float
  steps: int | None = None
  budget_spent: float | None = None

  def to_json(self) -> dict:
    out = {
        "epoch": self.epoch, "strategy": self.strategy, "lr": self.lr,
        "batch_size": self.batch_size, "lr_scale": self.lr_scale,
        "loss": self.loss, "train_accuracy": self.train_accuracy,
        "test_loss": self.test_loss, "test_accuracy": self.test_accuracy,
        "val_loss": self.val_loss, "val_accuracy": self.val_accuracy,
        "time": self.time.to_json(),
        "dropped_stages": self.dropped_stages, "stored_stages": self.stored_stages,
        "trainable_params": self.trainable_params, "forward_params": self.forward_params,
        "forward_macs": self.forward_macs, "train_macs": self.train_macs,
        "xla_step_flops": self.xla_step_flops,
        "store": self.store, "augment": self.augment,
        "input_bytes_per_example": self.input_bytes_per_example,
        "scores": self.scores, "decision": self.decision, "cpu_s": self.cpu_s,
    }
    if self.steps is not None:
      out |= {"steps": self.steps, "budget_spent": self.budget_spent}
    return out


@dataclasses.dataclass
class RunTotals:
  """The sums over a run's epochs so far (kept in each checkpoint, so a resumed run goes
  on counting): T (`train_time_s`: training, extraction and compile waits), its CPU
  seconds, all compiles (evaluation's too), and MACs over the examples trained on.
  `budget_spent` and `steps`: with a budget only."""
  compile_time_s: float
  train_time_s: float = 0.0
  train_cpu_s: float = 0.0
  forward_macs_total: int = 0
  train_macs_total: int = 0
  budget_spent: float | None = None
  steps: int | None = None

  def add_epoch(self, rec: EpochRecord, seen: int, compile_s: float) -> None:
    """Adds an epoch that trained on `seen` examples; `compile_s`: its compiles, those
    of its evaluation included."""
    self.train_time_s += rec.time.training_s
    self.train_cpu_s += rec.cpu_s
    self.compile_time_s += compile_s
    self.forward_macs_total += rec.forward_macs * seen
    self.train_macs_total += rec.train_macs * seen

  def update(self, saved: dict) -> None:
    """The totals a checkpoint saved (`to_json`), over these."""
    for key, value in saved.items():
      setattr(self, key, value)

  def to_json(self) -> dict:
    out = {"train_time_s": self.train_time_s, "train_cpu_s": self.train_cpu_s,
           "compile_time_s": self.compile_time_s,
           "forward_macs_total": self.forward_macs_total,
           "train_macs_total": self.train_macs_total}
    if self.steps is not None:
      out |= {"budget_spent": self.budget_spent, "steps": self.steps}
    return out


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """A finished run: summary.json.

  `continued_from` and `data_seen` are written when the run was given a start
  (`ldjax.train.continuation.Start`): the run it continued (None: a fresh start) and
  the datasets trained on so far, this run's last. `budget`: with a budget only.
  """
  strategy: str
  model: str
  dataset: str
  epochs: int
  test_accuracy: float | None
  test_loss: float | None
  val_accuracy: float | None
  val_size: int | None
  totals: RunTotals
  drop_events: list
  final_cut: int
  final_store_cut: int
  devices: int
  store_fallbacks: list
  param_l2: float
  drop_state: dict
  continued_from: str | None = None
  data_seen: tuple[str, ...] | None = None   # None: no start given (no entry)
  budget: dict | None = None

  def to_json(self) -> dict:
    out = {"strategy": self.strategy, "model": self.model, "dataset": self.dataset,
           "epochs": self.epochs, "test_accuracy": self.test_accuracy,
           "test_loss": self.test_loss, "val_accuracy": self.val_accuracy,
           "val_size": self.val_size, **self.totals.to_json(),
           "drop_events": list(self.drop_events), "final_cut": self.final_cut,
           "final_store_cut": self.final_store_cut, "devices": self.devices,
           "store_fallbacks": self.store_fallbacks, "param_l2": self.param_l2,
           "drop_state": self.drop_state}
    if self.data_seen is not None:
      out |= {"continued_from": self.continued_from, "data_seen": list(self.data_seen)}
    if self.budget is not None:
      out["budget"] = self.budget
    return out
