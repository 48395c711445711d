"""One epoch of Learn & Drop (Algorithm 1) or of its two baselines: the `Trainer`.

`ldjax.train.fit` drives a `Trainer` over the epochs of one strategy:
- "sgd": the whole model, every epoch;
- "freeze": after the warm-up, the decision rule (`ldjax.train.decisions`) freezes
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
slice of it; the head step is compiled once per cut (`ldjax.train.programs`).
The `Trainer` owns the run's state and calls the pieces that hold each idea,
which it is given (`ldjax.train.assembly.trainer_for` builds them from a
run's settings): the feature stores' life cycle
(`ldjax.store.keeper.StoreKeeper`), the compiled programs
(`programs.Programs`), the cost table and budget (`budget`), and the test
evaluation (`evaluation.Evaluator`); the decision is
`decisions.score_and_decide`. Its arrays live on the devices of the
programs' `sharding.Placement`: every batch is sharded over them before it
enters a program, the variables, optimizer states and scores are replicated
(`ldjax.train.sharding`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ldjax.data.augment import Augment, Draws, ViewSource, ViewTable
from ldjax.data.batching import Blocks
from ldjax.data.datasets import Dataset
from ldjax.errors import Interrupted, TrainingDiverged
from ldjax.models import bandwidth
from ldjax.models.staged import StagedModel
from ldjax.runs.workdir import RunDir
from ldjax.store.features import FeatureStore
from ldjax.store.keeper import StoreKeeper
from ldjax.strategy import Strategy
from ldjax.train import budget, decisions, device_input, reader, scoring, sharding, steps
from ldjax.train.decisions import DropSettings, DropState
from ldjax.train.evaluation import Evaluator
from ldjax.train.programs import Programs
from ldjax.train.records import EpochTimes

__all__ = ["DropState", "EpochResult", "Trainer", "param_l2", "train_block"]


def param_l2(variables) -> float:
  leaves = jax.tree.leaves([v.get("params", {}) for v in variables])
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in leaves)))


def _poll(should_stop) -> None:
  if should_stop is not None and should_stop():
    raise Interrupted()


@dataclasses.dataclass(frozen=True)
class EpochResult:
  """What `Trainer.run_epoch` trained: the head's scores (for the decision), its mean
  loss and train accuracy (%) over `steps` steps, the epoch's times and CPU seconds,
  and, when it filled a new store, the stage range `extracted` and the store's record."""
  scores: scoring.ScoreState
  loss: float
  train_accuracy: float
  steps: int
  times: EpochTimes
  cpu_s: float
  extracted: tuple[int, int] | None
  store: dict | None
  augment: dict


