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
The `Trainer` owns the run's state and calls the pieces that hold each idea:
the feature stores' life cycle (`ldjax.store.keeper.StoreKeeper`), the
compiled programs (`programs`), the decision (`decisions.score_and_decide`)
and the test evaluation (`evaluation.Evaluator`). Its arrays live on the
devices of a `sharding.Placement`: every batch is sharded over them before
it enters a program, the variables, optimizer states and scores are
replicated (`ldjax.train.sharding`).
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

from ldjax.data.augment import Draws, ViewSource
from ldjax.data.batching import Blocks
from ldjax.data.datasets import Dataset
from ldjax.errors import Interrupted, TrainingDiverged
from ldjax.models import bandwidth, costs
from ldjax.models.staged import StagedModel
from ldjax.runs import cluster
from ldjax.runs.config import Config
from ldjax.runs.workdir import RunDir
from ldjax.store.features import FeatureStore, storage_dtype
from ldjax.store.keeper import StoreKeeper
from ldjax.strategy import Strategy
from ldjax.train import (adaptive, budget, decisions, device_input, optim, programs, reader,
                         scoring, sharding, steps)
from ldjax.train.decisions import DropState
from ldjax.train.evaluation import Evaluator
from ldjax.train.records import EpochTimes

__all__ = ["DropState", "EpochResult", "Trainer", "param_l2"]


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


