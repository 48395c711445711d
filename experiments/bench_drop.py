"""Benchmark of the Learn & Drop mechanism: where a drop run's time goes.

Trains SGD and Drop with `ldjax.train.fit` in one process, from the same
initial variables (progress bars off, each in its own work directory, as
`python -m ldjax.run` does), then times the compiled pieces on their own and
prints, side by side:

1. the bare step time of the full model and of the head after each cut the
   drop run used (each compiled as the loop compiles it, on inputs already on
   the device), timed for --epoch-timing-steps steps after every epoch of both
   runs (outside their wall time), so that each epoch is compared with a bare
   step measured next to it rather than minutes away: this machine's speed
   drifts by up to 20 % over minutes;
2. the extraction of each drop: the run's `time.extract_store_s` against the
   bare extraction function x the number of batches it ran;
3. the drop run's wall time against its ideal, the sum over epochs of
   steps_per_epoch x the bare step timed after that epoch; the rest (setup,
   compilation, extraction and store, evaluation, scoring, checkpoints, the
   training loop's own cost beyond the bare steps, other Python) is the
   overhead, PASS if under 10 % of the wall time; and what evaluating after
   every epoch would add, from the bare time of one evaluation;
4. the realized speed-up (SGD train time / Drop train time, the paper's T)
   against the ratio of training MACs (`train_macs_total` of the summaries);
5. the SGD epochs' train time against the bare full-model step (timed after
   each) x steps_per_epoch: the input pipeline's share, PASS if under 5 %.

  python experiments/bench_drop.py [--epoch-timing-steps 10] [--timing-steps 20] [--repeats 3]
                                   [--out FILE.json] [LDJAX FLAGS]

LDJAX FLAGS are those of `python -m ldjax.run` (--dataset, --model, --width,
--epochs, --warmup, --lr, --batch-size, --train-size, --eval-every, ...). The
default is its no-argument run (ResNet-18 on the embedded Fashion-MNIST
subset, test evaluation after every epoch) made long enough for one-off costs
to weigh as in real training: `--width 0.25 --epochs 16`, about 7.5 minutes
here. Pass `--width 0.125 --epochs 8` for the no-argument run itself,
`--eval-every 4` to evaluate less often, or e.g.
`--dataset idx:/usr/share/datasets/fashion-mnist --train-size 12000`.
As `python -m ldjax.run` does, the runs use JAX's persistent compilation cache,
by default in a new temporary directory: the drop run loads the programs that
SGD or the timings compiled before it (the whole-model step, the evaluation),
and compiles the rest. Timings on a shared CPU are noisy: the load average is
printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(HERE), HERE) if p not in sys.path]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import repo_paths  # noqa: E402

from ldjax import run  # noqa: E402
from ldjax.runs import checkpoint, compile_cache  # noqa: E402
from ldjax.runs.workdir import RunDir  # noqa: E402
from ldjax.store import features as store  # noqa: E402
from ldjax.store import keeper  # noqa: E402
from ldjax.train import assembly, compare, evaluation, scoring, steps as train_steps  # noqa: E402
from ldjax.train import epoch as loop  # noqa: E402
from ldjax.train.continuation import Start  # noqa: E402
from ldjax.train.fit import Hooks, fit  # noqa: E402

# A run long enough for its one-off costs (compilation above all) to weigh as
# they do in real training, yet under 10 minutes for the whole benchmark here.
BENCH_DEFAULTS = ["--width", "0.25", "--epochs", "16"]
OVERHEAD_TARGET_PCT = 10.0
INPUT_TARGET_PCT = 5.0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python experiments/bench_drop.py", description=__doc__.split("\n\n")[0],
      epilog="Any other flag is passed to ldjax.run's parser (see python -m ldjax.run -h); "
             "--strategy, --resume and --overwrite are ignored.")
  p.add_argument("--timing-steps", type=int, default=20,
                 help="steps per timing of the full model before and after the runs and of "
                      "the extraction functions (default 20)")
  p.add_argument("--epoch-timing-steps", type=int, default=10,
                 help="bare steps timed after each epoch of the runs (default 10)")
  p.add_argument("--repeats", type=int, default=3,
                 help="timings per step function; the median is used (default 3)")
  p.add_argument("--in-memory", action="store_true",
                 help="run fit without a work directory (no checkpoints or metrics files)")
  p.add_argument("--workdir", default=None,
                 help="keep the two runs here (default: a temporary directory, removed)")
  p.add_argument("--compilation-cache", default=None, metavar="DIR",
                 help="JAX's persistent compilation cache, as python -m ldjax.run uses it: DIR, "
                      "or 'off' (default: a new, empty temporary directory, i.e. a first run "
                      "on a machine: only programs compiled earlier in this benchmark load)")
  p.add_argument("--out", default=None, help="write the report as JSON here")
  return p


class Report:
  """Printed lines, kept for the JSON too."""

  def __init__(self):
    self.lines: list[str] = []
    self.data: dict = {}

  def __call__(self, line: str = "") -> None:
    print(line, flush=True)
    self.lines.append(line)


# -- instrumentation -----------------------------------------------------------

@contextlib.contextmanager
def timed_methods(targets: dict[str, tuple[object, str]]):
  """Wraps methods to add their wall time to a dict (name -> [seconds, calls])."""
  totals = defaultdict(lambda: [0.0, 0])
  saved = []
  for name, (owner, attr) in targets.items():
    original = getattr(owner, attr)

    def wrapper(*args, _original=original, _name=name, **kwargs):
      t0 = time.perf_counter()
      try:
        return _original(*args, **kwargs)
      finally:
        totals[_name][0] += time.perf_counter() - t0
        totals[_name][1] += 1
    functools.update_wrapper(wrapper, original)
    saved.append((owner, attr, original))
    setattr(owner, attr, wrapper)
  try:
    yield totals
  finally:
    for owner, attr, original in saved:
      setattr(owner, attr, original)


# Costs paid once per run whatever its length.
ONE_OFF = ("compilation (waits for head steps, extraction)", "setup (Trainer: eval compile, shapes, MACs)",
           "checkpointer open/close")

# Everything fit does outside Trainer.run_epoch that may take time.
TIMED = {
    "setup (Trainer: eval compile, shapes, MACs)": (assembly, "trainer_for"),
    "evaluation": (loop.Trainer, "evaluate"),
    "scoring and decision": (loop.Trainer, "score_and_decide"),
    "checkpoint save": (checkpoint.Checkpointer, "save"),
    "checkpointer open/close": (checkpoint.Checkpointer, "__init__"),
    "checkpointer close": (checkpoint.Checkpointer, "close"),
    "metrics/summary files": (RunDir, "append_metrics"),
    "retired store deletion": (keeper.StoreKeeper, "delete_retired"),
    # Inside run_epoch's extract_store_s, so not categories of their own.
    "store writes": (keeper.StoreKeeper, "write"),
    "store finalize": (store.FeatureStore, "finalize"),
}
NESTED = ("store writes", "store finalize")


def train(model, data, cfg, strategy, variables, workdir, epoch_timings: EpochTimings):
  """One strategy with fit; returns (summary, epoch records, wall seconds, method times).

  The wall time leaves out `epoch_timings`, which runs after each epoch."""
  records = []
  run_dir = None
  if workdir is not None:
    run_dir = RunDir(os.path.join(workdir, strategy))
    run_dir.write_config(cfg, strategy=strategy, model_name=model.name)
  with timed_methods(TIMED) as totals:
    t0 = time.perf_counter()
    summary = fit(model, data, cfg, strategy, start=Start(variables), run_dir=run_dir,
                  hooks=Hooks(on_epoch=lambda r: (records.append(r.to_json()),
                                                  epoch_timings(records[-1])), progress=False))
    wall = time.perf_counter() - t0 - epoch_timings.spent
  summary.pop("variables")
  totals["checkpointer open/close"][0] += totals.pop("checkpointer close", [0.0, 0])[0]
  return summary, records, wall, {k: v[0] for k, v in totals.items()}


# -- bare timings ----------------------------------------------------------------

def _median_time(call, state, steps: int, repeats: int) -> tuple[float, object]:
  """(median seconds per call, last state) of `state = call(state, i)`, after two
  warm-up calls."""
  for i in range(2):
    state = call(state, i)
  jax.block_until_ready(state)
  per_step = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      state = call(state, i)
    jax.block_until_ready(state)
    per_step.append((time.perf_counter() - t0) / steps)
  return float(np.median(per_step)), state


@dataclasses.dataclass(frozen=True)
class Timed:
  """What the bare timings compile and run: a drop run's programs, test-set evaluator and
  start state, built as `fit` builds them (`ldjax.train.assembly`), without a Trainer."""
  data: object
  programs: object        # ldjax.train.programs.Programs
  evaluator: evaluation.Evaluator
  variables: list
  opt_states: list
  key: jax.Array

  @classmethod
  def build(cls, model, data, cfg, variables) -> Timed:
    programs, variables, opt_states = assembly.programs_and_state(model, data, cfg, variables)
    evaluator, _ = evaluation.evaluators(programs.net, data, variables,
                                         batch_size=cfg.eval.batch_size,
                                         memory_bytes=cfg.store.memory_bytes)
    return cls(data, programs, evaluator, variables, opt_states,
               programs.placement.replicate(jax.random.key(cfg.run.seed)))


def _device_input(timed: Timed, start: int, batch: int, rng) -> jax.Array:
  """A batch of the step's input on the device: images, or features of stage start-1."""
  if start == 0:
    return jax.device_put(timed.data.x_train[:batch])
  shape = (batch, *timed.programs.shapes[start - 1])
  return jax.device_put(rng.standard_normal(shape).astype(timed.programs.feature_dtype))