def train_block(data: Dataset, blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of this process's `blocks` of `data`'s training set."""
  start, stop = blocks.start - data.train_start, blocks.stop - data.train_start
  if start < 0 or stop > len(data.x_train):
    raise ValueError(f"the dataset holds training examples [{data.train_start}, "
                     f"{data.train_start + len(data.x_train)}), this process needs "
                     f"[{blocks.start}, {blocks.stop})")
  return data.x_train[start:stop], data.y_train[start:stop]


class Trainer:
  """State of one run (variables, optimizer states, drop state, stores, the compiled
  step); `fit` drives it epoch by epoch. `ldjax.train.assembly.trainer_for` builds one
  from a run's settings; the Trainer itself compiles only when an epoch needs it."""

  def __init__(self, model: StagedModel, data: Dataset, strategy: str, *,
               programs: Programs, variables: list[dict], opt_states: list,
               blocks: Blocks, augment: Augment, view_table: ViewTable | None,
               keeper: StoreKeeper, evaluator: Evaluator, val_evaluator: Evaluator | None,
               costs: budget.CostTable, run_budget: budget.Budget | None,
               drop_settings: DropSettings, seed: int, epochs: int,
               reader_threads: int = reader.DEFAULT_THREADS, run_dir: RunDir | None = None,
               on_devices: device_input.DeviceInput | None = None):
    """Args:
      model, data: the staged model and the whole dataset (`blocks` says which of its
        training examples are this process's).
      strategy: "sgd", "freeze" or "drop".
      programs: what the run compiles (`ldjax.train.programs.Programs`; its budget's
        schedule set, `budget.budget_for`).
      variables, opt_states: one entry per stage, on the programs' devices
        (`Placement.replicate`: the steps donate them).
      blocks: this process's blocks of the training set (`ldjax.data.batching`).
      augment, view_table: the augmentation, and the fixed views of this process's
        images (`Augment.view_table`, blocked) or None.
      keeper: the feature stores (`ldjax.store.keeper.StoreKeeper`).
      evaluator, val_evaluator: the test set's and the validation split's (or None)
        `ldjax.train.evaluation.Evaluator`.
      costs, run_budget: the cost table and the budget it charges (None: run.epochs).
      drop_settings: the decision rule's settings (`decisions.DropSettings`).
      seed, epochs: run.seed (data order, dropout, augmentation) and run.epochs.
      reader_threads: threads that prepare the next batches while the devices compute
        (`ldjax.train.reader`; 0: in the loop's thread). The same batches either way.
      run_dir: the run's directory (None: nothing written).
      on_devices: the training input kept on the devices when it fits
        (`ldjax.train.device_input`; None: none, every batch is put from the host).
    """
    self.model, self.data, self.run_dir = model, data, run_dir
    self.strategy = Strategy(strategy)
    self.programs = programs
    self.blocks = blocks
    self.x_train, self.y_train = train_block(data, blocks)
    self.variables, self.opt_states = variables, opt_states
    self.augment, self.view_table = augment, view_table
    self.keeper = keeper
    self.device_input = (device_input.DeviceInput(programs.placement, 0) if on_devices is None
                         else on_devices)
    self.evaluator, self.val_evaluator = evaluator, val_evaluator
    # What steps and extractions cost (`ldjax.train.budget`): the budget charges them and
    # the stable rule's drops must pay for their extraction.
    self.costs, self.budget = costs, run_budget
    self.drop_settings, self.seed, self.epochs = drop_settings, seed, epochs
    self.reader_threads = reader_threads
    self._feeds_checked: set[tuple] = set()   # stores the bandwidth model has looked at
    self.drop = DropState()
    self.epochs_run = 0
    self.key = self.placement.replicate(jax.random.key(seed))
    self.step_fn: steps.Compiled | None = None
    self.step_k = 1   # `step_fn`'s batch is programs.batch_size * step_k (`ldjax.train.adaptive`)
    self.compiled_for: tuple[int, int] | None = None   # (store_cut, cut) of `step_fn`

  @property
  def placement(self) -> sharding.Placement:
    """The devices of the run's arrays and programs."""
    return self.programs.placement

  @property
  def shapes(self) -> tuple[tuple[int, ...], ...]:
    """The output shape of each stage on the head's input (no batch)."""
    return self.programs.shapes

  @property
  def n_train(self) -> int:
    """Examples per epoch, over all processes."""
    return self.blocks.used

  @property
  def steps_per_epoch(self) -> int:
    """Steps of --batch-size in an epoch: the base step."""
    return self.programs.steps_per_epoch

  @property
  def budget_steps(self) -> int | None:
    """The schedule's length in base steps with a budget, else None (run.epochs)."""
    return self.programs.budget_steps

  @property
  def schedule_steps(self) -> int:
    """The schedule's length in base steps without a budget: run.epochs of them."""
    return self.programs.schedule_steps

  def has_epoch(self, epoch: int) -> bool:
    """Whether the run trains an epoch `epoch` (0-based): --epochs, or budget left."""
    if self.budget is None:
      return epoch < self.epochs
    return self.budget.steps_left(self.step_cost()) > 0

  def is_last(self, epoch: int) -> bool:
    """After training `epoch`: whether it was the run's last."""
    return not self.has_epoch(epoch + 1)

  def step_cost(self) -> float:
    """What one step at the current cuts costs, per --batch-size (Freeze reads images)."""
    store_cut = self.drop.store_cut if self.strategy.caches else 0
    return self.programs.batch_size * self.costs.train_cost(store_cut, self.drop.cut)

  def pays(self, new_cut: int, epoch: int) -> bool:
    """Whether dropping to `new_cut` after `epoch` saves more than its extraction costs:
    Drop's costs for Freeze too (the two must decide alike). Over the budget left, the
    drop must buy more training steps; over the --epochs left, less cost."""
    per_example = lambda c: self.costs.train_cost(c, c)   # noqa: E731
    extract = self.augment.views * self.n_train * self.costs.extract_cost(self.drop.cut, new_cut)
    before, after = per_example(self.drop.cut), per_example(new_cut)
    if self.budget is not None:
      left = self.budget.total - self.budget.spent
      return (left - extract) / after > left / before
    left = (self.epochs - epoch - 1) * self.n_train
    return extract < left * (before - after)

  @property
  def store(self) -> FeatureStore | None:
    return self.keeper.current

  @property
  def eval_compile_s(self) -> float:
    """Seconds spent compiling evaluation programs so far (not part of T)."""
    return sum(e.compile_s for e in self._evaluators())

  def _evaluators(self) -> list[Evaluator]:
    return [e for e in (self.evaluator, self.val_evaluator) if e is not None]

  # -- the step --------------------------------------------------------------------

  @property
  def batch_size(self) -> int:
    """The batch of the current step (--batch-size, or grown by --adaptive-batch)."""
    return self.programs.batch_size * self.step_k

  def compile_current_step(self) -> steps.Compiled:
    """The head's step at the current cuts (`Programs.head_step`), compiled now unless
    it already is (`run_epoch` compiles it, in the background, when the cut moves)."""
    cuts = (self.drop.store_cut, self.drop.cut)
    if self.compiled_for != cuts:
      (self.step_fn, self.step_k), self.compiled_for = self.programs.head_step(
          *cuts, self.drop.boundaries), cuts
    return self.step_fn

  def head_state(self, cut: int) -> steps.TrainState:
    return steps.head_state(self.variables, self.opt_states, cut)

  def merge_head(self, state: steps.TrainState) -> None:
    """Puts the trained head's `state` (of the current cut) back into the variables and
    optimizer states."""
    self.variables[self.drop.cut:] = steps.merge_variables(state.params, state.batch_stats)
    self.opt_states[self.drop.cut:] = list(state.opt_state)

  def train_steps(self, epoch: int, read, bar, should_stop=None, on_step=None):
    """The epoch's steps of the head at the current cuts (`compile_current_step`), each
    batch's input `read(examples)` (this process's indices -> the images or stored
    features the head reads); the trained head goes back into the variables. Returns
    (scores, per-step device metrics, seconds the loop waited for its input).

    `run_epoch` is this and what comes around it (a store to fill, the compile in the
    background, the augmented reads, the check of the loss); this runs the loop alone,
    for a benchmark of its input."""
    self.compile_current_step()
    state, scores, metrics, wait_s = self._train(epoch, read, None, self.drop.store_cut, bar,
                                                 should_stop, on_step)
    self.merge_head(state)
    return scores, metrics, wait_s

  # -- stores --------------------------------------------------------------------

  def rebuild_store(self, stop: int) -> float:
    """Recomputes the store of stages [0, stop) from the images in one pass; returns
    seconds. Its maps are rounded at the drops' cuts on the way, as the chain of stores
    that made it rounded them (`Programs.rounding`)."""
    extract = self.programs.extraction(0, stop, boundaries=self.drop.boundaries)
    return self.keeper.rebuild(stop, self._on_devices(extract, self.variables[:stop]),
                               self.view_source, self.local_batch)

  def reopen_store(self, on_disk: bool) -> None:
    """After a resume: the store of the dropped stages, verified, or rebuilt."""
    stop = self.drop.store_cut
    self.keeper.reopen(stop, on_disk, lambda: self.rebuild_store(stop))

  @property
  def view_source(self) -> ViewSource:
    """The images of the store's views, by store row."""
    return ViewSource(self.x_train, self.augment, self.view_table)

  def draws(self, epoch: int) -> Draws:
    """The epoch's augmentation of this process's examples: once a prefix is frozen
    (Freeze and Drop after a decision), one of each image's fixed views."""
    fixed = self.strategy.decides and self.drop.cut > 0
    return self.augment.draws(self.seed, epoch, self.data.num_train,
                              self.view_table if fixed else None).block(
        self.blocks.start, self.blocks.stop)

  # -- one epoch -----------------------------------------------------------------

  def run_epoch(self, epoch: int, bar, should_stop=None, on_step=None) -> EpochResult:
    """One epoch; after a drop decision it first fills the new store.

    The head's step (when the cut moved) compiles in a background thread
    while the store fills; the result's `times` split the epoch's wall time into
    train, extraction and the wait for compiles (its `eval_s` is 0: `fit` evaluates).
    """
    cpu0 = time.process_time()   # CPU seconds: unlike wall time, barely moved by other jobs
    times = dict(train_s=0.0, extract_store_s=0.0, compile_s=0.0)
    new_store, extract = self._start_extraction(times)
    if extract is not None and self.budget is not None:
      self.budget.spent += self.budget.extraction_cost(*self.drop.pending, self.augment.views)
    read_cut = self.drop.store_cut
    step_cut = self.drop.pending[1] if extract is not None else read_cut
    compiling = self._compile_in_background(step_cut, new_store if extract else None)
    tail = self.variables[read_cut:step_cut]
    draws = self.draws(epoch)
    if extract is not None:
      t0 = time.perf_counter()
      views = (self.view_source.__getitem__ if read_cut == 0
               else self.keeper.current.read)
      new_store = self._fill(new_store, extract, tail, views, epoch, bar, should_stop, on_step)
      times["extract_store_s"] = time.perf_counter() - t0
    if compiling is not None:
      t0 = time.perf_counter()
      (self.step_fn, self.step_k), self.compiled_for = compiling.result(), (step_cut,
                                                                             self.drop.cut)
      times["compile_s"] += time.perf_counter() - t0
    # After a failed write the new stages run on each batch instead (no store).
    fused = None if extract is None or new_store is not None else self._fused(extract, tail)
    t0 = time.perf_counter()
    store = new_store if new_store is not None else self.keeper.current if read_cut else None
    read = self._reader(draws, store)
    state, scores, metrics, wait_s = self._train(epoch, read, fused, step_cut, bar,
                                                 should_stop, on_step)
    times["train_s"] = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    loss, accuracy = self._check_finite(epoch, metrics)
    self.merge_head(state)
    extracted, store_info = self._commit_store(new_store)
    self.epochs_run = epoch + 1
    return EpochResult(scores=scores, loss=loss, train_accuracy=accuracy, steps=len(metrics),
                       times=EpochTimes(**times, input_wait_s=wait_s), cpu_s=cpu_s,
                       extracted=extracted, store=store_info,
                       augment=self._augment_seen(store))

  def _fused(self, extract: steps.Compiled, tail):
    """The extraction as a per-batch forward pass of `tail` on the head's input (which,
    with crop, is not a padded view: that needs its own program)."""
    if self.programs.view_net is not self.programs.net or self.step_k != 1:
      extract = self.programs.extraction(*self.drop.pending, self.step_k, views=False,
                                         boundaries=self.drop.boundaries)
    return functools.partial(extract.fn, tail)

  @property
  def local_batch(self) -> int:
    """This process's rows of a batch of --batch-size (all of them with one process)."""
    return self.programs.batch_size // self.blocks.processes

  def _on_devices(self, extract: steps.Compiled, tail):
    """The extraction of `tail` as the keeper calls it: this process's rows of a batch
    in, its rows of the output back (when numpy reads them)."""
    return self.placement.local_rows(functools.partial(extract.fn, tail))

  def _reader(self, draws: Draws, store: FeatureStore | None):
    """examples -> the head's (or its frozen stages') input: augmented images, or the
    window of their stored views; gathered on the devices when they hold them."""
    size = None if store is None else self.shapes[store.stage_range[1] - 1][:2]
    image_size = self.data.image_shape[:2]
    on_devices = self.device_input.reader(draws, self.batch_size, self.x_train, store, size,
                                           image_size)
    if on_devices is not None:
      return on_devices
    if store is None:
      return functools.partial(draws.images, self.x_train)
    self._check_feed(store)
    return lambda idx: draws.features(store.read(draws.rows(idx)), idx, size, image_size)

  def _check_feed(self, store: FeatureStore) -> None:
    """Once per store: warns when the input-bandwidth model (`ldjax.models.bandwidth`)
    says the head's steps will wait for this host store on this run's device."""
    key = (store.stage_range, self.drop.cut)
    device = bandwidth.device_for(self.placement.mesh.devices.flat[0].device_kind)
    if device is None or key in self._feeds_checked:
      return
    self._feeds_checked.add(key)
    row = int(np.prod(store.shape[1:])) * store.dtype.itemsize
    feed = bandwidth.feed(self.programs.macs, row, self.drop.cut, device,
                          batch_size=self.batch_size, precision=self.programs.net.precision,
                          store_cut=store.stage_range[1])
    message = bandwidth.warning(feed, device)
    if message is not None:
      warnings.warn(message, stacklevel=2)

  def _augment_seen(self, store: FeatureStore | None) -> dict:
    """What augmentation the head's input had this epoch (metrics.jsonl "augment")."""
    if store is None or self.augment.name == "none":
      return {"name": self.augment.name, "on": "images"}
    stop = store.stage_range[1]
    on = {"name": self.augment.name, "on": f"stored maps of stages 0-{stop - 1}"}
    if self.augment.flip:
      on["flip"] = "exact: the stored view of the mirrored image"
    if self.augment.fixed_views:
      on["crop"] = (f"exact: one of {self.augment.crop_views} stored views (crop and flip) "
                    "of each image")
    elif self.augment.pad:
      stride = self.data.image_shape[0] / self.shapes[stop - 1][0]
      on["crop"] = (f"approximate: window of the padded image's map, offset rounded to "
                    f"stride {stride:g}, border band")
    return on

  def _start_extraction(self, times: dict):
    """(empty store, extraction program) of a pending drop, or (None, None)."""
    if self.drop.pending is None:
      return None, None
    start, stop = self.drop.pending
    store = self.keeper.new(stop)
    if store is None:
      return None, None
    extract = self.programs.extraction(start, stop, boundaries=self.drop.boundaries)
    times["compile_s"] += extract.seconds
    return store, extract

  def _compile_in_background(self, step_cut: int, new_store: FeatureStore | None):
    """A future of the step for (step_cut, cut) if the current one is for another cut.

    XLA compiles on the host, mostly outside the GIL, so this overlaps the
    store's filling; with a new store the same thread then compiles the
    programs of the evaluation after this epoch.
    """
    if self.compiled_for == (step_cut, self.drop.cut):
      return None
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ldjax-compile")
    future = pool.submit(self.programs.head_step, step_cut, self.drop.cut,
                         self.drop.boundaries)
    if new_store is not None:
      for evaluator in self._evaluators():
        evaluator.prefetch(pool, step_cut, self.variables, new_store)
    pool.shutdown(wait=False)   # its thread ends with the compiles
    return future

  def _fill(self, store: FeatureStore, extract: steps.Compiled, tail, read, epoch: int, bar,
            should_stop, on_step) -> FeatureStore | None:
    """Fills `store` with the new stages' outputs, showing images stored out of N."""
    stop, n = store.stage_range[1], self.keeper.num_examples   # this process's rows

    def on_batch(i: int, done: int) -> None:
      _poll(should_stop)
      if on_step is not None:
        on_step(epoch, i, "extract")
      bar.set_postfix_str(f"storing the outputs of stages 0-{stop - 1}: {done}/{n} images")

    return self.keeper.fill(store, self._on_devices(extract, tail), read,
                            self.local_batch, on_batch)

  def _train(self, epoch: int, read, fused, step_cut: int, bar, should_stop, on_step):
    """The epoch's steps of the head; returns (state, scores, per-step device metrics,
    seconds the loop waited for its input).

    The batches are read ahead in background threads (`reader.ReadAhead`), each one
    `put(read(idx))` as without them; with one process the workers also put them on the
    devices (with several, `put_local` assembles the global batch here)."""
    cut, bs = self.drop.cut, self.batch_size
    state = self.head_state(cut)
    scores = self.placement.replicate(scoring.init(state.params))
    frozen = self.variables[step_cut:cut]
    put = self.placement.put_local
    batches = self.blocks.batches(self.seed, epoch, bs)
    n_steps, cost = len(batches), self.step_cost() * self.step_k
    if self.budget is not None:   # the last epoch may stop early (at least one step)
      n_steps = max(1, min(n_steps, self.budget.steps_left(cost)))
    metrics, wait_s = [], 0.0
    in_worker = jax.process_count() == 1

    def load(idx):   # this process's examples of a batch -> (images or maps, labels)
      x, y = read(idx), self.y_train[idx]
      return (put(x), put(y)) if in_worker else (x, y)

    local = [self.blocks.local(batches[s]) for s in range(n_steps)]
    with reader.ReadAhead(load, local, threads=self.reader_threads) as batches_in:
      for s in range(n_steps):
        _poll(should_stop)
        t0 = time.perf_counter()
        x, y = batches_in.next()
        x, y = put(x), put(y)   # the batch, split over the devices (once put: a no-op)
        wait_s += time.perf_counter() - t0
        if fused is not None:
          x = fused(x)
        if on_step is not None:
          on_step(epoch, s, "train")
        progress = 0.0 if self.budget is None else self.budget.progress()
        state, scores, m = self.step_fn.fn(state, scores, frozen, x, y, self.key,
                                           np.int32(epoch * self.steps_per_epoch + s),
                                           np.float32(progress))
        if self.budget is not None:
          self.budget.spent += cost
        metrics.append(m)
        if s >= 2:   # bound the work in flight without a sync on the newest step
          metrics[s - 2]["loss"].block_until_ready()
        # In steps of --batch-size; with --budget in base steps' worth of budget.
        bar.update(self.step_k if self.budget is None else cost / self.budget.base_step)
    jax.block_until_ready(state)
    return state, scores, metrics, wait_s

  def _check_finite(self, epoch: int, metrics: list) -> tuple[float, float]:
    """(mean loss, train accuracy %); TrainingDiverged at the first non-finite step."""
    host = jax.device_get(metrics)
    losses = np.asarray([m["loss"] for m in host])
    finite = np.asarray([m["finite"] for m in host])
    if not np.all(np.isfinite(losses)):
      bad = int(np.argmin(np.isfinite(losses)))
      raise TrainingDiverged(f"loss became {losses[bad]} at epoch {epoch + 1}, step {bad + 1}; "
                             "lower optim.lr (the last good checkpoint is kept)")
    if not np.all(finite):
      bad = int(np.argmin(finite))
      raise TrainingDiverged(f"weights became NaN or Inf at epoch {epoch + 1}, step {bad + 1}; "
                             "lower optim.lr or check the data (the last good checkpoint is kept)")
    seen = len(host) * self.batch_size
    return float(losses.mean()), 100.0 * float(sum(m["correct"] for m in host)) / seen

  def _commit_store(self, new_store: FeatureStore | None):
    """(stage range extracted, store record) after a pending extraction, else (None, None)."""
    pending = self.drop.pending
    if pending is None:
      return None, None
    if new_store is None:
      self.drop = self.drop.not_stored()
      return None, None
    self.keeper.replace(new_store)
    self.drop = self.drop.stored()
    plain = len(self.x_train) * int(np.prod(self.shapes[pending[1] - 1])) \
        * self.programs.feature_dtype.itemsize
    return pending, dict(bytes=new_store.nbytes, stage_range=[0, self.drop.store_cut],
                         backing="memory" if new_store.in_memory else "npy",
                         dtype=self.keeper.dtype_name, views=self.augment.views,
                         augment_extra_bytes=new_store.nbytes - plain)

  # -- evaluation and decisions --------------------------------------------------

  def evaluate(self, split: str = "test") -> dict:
    """Loss and accuracy of the whole model on the test set or the validation split
    ("val"); for Drop, the dropped stages' outputs are cached (`ldjax.train.evaluation`)."""
    cut = self.drop.store_cut if self.strategy.caches else 0
    evaluator = self.evaluator if split == "test" else self.val_evaluator
    return evaluator.evaluate(self.variables, cut, self.keeper.current, self.device_input)

  def score_and_decide(self, scores: scoring.ScoreState, epoch: int) -> dict:
    """Scores the head's conv stages and updates the drop state (`decisions`)."""
    cut, n_conv = self.drop.cut, self.model.num_conv
    sums, abs_sums = jax.device_get((scores.sum[:n_conv - cut], scores.abs_sum[:n_conv - cut]))
    settings = self.drop_settings
    rule = settings.decision_rule
    # The stable rule also waits for the learning-rate warm-up to end.
    warmup = settings.warmup if rule == "paper" else max(
        settings.warmup, self.programs.optim.warmup_lr_epochs)
    record, self.drop = decisions.score_and_decide(
        sums, abs_sums, self.drop, strategy=self.strategy, epoch=epoch, warmup=warmup,
        last=self.is_last(epoch), stage_names=self.model.stage_names[cut:n_conv],
        cut_rule=settings.cut_rule, forced=settings.schedule, rule=rule,
        pays=None if rule == "paper" else lambda c: self.pays(c, epoch))
    return record