class Trainer:
  """State of one run (variables, optimizer states, drop state, stores, the compiled
  step); `fit` drives it epoch by epoch."""

  def __init__(self, model: StagedModel, data: Dataset, cfg: Config, strategy: str,
               variables: list[dict], run_dir: RunDir | None,
               cost_table: budget.CostTable | None = None):
    self.model, self.data, self.cfg, self.run_dir = model, data, cfg, run_dir
    # Threads that prepare the next batches while the devices compute (`ldjax.train.reader`;
    # 0: in the loop's thread). The same batches either way.
    self.reader_threads = cfg.run.threads
    self._feeds_checked: set[tuple] = set()   # stores the bandwidth model has looked at
    self.strategy = Strategy(strategy)
    # This process's blocks of the training set (all of it, with one process).
    self.blocks = Blocks.here(data.num_train, cfg.data.shards)
    self.blocks.check_batch(cfg.run.batch_size)
    self.n_train = self.blocks.used   # examples per epoch, over all processes
    start, stop = self.blocks.start - data.train_start, self.blocks.stop - data.train_start
    if start < 0 or stop > len(data.x_train):
      raise ValueError(f"the dataset holds training examples [{data.train_start}, "
                       f"{data.train_start + len(data.x_train)}), this process needs "
                       f"[{self.blocks.start}, {self.blocks.stop})")
    self.x_train, self.y_train = data.x_train[start:stop], data.y_train[start:stop]
    self.steps_per_epoch = self.n_train // cfg.run.batch_size   # at --batch-size: the base step
    self.placement = sharding.Placement.of(
        sharding.device_count(cfg.run.devices, cfg.run.batch_size))
    # A copy: the step donates its buffers, and callers reuse `variables`.
    self.variables = self.placement.replicate(list(variables))
    stage_costs = costs.stage_costs(model, data.image_shape)   # one abstract trace for both
    self.shapes = [c.output_shape for c in stage_costs]
    self.macs = [c.macs for c in stage_costs]
    self.net = programs.Net(tuple(model.stages), tuple(data.image_shape), tuple(self.shapes),
                            tuple(data.mean), tuple(data.std), cfg.model.precision,
                            self.placement)
    # Stores hold `views` maps per image: K exact views, or the padded image's with the
    # crop's window (`ldjax.data.augment`).
    self.augment = cfg.augment.for_images(data.image_shape)
    self.view_table = self.augment.view_table(cfg.run.seed, data.num_train)
    if self.view_table is not None:
      self.view_table = self.view_table.block(self.blocks.start, self.blocks.stop)
    self.view_net, self.view_macs = self.net, self.macs
    if self.augment.view_shape(data.image_shape) != tuple(data.image_shape):
      view_costs = costs.stage_costs(model, self.augment.view_shape(data.image_shape))
      self.view_net = dataclasses.replace(
          self.net, image_shape=self.augment.view_shape(data.image_shape),
          shapes=tuple(c.output_shape for c in view_costs))
      self.view_macs = [c.macs for c in view_costs]
    # What steps and extractions cost (`ldjax.train.budget`): the budget charges them and
    # the stable rule's drops must pay for their extraction.
    self.costs = cost_table or self._cost_table(cfg.budget.cost_table)
    self._start_budget()
    self.opt_states = self.placement.replicate(
        [self.tx.init(v.get("params", {})) for v in self.variables])
    self.drop = DropState()
    self.epochs_run = 0
    self.key = self.placement.replicate(jax.random.key(cfg.run.seed))
    self.feature_dtype = storage_dtype(cfg.store.dtype)
    self.keeper = StoreKeeper(
        self.augment.views * len(self.x_train), self.view_net.shapes, cfg.store.dtype,
        memory_budget_bytes=cfg.store.memory_bytes,
        directory=None if run_dir is None else cluster.store_directory(run_dir.path),
        agree=cluster.agree if jax.process_count() > 1 else None)
    self.step_fn: steps.Compiled | None = None
    self.step_k = 1   # `step_fn`'s batch is cfg.run.batch_size * step_k (`ldjax.train.adaptive`)
    self.compiled_for: tuple[int, int] | None = None   # (store_cut, cut) of `step_fn`
    room = dict(batch_size=cfg.eval.batch_size, memory_bytes=cfg.store.memory_bytes,
                variables=self.variables)
    self.evaluator = Evaluator(self.net, data.x_test, data.y_test, **room)
    self.val_evaluator = None if data.x_val is None else Evaluator(
        self.net, data.x_val, data.y_val, split="val", **room)
    if cost_table is None and cfg.budget.cost_table == "measure":   # needs the programs above
      self.costs = budget.measure(self)
      self._start_budget()

  def _cost_table(self, spec: str) -> budget.CostTable:
    """`--cost-table`: training MACs ("macs", also what "measure" starts from), or a file."""
    view_shape = self.augment.view_shape(self.data.image_shape)
    if spec not in budget.SOURCES:
      table = budget.load_table(spec)
      table.check_for(self.model.name, self.model.stage_names, self.model.num_conv,
                      self.data.image_shape, view_shape, spec)
      return table
    return budget.CostTable.from_macs(self.model.name, self.model.stage_names,
                                      self.data.image_shape, view_shape, self.macs,
                                      self.view_macs)

  def _start_budget(self) -> None:
    """The budget of --budget (from `costs`) and the optimizer whose schedule it sets."""
    cfg = self.cfg
    self.budget = None if cfg.budget.reference_epochs is None else budget.Budget(
        self.costs, cfg.budget.reference_epochs, self.n_train, cfg.run.batch_size)
    self.tx = optim.make_optimizer(cfg.optim, self.steps_per_epoch, self.schedule_steps,
                                   budget_steps=self.budget_steps)

  @property
  def budget_steps(self) -> int | None:
    """The schedule's length in base steps with a budget, else None (run.epochs)."""
    return None if self.budget is None else self.budget.total_steps

  @property
  def schedule_steps(self) -> int:
    """The schedule's length in base steps without a budget: run.epochs of them."""
    return self.cfg.run.epochs * self.steps_per_epoch

  def has_epoch(self, epoch: int) -> bool:
    """Whether the run trains an epoch `epoch` (0-based): --epochs, or budget left."""
    if self.budget is None:
      return epoch < self.cfg.run.epochs
    return self.budget.steps_left(self.step_cost()) > 0

  def is_last(self, epoch: int) -> bool:
    """After training `epoch`: whether it was the run's last."""
    return not self.has_epoch(epoch + 1)

  def step_cost(self) -> float:
    """What one step at the current cuts costs, per --batch-size (Freeze reads images)."""
    store_cut = self.drop.store_cut if self.strategy.caches else 0
    return self.cfg.run.batch_size * self.costs.train_cost(store_cut, self.drop.cut)

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
    left = (self.cfg.run.epochs - epoch - 1) * self.n_train
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

  # -- programs ------------------------------------------------------------------

  def compile_step(self, store_cut: int, cut: int, k: int = 1) -> steps.Compiled:
    """The train step with stages [0, store_cut) stored and [store_cut, cut) frozen,
    on batches of k x --batch-size (its learning rate scaled for them)."""
    tx = self.tx if k == 1 else optim.make_optimizer(
        self.cfg.optim, self.steps_per_epoch, self.schedule_steps, stride=k,
        lr_factor=adaptive.lr_scale(k, self.cfg.adaptive.lr_rule),
        budget_steps=self.budget_steps)
    return programs.train_step(self.net, tx, programs.structs(self.variables),
                               programs.structs(self.opt_states), store_cut, cut,
                               self.cfg.run.batch_size * k, self.feature_dtype,
                               label_smoothing=self.cfg.optim.label_smoothing)

  def compile_head_step(self, store_cut: int, cut: int) -> tuple[steps.Compiled, int]:
    """(step, k): the step of `compile_step` at the batch multiplier of `cut`, 1 unless
    --adaptive-batch; halved while the step does not fit the device's memory."""
    k = 1 if not self.cfg.adaptive.enabled else adaptive.multiplier(
        self.macs, cut, batch_size=self.cfg.run.batch_size, n_train=self.n_train,
        max_batch_size=self.cfg.adaptive.max_batch_size)
    device = next(d for d in self.placement.mesh.devices.flat   # one of this process's
                  if d.process_index == jax.process_index())
    while True:
      compiled = self.compile_step(store_cut, cut, k)
      # With several processes only --max-batch-size caps k: their memory checks could
      # disagree, and this runs in a thread, where a collective to agree could cross the
      # main thread's (the processes must run the same steps).
      if k == 1 or jax.process_count() > 1 or adaptive.fits_memory(compiled.fn, device):
        return compiled, k
      k //= 2

  @property
  def batch_size(self) -> int:
    """The batch of the current step (--batch-size, or grown by --adaptive-batch)."""
    return self.cfg.run.batch_size * self.step_k

  def compile_first_step(self) -> None:
    """Compiles the step of the first epoch now rather than when it starts."""
    self.step_fn, self.step_k, self.compiled_for = self.compile_step(0, 0), 1, (0, 0)

  def compile_extract(self, start: int, stop: int) -> steps.Compiled:
    """Stages [start, stop) on a batch of stored views, out in the store's dtype."""
    return programs.extraction(self.view_net, self.variables, start, stop, self.cfg.run.batch_size,
                               in_dtype=self.feature_dtype, out_dtype=self.feature_dtype,
                               sharded=True)

  def head_state(self, cut: int) -> steps.TrainState:
    params, stats = steps.split_variables(self.variables[cut:])
    return steps.TrainState(params, stats, self.opt_states[cut:])

  # -- stores --------------------------------------------------------------------

  def rebuild_store(self, stop: int) -> float:
    """Recomputes the store of stages [0, stop) from the images; returns seconds."""
    extract = self.compile_extract(0, stop)
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
    return self.augment.draws(self.cfg.run.seed, epoch, self.data.num_train,
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
    self.variables[self.drop.cut:] = steps.merge_variables(state.params, state.batch_stats)
    self.opt_states[self.drop.cut:] = list(state.opt_state)
    extracted, store_info = self._commit_store(new_store)
    self.epochs_run = epoch + 1
    return EpochResult(scores=scores, loss=loss, train_accuracy=accuracy, steps=len(metrics),
                       times=EpochTimes(**times, input_wait_s=wait_s), cpu_s=cpu_s,
                       extracted=extracted, store=store_info,
                       augment=self._augment_seen(store))

  def _fused(self, extract: steps.Compiled, tail):
    """The extraction as a per-batch forward pass of `tail` on the head's input (which,
    with crop, is not a padded view: that needs its own program)."""
    if self.view_net is not self.net or self.batch_size != self.cfg.run.batch_size:
      start, stop = self.drop.pending
      extract = programs.extraction(self.net, self.variables, start, stop, self.batch_size,
                                    in_dtype=self.feature_dtype, out_dtype=self.feature_dtype,
                                    sharded=True)
    return functools.partial(extract.fn, tail)

  @property
  def local_batch(self) -> int:
    """This process's rows of a batch of --batch-size (all of them with one process)."""
    return self.cfg.run.batch_size // self.blocks.processes

  def _on_devices(self, extract: steps.Compiled, tail):
    """The extraction of `tail` as the keeper calls it: this process's rows of a batch
    in, its rows of the output back (when numpy reads them)."""
    return lambda x: sharding.LocalRows(extract.fn(tail, self.placement.put_local(x)))

  @functools.cached_property
  def device_input(self) -> device_input.DeviceInput:
    """The training input kept on the devices when it fits (store.device_memory_gb)."""
    return device_input.DeviceInput(self.placement, device_input.budget_bytes(
        self.cfg.store.device_memory_gb, self.placement))

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
    feed = bandwidth.feed(self.macs, row, self.drop.cut, device, batch_size=self.batch_size,
                          precision=self.cfg.model.precision, store_cut=store.stage_range[1])
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
    extract = self.compile_extract(start, stop)
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
    future = pool.submit(self.compile_head_step, step_cut, self.drop.cut)
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
    batches = self.blocks.batches(self.cfg.run.seed, epoch, bs)
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
        * self.feature_dtype.itemsize
    return pending, dict(bytes=new_store.nbytes, stage_range=[0, self.drop.store_cut],
                         backing="memory" if new_store.in_memory else "npy",
                         dtype=self.cfg.store.dtype, views=self.augment.views,
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
    rule = self.cfg.drop.decision_rule
    # The stable rule also waits for the learning-rate warm-up to end.
    warmup = self.cfg.drop.warmup if rule == "paper" else max(self.cfg.drop.warmup,
                                                         self.cfg.optim.warmup_lr_epochs)
    record, self.drop = decisions.score_and_decide(
        sums, abs_sums, self.drop, strategy=self.strategy, epoch=epoch, warmup=warmup,
        last=self.is_last(epoch), stage_names=self.model.stage_names[cut:n_conv],
        cut_rule=self.cfg.drop.cut_rule, forced=self.cfg.drop.schedule, rule=rule,
        pays=None if rule == "paper" else lambda c: self.pays(c, epoch))
    return record