class HeadTimer:
  """The head step for (store_cut, cut), compiled as the loop compiles it, with its own
  copy of the state and an input batch on the device; `time` runs it bare."""

  def __init__(self, timed: Timed, store_cut: int, cut: int):
    self.compiled = timed.programs.step(store_cut, cut)
    bs = timed.programs.batch_size
    # Copies: the step donates its state, and the start state is reused.
    state = jax.tree.map(jnp.copy, train_steps.head_state(timed.variables, timed.opt_states, cut))
    self.carry = (state, scoring.init(state.params))
    self.frozen = timed.variables[store_cut:cut]
    self.x = _device_input(timed, store_cut, bs, np.random.default_rng(0))
    self.y = jax.device_put(timed.data.y_train[:bs])
    self.key = timed.key
    self.step_ids = [jax.device_put(np.int32(i)) for i in range(64)]

  def _call(self, carry, i):
    st, sc, _ = self.compiled.fn(*carry, self.frozen, self.x, self.y, self.key,
                                 self.step_ids[i % len(self.step_ids)], np.float32(0))
    return st, sc

  def time(self, steps: int, repeats: int = 1) -> float:
    seconds, self.carry = _median_time(self._call, self.carry, steps, repeats)
    return seconds


class EpochTimings:
  """`on_epoch` hook: after each epoch, times the bare step that epoch trained with.

  The ideal of an epoch is then its steps x a step time measured minutes, not
  minutes apart from it, which cancels the machine's slow drift (the same step
  measured before and after the runs differed by up to 20 % here). The hook's
  own time is subtracted from the run's wall time.
  """

  def __init__(self, timed: Timed, heads: dict, steps: int):
    self.timed, self.heads, self.steps = timed, heads, steps
    self.step_s: list[float] = []   # per epoch
    self.spent = 0.0

  def __call__(self, record: dict) -> None:
    t0 = time.perf_counter()
    pair = (record["stored_stages"], record["dropped_stages"])
    if pair not in self.heads:
      self.heads[pair] = HeadTimer(self.timed, *pair)
    self.step_s.append(self.heads[pair].time(self.steps))
    self.spent += time.perf_counter() - t0


