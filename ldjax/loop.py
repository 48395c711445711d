"""The training loop of Learn & Drop (Algorithm 1), and its two baselines.

`fit` trains a `StagedModel` with one strategy:
- "sgd": the whole model, every epoch;
- "freeze": after the warm-up, the decision rule of `ldjax.scoring` freezes
  a growing prefix, which stays in the forward pass in inference mode;
- "drop": the same decisions, but the prefix leaves the forward pass: the
  epoch after a decision runs the newly dropped stages once over the training
  set (their input is the images or the previous store), stores their
  outputs and trains the head on them in the same pass; later epochs read
  the store.

The model's variables stay one list (one dict per stage) and the head is a
slice of it; the head step is compiled once per decision. Per-epoch records
go to `metrics.jsonl` through `ldjax.workdir.RunDir`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldjax import costs, scoring, steps
from ldjax.config import STRATEGIES, TrainConfig
from ldjax.data import Dataset, epoch_permutation
from ldjax.errors import UsageError
from ldjax.models import StagedModel, count_params, stage_output_shapes
from ldjax.progress import progress_bar
from ldjax.store import FeatureStore, storage_dtype
from ldjax.workdir import RunDir


@dataclasses.dataclass
class DropState:
  """Where the model is cut, and what the decisions so far have been."""
  cut: int = 0                                       # stages [0, cut) are frozen / dropped
  dropped_std_scores: list[float] = dataclasses.field(default_factory=list)
  events: list[dict] = dataclasses.field(default_factory=list)


class ImageSource:
  """Training images (uint8, host memory) as a source of batches."""

  def __init__(self, x: np.ndarray):
    self.x = x

  def read(self, idx: np.ndarray) -> np.ndarray:
    return self.x[idx]


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  if cfg.lr_decay_epoch is None:
    return optax.constant_schedule(cfg.lr)
  return optax.piecewise_constant_schedule(
      cfg.lr, {cfg.lr_decay_epoch * steps_per_epoch: cfg.lr_decay_factor})


def param_l2(variables: Sequence[dict]) -> float:
  leaves = jax.tree.leaves([v.get("params", {}) for v in variables])
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in leaves)))


class Trainer:
  """State and compiled functions of one run; `fit` drives it epoch by epoch."""

  def __init__(self, model: StagedModel, data: Dataset, cfg: TrainConfig, strategy: str,
               variables: list[dict], run_dir: RunDir | None):
    self.model, self.data, self.cfg, self.strategy = model, data, cfg, strategy
    self.run_dir = run_dir
    self.n_train = len(data.x_train)
    self.steps_per_epoch = self.n_train // cfg.batch_size
    self.tx = steps.make_optimizer(lr_schedule(cfg, self.steps_per_epoch), cfg.momentum)
    # A copy: the step donates its buffers, and callers reuse `variables`.
    self.variables = jax.tree.map(jnp.copy, list(variables))
    self.opt_states = [self.tx.init(v["params"]) for v in self.variables]
    self.norm = dict(mean=data.mean, std=data.std)
    self.shapes = stage_output_shapes(model, data.image_shape)
    self.macs = costs.stage_macs(model, data.image_shape)
    self.drop = DropState()
    self.key = jax.random.key(cfg.seed)
    self.source = ImageSource(data.x_train)   # what the head reads (drop: the store)
    self.store: FeatureStore | None = None
    self.step_fn: steps.Compiled | None = None
    self.compiled_for = -1
    self.feature_dtype = storage_dtype(cfg.feature_dtype)
    self.eval_fn = self._compile_eval()

  # -- compilation -------------------------------------------------------------

  def _head_input_struct(self, cut: int) -> jax.ShapeDtypeStruct:
    bs = self.cfg.batch_size
    if self.strategy == "drop" and cut > 0:
      return jax.ShapeDtypeStruct((bs, *self.shapes[cut - 1]), self.feature_dtype)
    return jax.ShapeDtypeStruct((bs, *self.data.image_shape), np.uint8)

  def _compile_step(self, cut: int) -> steps.Compiled:
    frozen = cut if self.strategy == "freeze" else 0
    state = self._head_state(cut)
    scores = scoring.init(state.params)
    frozen_vars = self.variables[:frozen]
    bs = self.cfg.batch_size
    return steps.compile_fn(
        steps.scored_train_step, state, scores, frozen_vars, self._head_input_struct(cut),
        jax.ShapeDtypeStruct((bs,), np.int32), self.key, np.int32(0),
        donate_argnums=(0, 1), head_stages=self.model.stages[cut:],
        frozen_stages=self.model.stages[:frozen], tx=self.tx, **self.norm)

  def _compile_eval(self) -> steps.Compiled:
    bs = min(self.cfg.eval_batch_size, len(self.data.x_test))
    return steps.compile_fn(
        steps.eval_step, self.variables,
        jax.ShapeDtypeStruct((bs, *self.data.image_shape), np.uint8),
        jax.ShapeDtypeStruct((bs,), np.int32), jax.ShapeDtypeStruct((bs,), np.bool_),
        stages=self.model.stages, **self.norm)

  def _compile_extract(self, start: int, stop: int, in_struct) -> steps.Compiled:
    return steps.compile_fn(
        steps.extract_features, self.variables[start:stop], in_struct,
        stages=self.model.stages[start:stop], out_dtype=self.feature_dtype, **self.norm)

  def _head_state(self, cut: int) -> steps.TrainState:
    params, stats = steps.split_variables(self.variables[cut:])
    return steps.TrainState(params, stats, self.opt_states[cut:])

  def _write_back(self, cut: int, state: steps.TrainState) -> None:
    self.variables[cut:] = steps.merge_variables(state.params, state.batch_stats)
    self.opt_states[cut:] = list(state.opt_state)

  # -- one epoch ---------------------------------------------------------------

  def run_epoch(self, epoch: int, pending: tuple[int, int] | None, bar) -> dict:
    cfg, cut = self.cfg, self.drop.cut
    times = dict(train_s=0.0, extract_store_s=0.0, compile_s=0.0)
    if self.compiled_for != cut:
      self.step_fn = self._compile_step(cut)
      self.compiled_for = cut
      times["compile_s"] += self.step_fn.seconds
    extract = new_store = None
    if pending is not None:
      start, stop = pending
      in_struct = self._head_input_struct(start)
      extract = self._compile_extract(start, stop, in_struct)
      times["compile_s"] += extract.seconds
      new_store = FeatureStore(
          self.n_train, self.shapes[stop - 1], cfg.feature_dtype, (0, stop),
          directory=None if self.run_dir is None else self.run_dir.path / "features",
          memory_budget_bytes=int(cfg.feature_memory_gb * (1 << 30)))
    t_epoch = time.perf_counter()
    state = self._head_state(cut)
    scores = scoring.init(state.params)
    frozen_vars = self.variables[:cut] if self.strategy == "freeze" else []
    tail_vars = self.variables[pending[0]:pending[1]] if pending else None
    perm = epoch_permutation(cfg.seed, epoch, self.n_train)
    y_all = self.data.y_train
    bs = cfg.batch_size
    metrics, to_store = [], []
    for s in range(self.steps_per_epoch):
      idx = perm[s * bs:(s + 1) * bs]
      x = self.source.read(idx)
      if extract is not None:
        if metrics:   # let the queued step finish, so the timer sees extraction alone
          metrics[-1]["loss"].block_until_ready()
        t0 = time.perf_counter()
        x = extract.fn(tail_vars, x).block_until_ready()
        times["extract_store_s"] += time.perf_counter() - t0
        to_store.append((idx, x))
      step = epoch * self.steps_per_epoch + s
      state, scores, m = self.step_fn.fn(state, scores, frozen_vars, x, y_all[idx], self.key,
                                         np.int32(step))
      metrics.append(m)
      if len(to_store) > 1:   # write the previous batch while this step runs
        t0 = time.perf_counter()
        new_store.write(*self._to_host(to_store.pop(0)))
        times["extract_store_s"] += time.perf_counter() - t0
      if s >= 2:   # bound the work in flight without a sync on the newest step
        metrics[s - 2]["loss"].block_until_ready()
      bar.update(1)
    if extract is not None:
      t0 = time.perf_counter()
      for item in to_store:
        new_store.write(*self._to_host(item))
      rest = perm[self.steps_per_epoch * bs:]
      for i in range(0, len(rest), bs):   # examples this epoch's batches left out
        idx = rest[i:i + bs]
        padded = np.concatenate([idx, perm[:bs - len(idx)]])
        feats = np.asarray(extract.fn(tail_vars, self.source.read(padded)))
        new_store.write(idx, feats[:len(idx)])
      new_store.finalize()
      times["extract_store_s"] += time.perf_counter() - t0
    jax.block_until_ready(state)
    epoch_s = time.perf_counter() - t_epoch
    times["train_s"] = epoch_s - times["extract_store_s"]
    self._write_back(cut, state)
    if new_store is not None:
      if self.store is not None:
        self.store.delete()
      self.store = self.source = new_store
    host = jax.device_get(metrics)
    seen = self.steps_per_epoch * bs
    return dict(times=times, scores=scores,
                loss=float(np.mean([m["loss"] for m in host])),
                train_accuracy=100.0 * float(sum(m["correct"] for m in host)) / seen,
                store=None if new_store is None else dict(
                    bytes=new_store.nbytes, backing="memory" if new_store.in_memory else "npy",
                    stage_range=[0, pending[1]], dtype=cfg.feature_dtype))

  @staticmethod
  def _to_host(item):
    idx, x = item
    return idx, np.asarray(x)

  def evaluate(self) -> dict:
    fn = self.eval_fn.fn
    x, y = self.data.x_test, self.data.y_test
    bs = min(self.cfg.eval_batch_size, len(x))
    total = {"loss": 0.0, "correct": 0}
    outs = []
    for i in range(0, len(x), bs):
      xb, yb = x[i:i + bs], y[i:i + bs]
      n = len(xb)
      mask = np.arange(bs) < n
      if n < bs:
        xb = np.concatenate([xb, np.zeros((bs - n, *xb.shape[1:]), xb.dtype)])
        yb = np.concatenate([yb, np.zeros((bs - n,), yb.dtype)])
      outs.append(fn(self.variables, xb, yb, mask))
    for o in jax.device_get(outs):
      total["loss"] += float(o["loss"])
      total["correct"] += int(o["correct"])
    return {"test_loss": total["loss"] / len(x),
            "test_accuracy": 100.0 * total["correct"] / len(x)}

  # -- decisions ---------------------------------------------------------------

  def score_and_decide(self, scores: scoring.ScoreState, epoch: int) -> tuple[dict, tuple | None]:
    """Scores the head's conv stages; for freeze/drop after the warm-up, decides."""
    cut, n_conv = self.drop.cut, self.model.num_conv
    n_scored = n_conv - cut
    sums, abs_sums = jax.device_get((scores.sum[:n_scored], scores.abs_sum[:n_scored]))
    p = scoring.layer_scores(sums, abs_sums)
    record = {"stages": list(self.model.stage_names[cut:n_conv]),
              "P": p.tolist(), "P_std": scoring.standardize(p).tolist(),
              "aapd": scoring.aapd(abs_sums).tolist()}
    decision, pending = None, None
    may_decide = (self.strategy != "sgd" and epoch >= self.cfg.warmup
                  and epoch < self.cfg.epochs - 1 and n_scored > 1)
    if may_decide:
      d = scoring.decide(p, self.drop.dropped_std_scores)
      decision = {"n_star": d.n_star, "Mc": d.median_candidates, "Md": d.median_dropped,
                  "drop": d.drop}
      if d.drop:
        new_cut = cut + d.n_star
        self.drop.dropped_std_scores += d.std_scores[:d.n_star].tolist()
        self.drop.events.append({"epoch": epoch + 1, "stages_dropped": d.n_star,
                                 "cut": new_cut})
        if self.strategy == "drop":
          pending = (cut, new_cut)
        self.drop.cut = new_cut
        decision["new_cut"] = new_cut
    return {"scores": record, "decision": decision}, pending


