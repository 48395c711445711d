"""One epoch of Learn & Drop (Algorithm 1) or of its two baselines: the `Trainer`.

`ldjax.train.fit` drives a `Trainer` over the epochs of one strategy:
- "sgd": the whole model, every epoch;
- "freeze": after the warm-up, the decision rule of `ldjax.scoring` freezes
  a growing prefix, which stays in the forward pass in inference mode;
- "drop": the same decisions, but the prefix leaves the forward pass: the
  epoch after a decision first runs the newly dropped stages once over the
  training set (their input is the images or the previous store) and stores
  their outputs, while the head's step compiles in a background thread, then
  trains the head on the store; later epochs read the store.

Two cut positions describe every strategy: stages [0, store_cut) are read
from the feature store (0: images), stages [store_cut, cut) run frozen in
the forward pass, stages [cut, L) train. SGD keeps both at 0, Freeze moves
`cut`, Drop moves both; when a store cannot be written (no disk space, an
I/O error) Drop keeps `store_cut` and the stages stay frozen instead.

The model's variables stay one list (one dict per stage) and the head is a
slice of it; the head step is compiled once per cut.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import shutil
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldjax.data.batching import epoch_permutation, pad_rows
from ldjax.data.datasets import Dataset
from ldjax.errors import Interrupted, TrainingDiverged, UsageError
from ldjax.models import costs
from ldjax.models.staged import StagedModel
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.store.features import FeatureStore, storage_dtype
from ldjax.train import scoring, steps
from ldjax.train.evaluation import Evaluator


@dataclasses.dataclass
class DropState:
  """Where the model is cut, and what the decisions so far have been."""
  cut: int = 0          # stages [0, cut) do not train
  store_cut: int = 0    # stages [0, store_cut) are read from the feature store
  dropped_std_scores: list[float] = dataclasses.field(default_factory=list)
  events: list[dict] = dataclasses.field(default_factory=list)
  pending: tuple[int, int] | None = None   # extraction due in the next epoch


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


def param_l2(variables) -> float:
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
    self.opt_states = [self.tx.init(v.get("params", {})) for v in self.variables]
    self.norm = dict(mean=data.mean, std=data.std)
    stage_costs = costs.stage_costs(model, data.image_shape)   # one abstract trace for both
    self.shapes = [c.output_shape for c in stage_costs]
    self.macs = [c.macs for c in stage_costs]
    self.drop = DropState()
    self.key = jax.random.key(cfg.seed)
    self.images = ImageSource(data.x_train)
    self.store: FeatureStore | None = None
    self.step_fn: steps.Compiled | None = None
    self.compiled_for: tuple[int, int] | None = None
    self.feature_dtype = storage_dtype(cfg.feature_dtype)
    self.features_dir = None if run_dir is None else run_dir.path / "features"
    self.store_fallbacks: list[dict] = []   # drops that stayed frozen: no room for the store
    self.retired_stores: list[FeatureStore] = []
    self.evaluator = Evaluator(model, data, cfg, self.shapes, self.variables)

  @property
  def eval_compile_s(self) -> float:
    """Seconds spent compiling evaluation programs so far (not part of T)."""
    return self.evaluator.compile_s

  @property
  def source(self):
    return self.store if self.drop.store_cut > 0 else self.images

  # -- compilation -------------------------------------------------------------

  def compile_first_step(self) -> None:
    """Compiles the step of the first epoch now rather than when it starts."""
    self.step_fn, self.compiled_for = self._compile_step(0, 0), (0, 0)

  def _input_struct(self, store_cut: int, batch: int) -> jax.ShapeDtypeStruct:
    if store_cut > 0:
      return jax.ShapeDtypeStruct((batch, *self.shapes[store_cut - 1]), self.feature_dtype)
    return jax.ShapeDtypeStruct((batch, *self.data.image_shape), np.uint8)

  def _compile_step(self, store_cut: int, cut: int) -> steps.Compiled:
    state = self._head_state(cut)
    bs = self.cfg.batch_size
    return steps.compile_fn(
        steps.scored_train_step, state, scoring.init(state.params),
        self.variables[store_cut:cut], self._input_struct(store_cut, bs),
        jax.ShapeDtypeStruct((bs,), np.int32), self.key, np.int32(0),
        donate_argnums=(0, 1), head_stages=self.model.stages[cut:],
        frozen_stages=self.model.stages[store_cut:cut], tx=self.tx, head_index=cut,
        **self.norm)

  def _compile_extract(self, start: int, stop: int) -> steps.Compiled:
    return steps.compile_fn(
        steps.extract_features, self.variables[start:stop],
        self._input_struct(start, self.cfg.batch_size),
        stages=self.model.stages[start:stop], out_dtype=self.feature_dtype, **self.norm)

  def _head_state(self, cut: int) -> steps.TrainState:
    params, stats = steps.split_variables(self.variables[cut:])
    return steps.TrainState(params, stats, self.opt_states[cut:])

  def _write_back(self, cut: int, state: steps.TrainState) -> None:
    self.variables[cut:] = steps.merge_variables(state.params, state.batch_stats)
    self.opt_states[cut:] = list(state.opt_state)

  # -- feature stores ----------------------------------------------------------

  def new_store(self, stop: int) -> FeatureStore | None:
    """An empty store for stages [0, stop), or None (with a warning) if it cannot fit."""
    shape = self.shapes[stop - 1]
    nbytes = self.n_train * int(np.prod(shape)) * self.feature_dtype.itemsize
    budget = int(self.cfg.feature_memory_gb * (1 << 30))
    if nbytes > budget:
      if self.features_dir is None:
        return self._cannot_store(stop, f"{nbytes / 1e9:.2f} GB exceed --feature-memory-gb "
                                  "and there is no work directory to spill to")
      self.features_dir.mkdir(parents=True, exist_ok=True)
      free = shutil.disk_usage(self.features_dir).free
      if nbytes * 1.05 > free:
        return self._cannot_store(stop, f"{nbytes / 1e9:.2f} GB needed, "
                                  f"{free / 1e9:.2f} GB free on disk")
    try:
      return FeatureStore(self.n_train, shape, self.cfg.feature_dtype, (0, stop),
                          directory=self.features_dir, memory_budget_bytes=budget)
    except (OSError, MemoryError) as e:
      return self._cannot_store(stop, str(e) or type(e).__name__)

  def _cannot_store(self, stop: int, why: str) -> None:
    warnings.warn(f"cannot store the features of stages 0-{stop - 1} ({why}); "
                  "those stages stay in the forward pass, frozen", stacklevel=3)
    self.store_fallbacks.append({"stage_stop": stop, "reason": why})
    return None

  def rebuild_store(self, stop: int) -> float:
    """Recomputes the store of stages [0, stop) from the images; returns seconds."""
    t0 = time.perf_counter()
    store = self.new_store(stop)
    if store is not None:
      store = self._fill_store(store, self._compile_extract(0, stop), self.variables[:stop],
                               self.images)
    if store is None:
      raise UsageError(f"the feature store of stages 0-{stop - 1} cannot be written; "
                       "raise --feature-memory-gb or free disk space")
    self._replace_store(store)
    return time.perf_counter() - t0

  def _replace_store(self, store: FeatureStore) -> None:
    # The old store is deleted only after the next checkpoint: until then a
    # resume may still need it.
    if self.store is not None:
      self.retired_stores.append(self.store)
    self.store = store

  def delete_retired_store(self) -> None:
    for store in self.retired_stores:
      store.delete()
    self.retired_stores = []

  def clean_features_dir(self) -> None:
    """Removes store files a killed run left behind (temporaries, superseded stores)."""
    if self.features_dir is None or not self.features_dir.exists():
      return
    keep = f"features_0-{self.drop.store_cut}"
    for p in self.features_dir.iterdir():
      if not p.name.startswith(keep + ".") or ".tmp" in p.name:
        p.unlink()

  # -- one epoch ---------------------------------------------------------------

  def run_epoch(self, epoch: int, bar, should_stop=None, on_step=None) -> dict:
    """One epoch; after a drop decision it first fills the new store (see `_fill_store`)."""
    cfg, d = self.cfg, self.drop
    times = dict(train_s=0.0, extract_store_s=0.0, compile_s=0.0)
    # CPU seconds of this process (all threads): a measure of the work done that,
    # unlike wall time, barely moves when other jobs share the machine.
    cpu0 = time.process_time()
    extract = new_store = None
    if d.pending is not None:
      start, stop = d.pending
      new_store = self.new_store(stop)
      if new_store is not None:
        extract = self._compile_extract(start, stop)
        times["compile_s"] += extract.seconds
    read_cut = d.store_cut                        # what the extraction / batches read
    step_cut = d.pending[1] if extract is not None else d.store_cut   # what the step reads
    tail_vars = self.variables[read_cut:step_cut]
    compiling = None
    if self.compiled_for != (step_cut, d.cut):
      # Compiled in a thread while the new store fills (XLA compiles on the host,
      # mostly outside the GIL); compile_s counts only the wait after it.
      pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ldjax-compile")
      compiling = pool.submit(self._compile_step, step_cut, d.cut)
      if extract is not None:
        # Next in the same thread: the programs of the evaluation after this epoch.
        self.evaluator.prefetch(pool, step_cut, self.variables, new_store)
      pool.shutdown(wait=False)   # its thread ends with the compiles
    source = self.source
    if extract is not None:
      bar.set_postfix_str(f"storing the outputs of stages 0-{step_cut - 1}")
      t0 = time.perf_counter()
      new_store = self._fill_store(new_store, extract, tail_vars, source, epoch, should_stop,
                                   on_step)
      times["extract_store_s"] = time.perf_counter() - t0
    if compiling is not None:
      t0 = time.perf_counter()
      self.step_fn, self.compiled_for = compiling.result(), (step_cut, d.cut)
      times["compile_s"] += time.perf_counter() - t0
    # After a failed write the new stages run on each batch instead (no store).
    fused = extract if extract is not None and new_store is None else None
    if new_store is not None:
      source = new_store
    t_train = time.perf_counter()
    state = self._head_state(d.cut)
    scores = scoring.init(state.params)
    frozen_vars = self.variables[step_cut:d.cut]
    perm = epoch_permutation(cfg.seed, epoch, self.n_train)
    bs = cfg.batch_size
    metrics = []
    for s in range(self.steps_per_epoch):
      if should_stop is not None and should_stop():
        raise Interrupted()
      idx = perm[s * bs:(s + 1) * bs]
      x = source.read(idx)
      if fused is not None:
        x = fused.fn(tail_vars, x)
      if on_step is not None:
        on_step(epoch, s, "train")
      state, scores, m = self.step_fn.fn(state, scores, frozen_vars, x, self.data.y_train[idx],
                                         self.key, np.int32(epoch * self.steps_per_epoch + s))
      metrics.append(m)
      if s >= 2:   # bound the work in flight without a sync on the newest step
        metrics[s - 2]["loss"].block_until_ready()
      bar.update(1)
    jax.block_until_ready(state)
    times["train_s"] = time.perf_counter() - t_train
    cpu_s = time.process_time() - cpu0
    host = jax.device_get(metrics)
    losses = np.asarray([m["loss"] for m in host])
    finite = np.asarray([m["finite"] for m in host])
    if not np.all(np.isfinite(losses)):
      bad = int(np.argmin(np.isfinite(losses)))
      raise TrainingDiverged(f"loss became {losses[bad]} at epoch {epoch + 1}, step {bad + 1}; "
                             "lower --lr (the last good checkpoint is kept)")
    if not np.all(finite):
      bad = int(np.argmin(finite))
      raise TrainingDiverged(f"weights became NaN or Inf at epoch {epoch + 1}, step {bad + 1}; "
                             "lower --lr or check the data (the last good checkpoint is kept)")
    self._write_back(d.cut, state)
    store_info = None
    if d.pending is not None:
      if new_store is not None:
        self._replace_store(new_store)
        d.store_cut = d.pending[1]
        store_info = dict(bytes=new_store.nbytes, stage_range=[0, d.store_cut],
                          backing="memory" if new_store.in_memory else "npy",
                          dtype=cfg.feature_dtype)
      extracted, d.pending = d.pending if new_store is not None else None, None
    else:
      extracted = None
    seen = self.steps_per_epoch * bs
    return dict(times=times, cpu_s=cpu_s, scores=scores, extracted=extracted, store=store_info,
                loss=float(losses.mean()),
                train_accuracy=100.0 * float(sum(m["correct"] for m in host)) / seen)

  def _fill_store(self, store: FeatureStore, extract: steps.Compiled, tail_vars, source,
                  epoch: int | None = None, should_stop=None, on_step=None) -> FeatureStore | None:
    """Runs `extract` over the whole training set, in example order, into `store`.

    Each batch is written while the next one runs. Returns the finalized
    store, or None (with a warning) when a write failed.
    """
    bs = self.cfg.batch_size
    queued = None
    for i, start in enumerate(range(0, self.n_train, bs)):
      if should_stop is not None and should_stop():
        raise Interrupted()
      if on_step is not None:
        on_step(epoch, i, "extract")
      idx = np.arange(start, min(start + bs, self.n_train))
      x = extract.fn(tail_vars, pad_rows(source.read(idx), bs))
      if queued is not None and (store := self._store_write(store, queued)) is None:
        return None
      queued = (idx, x)
    if (store := self._store_write(store, queued)) is None:
      return None
    try:
      store.finalize()
      return store
    except OSError as e:
      store.delete()
      return self._cannot_store(store.stage_range[1], f"finalize failed: {e}")

  def _store_write(self, store: FeatureStore | None, item) -> FeatureStore | None:
    """Writes one batch (its first len(idx) rows); on an I/O error, abandons the store
    (the run goes on frozen)."""
    if store is None:
      return None
    idx, x = item
    try:
      store.write(idx, np.asarray(x)[:len(idx)])
      return store
    except OSError as e:
      store.delete()
      return self._cannot_store(store.stage_range[1], f"write failed: {e}")

  def evaluate(self) -> dict:
    """Test loss and accuracy of the whole model; for Drop, the dropped stages'
    outputs are cached (see `ldjax.evaluation`)."""
    cut = self.drop.store_cut if self.strategy == "drop" else 0
    return self.evaluator.evaluate(self.variables, cut, self.store)

  # -- decisions ---------------------------------------------------------------

  def score_and_decide(self, scores: scoring.ScoreState, epoch: int) -> dict:
    """Scores the head's conv stages; for freeze/drop after the warm-up, decides."""
    d, n_conv = self.drop, self.model.num_conv
    n_scored = n_conv - d.cut
    sums, abs_sums = jax.device_get((scores.sum[:n_scored], scores.abs_sum[:n_scored]))
    p = scoring.layer_scores(sums, abs_sums)
    record = {"stages": list(self.model.stage_names[d.cut:n_conv]),
              "P": p.tolist(), "P_std": scoring.standardize(p).tolist(),
              "aapd": scoring.aapd(abs_sums).tolist()}
    decision = None
    # Algorithm 1 scores and decides in the epochs that train on `Data`, not in
    # the save_features epoch that follows a drop; Freeze mirrors that.
    after_drop = bool(d.events) and d.events[-1]["epoch"] == epoch
    if (self.strategy != "sgd" and epoch >= self.cfg.warmup and not after_drop
        and epoch < self.cfg.epochs - 1 and n_scored > 1):
      dec = scoring.decide(p, d.dropped_std_scores)
      decision = {"n_star": dec.n_star, "Mc": dec.median_candidates,
                  "Md": dec.median_dropped, "drop": dec.drop}
      if dec.drop:
        new_cut = d.cut + dec.n_star
        d.dropped_std_scores += dec.std_scores[:dec.n_star].tolist()
        d.events.append({"epoch": epoch + 1, "stages_dropped": dec.n_star, "cut": new_cut})
        if self.strategy == "drop":
          d.pending = (d.store_cut, new_cut)
        d.cut = decision["new_cut"] = new_cut
    return {"scores": record, "decision": decision}