def time_evaluation(timed: Timed, store_cut: int, repeats: int) -> float:
  """Median seconds of `Trainer.evaluate` as a drop run does it with `store_cut` dropped
  stages (its `Evaluator`, after a first call that caches their test-set outputs and
  compiles)."""
  evaluate = functools.partial(timed.evaluator.evaluate, timed.variables, store_cut, None)
  evaluate()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    evaluate()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def time_extract(timed: Timed, start: int, stop: int, steps: int, repeats: int) -> dict:
  compiled = timed.programs.extraction(start, stop)
  bs = timed.programs.batch_size
  x = _device_input(timed, start, bs, np.random.default_rng(1))
  tail = timed.variables[start:stop]

  def call(prev, i):
    return compiled.fn(tail, x)
  seconds, _ = _median_time(call, None, steps, repeats)
  return {"start": start, "stop": stop, "batch_s": seconds, "compile_s": compiled.seconds}


# -- the report ------------------------------------------------------------------

def _pct(part: float, whole: float) -> float:
  return 100.0 * part / whole if whole else math.nan


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, rest = build_parser().parse_known_args(argv)
  ld_args = run.build_parser().parse_args(BENCH_DEFAULTS + rest)   # the last of a flag wins
  cfg = run.config_from_args(ld_args)
  with contextlib.ExitStack() as stack:
    if args.compilation_cache is None:
      cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_drop_xla_"))
    else:
      cache = compile_cache.resolve(args.compilation_cache)
    stack.enter_context(compile_cache.using(cache))
    return _bench(args, argv, cfg, cache)