def fit(model: StagedModel, data: Dataset, cfg: TrainConfig, strategy: str, *,
        variables: list[dict] | None = None, run_dir: RunDir | None = None,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict:
  """Trains `model` on `data` with `strategy`; returns the run's summary dict.

  `variables` are the initial per-stage variables (default: `model.init` with
  `cfg.seed`); pass the same ones to compare strategies from the same start.
  """
  if strategy not in STRATEGIES:
    raise UsageError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
  cfg.validate(len(data.x_train))
  cfg.validate_strategies([strategy])
  if variables is None:
    variables = model.init(jax.random.key(cfg.seed), data.image_shape)
  trainer = Trainer(model, data, cfg, strategy, variables, run_dir)
  pending, train_time, compile_time = None, 0.0, trainer.eval_fn.seconds
  forward_total = train_total = 0
  total = cfg.epochs * trainer.steps_per_epoch
  try:
    with progress_bar(total, f"{strategy:>6} {model.name}", enabled=progress) as bar:
      for epoch in range(cfg.epochs):
        cut, extracted = trainer.drop.cut, pending
        out = trainer.run_epoch(epoch, pending, bar)
        record, pending = trainer.score_and_decide(out.pop("scores"), epoch)
        t0 = time.perf_counter()
        ev = trainer.evaluate()
        eval_s = time.perf_counter() - t0
        times = out.pop("times") | {"eval_s": eval_s}
        train_time += times["train_s"] + times["extract_store_s"] + times["compile_s"]
        compile_time += times["compile_s"]
        rec = _epoch_record(trainer, epoch, cut, extracted, out, ev, times) | record
        forward_total += rec["forward_macs"] * trainer.n_train
        train_total += rec["train_macs"] * trainer.n_train
        if run_dir is not None:
          run_dir.append_metrics(rec)
        if on_epoch is not None:
          on_epoch(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", test=f"{ev['test_accuracy']:.2f}%",
                        cut=trainer.drop.cut)
  finally:
    if trainer.store is not None and run_dir is not None:
      trainer.store.delete()
  summary = {
      "strategy": strategy, "model": model.name, "dataset": data.name, "epochs": cfg.epochs,
      "test_accuracy": ev["test_accuracy"], "test_loss": ev["test_loss"],
      "train_time_s": train_time, "compile_time_s": compile_time,
      "drop_events": trainer.drop.events, "final_cut": trainer.drop.cut,
      "param_l2": param_l2(trainer.variables),
      "forward_macs_total": forward_total, "train_macs_total": train_total,
  }
  if run_dir is not None:
    run_dir.write_summary(summary)
  summary["variables"] = trainer.variables
  return summary


def _epoch_record(trainer: Trainer, epoch: int, cut: int, extracted: tuple[int, int] | None,
                  out: dict, ev: dict, times: dict) -> dict:
  """The metrics.jsonl line of one epoch.

  `cut`: the stages frozen/dropped while it trained; `extracted`: the stage
  range this epoch ran once to fill the store (drop only). MACs are per
  example: `forward_macs` of the forward pass, `train_macs` of forward and
  backward (see `costs.training_macs`), both including the extraction.
  """
  macs, strategy = trainer.macs, trainer.strategy
  forward_from = cut if strategy == "drop" else 0
  extra = sum(macs[extracted[0]:extracted[1]]) if extracted else 0
  return {
      "epoch": epoch + 1, "strategy": strategy,
      "lr": float(lr_schedule(trainer.cfg, trainer.steps_per_epoch)(
          epoch * trainer.steps_per_epoch)),
      "loss": out["loss"], "train_accuracy": out["train_accuracy"],
      "test_loss": ev["test_loss"], "test_accuracy": ev["test_accuracy"],
      "time": times | {"epoch_s": sum(times.values())},
      "dropped_stages": cut,
      "trainable_params": count_params(trainer.variables[cut:]),
      "forward_params": count_params(trainer.variables[forward_from:]),
      "forward_macs": int(sum(macs[forward_from:]) + extra),
      "train_macs": int(costs.training_macs(macs, cut, strategy) + extra),
      "xla_step_flops": trainer.step_fn.flops,
      "store": out["store"],
  }