def _bench(args, argv, cfg, cache) -> int:
  rep = Report()
  command = repo_paths.command(["python", "experiments/bench_drop.py", *argv])
  rep(f"command: {command}")
  rep(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
      f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
  rep("compilation cache: " + ("a temporary directory (new and empty)" if args.compilation_cache is None
                                else repo_paths.rel(cache) if cache else "off"))
  data, model = compare.prepare(cfg, ["sgd", "drop"])
  variables = model.init(jax.random.key(cfg.run.seed), data.image_shape)
  timer = Timed.build(model, data, cfg, variables)   # compiles the test evaluation
  spe, bs = timer.programs.steps_per_epoch, cfg.run.batch_size
  rep(f"{model.name} width {cfg.model.width:g} on {data.name}: {len(data.x_train)} train / "
      f"{len(data.x_test)} test images {'x'.join(map(str, data.image_shape))}, batch {bs}, "
      f"{spe} steps per epoch, {cfg.run.epochs} epochs (warm-up {cfg.drop.warmup}), lr {cfg.optim.lr:g}")
  steps, repeats = args.timing_steps, args.repeats
  heads = {(0, 0): HeadTimer(timer, 0, 0)}   # (store_cut, cut) -> its timer; compiles cold
  full_cold_compile = heads[(0, 0)].compiled.seconds
  full_before = heads[(0, 0)].time(steps, repeats)

  workdir_ctx = (contextlib.nullcontext(None) if args.in_memory
                 else contextlib.nullcontext(args.workdir) if args.workdir
                 else tempfile.TemporaryDirectory(prefix="bench_drop_"))
  with workdir_ctx as workdir:
    runs, per_epoch = {}, {}
    for s in ("sgd", "drop"):
      print(f"(training {s}: {cfg.run.epochs} epochs, progress not shown so as not to time it)",
            file=sys.stderr, flush=True)
      timings = EpochTimings(timer, heads, args.epoch_timing_steps)
      runs[s] = train(model, data, cfg, s, variables, workdir, timings)
      per_epoch[s] = timings.step_s
  (sgd, sgd_recs, sgd_wall, _), (drop, drop_recs, drop_wall, drop_t) = runs["sgd"], runs["drop"]
  pair_of = lambda r: (r["stored_stages"], r["dropped_stages"])   # noqa: E731
  if not drop["drop_events"]:
    rep("the drop run dropped nothing: the benchmark says nothing about the mechanism; "
        "change the settings (more epochs, a higher lr)")
    return 1

  # 1. Bare step times of every (input cut, cut) the runs trained at, after each epoch.
  full_after = heads[(0, 0)].time(steps, repeats)
  at = defaultdict(list)   # (store_cut, cut) -> bare step seconds after its epochs
  for s_ in ("sgd", "drop"):
    for r, t in zip(runs[s_][1], per_epoch[s_], strict=True):
      at[pair_of(r)].append(t)
  full_step = float(np.median(at[(0, 0)]))
  rep("")
  rep(f"1. Bare step times (inputs on the device; {args.epoch_timing_steps} steps after each "
      "epoch of both runs, outside their wall time)")
  rep(f"   {'head from stage':<28} {'stages':>6} {'step ms':>9} {'vs full':>8} {'epochs':>6} "
      f"{'min-max ms':>13}")
  names = model.stage_names
  for (sc, cut), ts in sorted(at.items(), key=lambda kv: kv[0][1]):
    label = "full model" if cut == 0 else f"{names[cut]} (cut {cut})"
    rep(f"   {label:<28} {model.num_stages - cut:>6} {1e3 * np.median(ts):>9.2f} "
        f"{np.median(ts) / full_step:>7.2f}x {len(ts):>6} "
        f"{f'{1e3 * min(ts):.0f}-{1e3 * max(ts):.0f}':>13}")
  rep(f"   full model, {repeats} x {steps} steps before the runs {1e3 * full_before:.2f} ms and "
      f"after {1e3 * full_after:.2f} ms: the machine's drift, which timing after each epoch "
      "cancels")
  rep(f"   compilation of the full-model step: {full_cold_compile:.2f} s cold (before the runs), "
      f"loaded from the cache by SGD in {sgd_recs[0]['time']['compile_s']:.2f} s and by Drop in "
      f"{drop_recs[0]['time']['compile_s']:.2f} s")

  # 2. Extraction per drop.
  rep("")
  rep("2. Extraction per drop (the epoch after each decision)")
  rep(f"   {'epoch':>5} {'stages':>8} {'measured s':>10} {'bare fn s':>9} {'store/sync s':>12} "
      f"{'MB stored':>9}")
  extractions, prev = [], 0
  n_batches = math.ceil(len(data.x_train) / bs)
  for r in drop_recs:
    if r["store"] is not None:
      start, stop = prev, r["stored_stages"]
      e = time_extract(timer, start, stop, steps, repeats)
      e |= {"epoch": r["epoch"], "measured_s": r["time"]["extract_store_s"],
            "bare_s": e["batch_s"] * n_batches, "bytes": r["store"]["bytes"]}
      extractions.append(e)
      rep(f"   {r['epoch']:>5} {f'{start}-{stop - 1}':>8} {e['measured_s']:>10.2f} "
          f"{e['bare_s']:>9.2f} {e['measured_s'] - e['bare_s']:>12.2f} {e['bytes'] / 1e6:>9.1f}")
    prev = r["stored_stages"]
  if extractions:
    rep(f"   measured = the pass over the training set before the epoch trains: extraction "
        f"calls + store writes {drop_t.get('store writes', 0):.2f} s (wait for the batch, copy to host, write into "
        f"the store, each batch while the next one runs) + finalize "
        f"{drop_t.get('store finalize', 0):.2f} s (checksums); the head's step compiles in a "
        "background thread meanwhile, sharing the cores")

  # 3. Drop run: wall time against its ideal.
  ideal = spe * sum(per_epoch["drop"])
  sum_t = lambda recs, k: sum(r["time"][k] for r in recs)   # noqa: E731
  cats = {
      "compilation (waits for head steps, extraction)": sum_t(drop_recs, "compile_s"),
      "extraction and feature store": sum_t(drop_recs, "extract_store_s"),
      "training loop beyond the bare steps": sum_t(drop_recs, "train_s") - ideal,
      **{k: v for k, v in drop_t.items() if v > 0 and k not in NESTED},
  }
  cats["other (records, Python)"] = drop_wall - ideal - sum(cats.values())
  overhead = drop_wall - ideal
  rep("")
  rep("3. Drop run: wall time against the ideal (sum over epochs of steps/epoch x the bare step "
      "timed after it)")
  rep(f"   wall {drop_wall:.2f} s, ideal {ideal:.2f} s, overhead {overhead:.2f} s = "
      f"{_pct(overhead, drop_wall):.1f} % of the wall time")
  for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
    note = "  (< 0: timing noise of the shared machine)" if v < 0 else ""
    rep(f"     {k:<44} {v:>8.2f} s {_pct(v, drop_wall):>6.1f} %{note}")
  full_compile = drop_recs[0]["time"]["compile_s"]
  ok3 = _pct(overhead, drop_wall) < OVERHEAD_TARGET_PCT
  rep(f"   {'PASS' if ok3 else 'FAIL'}: overhead {_pct(overhead, drop_wall):.1f} % "
      f"{'<' if ok3 else '>='} {OVERHEAD_TARGET_PCT:.0f} %")
  one_off = sum(v for k, v in cats.items() if k in ONE_OFF)
  steady = overhead - one_off
  rep(f"   without the one-off costs ({', '.join(k.split(' (')[0] for k in ONE_OFF)}: "
      f"{one_off:.2f} s): overhead {steady:.2f} s = {_pct(steady, drop_wall - one_off):.1f} % "
      f"of the remaining wall time "
      f"({'<' if _pct(steady, drop_wall - one_off) < OVERHEAD_TARGET_PCT else '>='} "
      f"{OVERHEAD_TARGET_PCT:.0f} %)")
  if _pct(steady, drop_wall - one_off) < OVERHEAD_TARGET_PCT:
    # wall = one_off + rest, steady = f * rest: one_off + steady < 10 % of wall when
    # rest > one_off * (1 - 0.1) / (0.1 - f).
    f, t = steady / (drop_wall - one_off), OVERHEAD_TARGET_PCT / 100
    rest = one_off * (1 - t) / (t - f)
    rep(f"   at this steady rate the total falls under {OVERHEAD_TARGET_PCT:.0f} % once the run "
        f"spends {rest:.0f} s beyond its one-off costs (this run: {drop_wall - one_off:.0f} s)")
  # Evaluation: each test cut the drop run evaluated at, timed bare (whole model, or
  # the head on cached test features); what evaluating after every epoch would add.
  eval_cost = {c: time_evaluation(timer, c, repeats)
               for c in sorted({0, *(r["stored_stages"] for r in drop_recs)})}
  skipped = [r for r in drop_recs if r["test_accuracy"] is None]
  rep(f"   one evaluation ({len(data.x_test)} test images), bare: " + ", ".join(
      f"{'whole model' if c == 0 else f'head from cut {c}'} {t:.3f} s"
      for c, t in eval_cost.items()) + f"; this run evaluated {len(drop_recs) - len(skipped)} "
      f"of {len(drop_recs)} epochs (--eval-every {cfg.eval.every})")
  every_epoch = None
  if skipped:
    extra = sum(eval_cost[r["stored_stages"]] for r in skipped)
    every_epoch = _pct(overhead + extra, drop_wall + extra)
    rep(f"   evaluating after every epoch would add ~{extra:.2f} s: overhead ~{every_epoch:.1f} % "
        f"({'<' if every_epoch < OVERHEAD_TARGET_PCT else '>='} {OVERHEAD_TARGET_PCT:.0f} %)")
  t_overhead = drop["train_time_s"] - ideal
  rep(f"   within T (train + extraction + compilation, the paper's time, {drop['train_time_s']:.2f} s): "
      f"overhead {t_overhead:.2f} s = {_pct(t_overhead, drop['train_time_s']):.1f} %")
  top = [k for k, v in sorted(cats.items(), key=lambda kv: -kv[1]) if v > 0][:3]
  rep(f"   what remains: mostly {', '.join(top)}")

  # 4. Speed-up against MACs.
  speedup = sgd["train_time_s"] / drop["train_time_s"]
  mac_ratio = sgd["train_macs_total"] / drop["train_macs_total"]
  sgd_ideal = spe * sum(per_epoch["sgd"])
  rep("")
  rep("4. Speed-up of Drop over SGD")
  rep(f"   train time T: SGD {sgd['train_time_s']:.2f} s, Drop {drop['train_time_s']:.2f} s -> "
      f"{speedup:.2f}x (dT {_pct(sgd['train_time_s'] - drop['train_time_s'], sgd['train_time_s']):.1f} %)")
  rep(f"   training MACs: SGD {sgd['train_macs_total']:.3e}, Drop {drop['train_macs_total']:.3e} -> "
      f"{mac_ratio:.2f}x;  bare-step ideal {sgd_ideal / ideal:.2f}x;  wall {sgd_wall / drop_wall:.2f}x")
  rep(f"   realized / MAC ratio: {speedup / mac_ratio:.2f} (1.0 = every MAC saved is time saved); "
      f"accuracy SGD {sgd['test_accuracy']:.2f} %, Drop {drop['test_accuracy']:.2f} %; "
      f"drops {[(e['epoch'], e['cut']) for e in drop['drop_events']]}")

  # 5. SGD input pipeline.
  train_s = [r["time"]["train_s"] for r in sgd_recs]
  bare_epochs = [spe * t for t in per_epoch["sgd"]]
  share = _pct(sum(train_s) - sum(bare_epochs), sum(train_s))
  epoch_shares = [_pct(a - b, a) for a, b in zip(train_s, bare_epochs)]
  ok5 = share < INPUT_TARGET_PCT
  rep("")
  rep("5. SGD epochs against the bare full-model step timed after each (input pipeline and "
      "loop share)")
  rep(f"   train_s per epoch: median {np.median(train_s):.3f} s (min {min(train_s):.3f}, "
      f"max {max(train_s):.3f}); bare step x {spe} steps: median {np.median(bare_epochs):.3f} s")
  rep(f"   {'PASS' if ok5 else 'FAIL'}: input pipeline and loop {share:.1f} % of the epoch "
      f"{'<' if ok5 else '>='} {INPUT_TARGET_PCT:.0f} % (median epoch: "
      f"{np.median(epoch_shares):.1f} %)")
  rep(f"load average {os.getloadavg()[0]:.1f} at the end")

  if args.out:
    rep.data = {
        "command": command,
        "config": repo_paths.tree(cfg.flat()),
        "model": model.name, "stage_names": list(names), "steps_per_epoch": spe,
        "timing_steps": steps, "repeats": repeats,
        "epoch_timing_steps": args.epoch_timing_steps,
        "full_step_s": full_step, "full_step_before_s": full_before,
        "full_step_after_s": full_after, "full_step_cold_compile_s": full_cold_compile,
        "bare_step_s_per_epoch": per_epoch,
        "heads": [{"store_cut": sc, "cut": c, "stage": names[c], "step_s": float(np.median(ts)),
                   "after_epochs_s": ts} for (sc, c), ts in sorted(at.items())],
        "extractions": extractions,
        "drop": {"wall_s": drop_wall, "ideal_s": ideal, "overhead_s": overhead,
                 "overhead_pct": _pct(overhead, drop_wall), "overhead_categories_s": cats,
                 "steady_overhead_s": steady, "full_step_compile_s": full_compile,
                 "steady_overhead_pct": _pct(steady, drop_wall - one_off),
                 "eval_bare_s": {str(c): t for c, t in eval_cost.items()},
                 "overhead_pct_eval_every_epoch": every_epoch,
                 "train_time_s": drop["train_time_s"], "pass": ok3,
                 "target_pct": OVERHEAD_TARGET_PCT},
        "speedup": {"train_time": speedup, "train_macs": mac_ratio,
                    "bare_step_ideal": sgd_ideal / ideal, "wall": sgd_wall / drop_wall},
        "sgd_input": {"train_s_per_epoch": train_s, "bare_epoch_s": bare_epochs,
                      "share_pct": share, "pass": ok5, "target_pct": INPUT_TARGET_PCT},
        "summaries": {"sgd": sgd, "drop": drop}, "sgd_wall_s": sgd_wall,
        "records": {"sgd": sgd_recs, "drop": drop_recs},
        "printed": rep.lines,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(rep.data, f, indent=1, default=float)
  return 0


if __name__ == "__main__":
  sys.exit(main())
