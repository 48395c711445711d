"""Throughput on 1, 2 and 4 devices: SGD's step and Drop's head, with and without adaptive batch.

Issue 15, item 6. For each device count n (default 1, 2, 4; those not
visible are skipped and said so), the `ldjax.train.programs.Programs` of a run
with `--devices n` (`ldjax.train.assembly.programs_for`) compile, as a run
compiles them (`Programs.step`, the same jitted programs with the batch
sharded over a one-axis mesh):

- `sgd`: the whole model's train step (`step(0, 0)`), batch B;
- `head`: Drop's head after a cut (`step(cut, cut)`), reading a batch
  of stored features (shape `programs.shapes[cut - 1]`, the store's dtype),
  batch B: `--adaptive-batch` off;
- `head adaptive`: the same head as `--adaptive-batch` compiles it
  (`Programs.head_step`): batch k x B, k from
  `ldjax.train.adaptive.multiplier` (halved where the device's memory is too
  small, GPUs only), its learning rate scaled. SGD never grows its batch, so
  it has no adaptive variant.

Every input is already on the devices (`placement.put_batch`): the timings
are the bare compiled steps, without the input pipeline. The variants are
interleaved: each round times `--steps` steps of every variant, in an order
rotated from round to round, so that a noisy neighbour on a shared machine
hits all of them alike; the report gives the median over rounds of the step
time, of images/s (batch / step time) and of the per-round ratios against
1-device SGD measured in the same round, with the process CPU seconds per
step and the load average.

On a CPU the devices are XLA's simulated host devices
(`--xla_force_host_platform_device_count=4`, set here before jax is
imported; it only concerns the host platform, so on a GPU the real devices
are used and the same command runs unchanged). Simulated devices share the
machine's cores: on a 2-core CPU, 4 devices cannot be faster than 1, and the
CPU rows measure the cost of the partitioning (all-reduces, smaller per-device
matrix products), not a speed-up.

  python experiments/bench_scale.py [--device-counts 1,2,4] [--cut N] [--steps 10]
                                    [--rounds 5] [--quick] [--out [FILE.json]] [LDJAX FLAGS]

LDJAX FLAGS are those of `python -m ldjax.run` (--model, --width, --batch-size,
--dataset, --precision, --feature-dtype, --max-batch-size, --adaptive-lr,
--compilation-cache, ...); the default is ResNet-18 at width 0.25 on the
embedded data, batch 128 (`--devices` is replaced by --device-counts).
`--quick` is a smoke test (width 0.0625, 3 steps, 2 rounds: under a minute
here). `--out` alone writes experiments/results/bench_scale.json and the
printed report next to it as .txt.
"""

from __future__ import annotations

import os
import sys

# Before jax is imported: several simulated devices on the host platform. XLA reads
# the flag for the CPU client only; a GPU run uses its real devices.
DEVICE_FLAG = "--xla_force_host_platform_device_count"
if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}=4".strip()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(HERE), HERE) if p not in sys.path]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import repo_paths  # noqa: E402

from ldjax import run  # noqa: E402
from ldjax.errors import UsageError  # noqa: E402
from ldjax.models import costs  # noqa: E402
from ldjax.runs import compile_cache  # noqa: E402
from ldjax.train import adaptive, assembly, compare, scoring, steps as train_steps  # noqa: E402

BENCH_DEFAULTS = ["--model", "resnet18", "--width", "0.25", "--batch-size", "128",
                  "--adaptive-batch"]
QUICK = dict(width="0.0625", steps=3, rounds=2)
DEFAULT_OUT = os.path.join(HERE, "results", "bench_scale.json")
VARIANTS = ("sgd", "head", "head adaptive")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python experiments/bench_scale.py", description=__doc__.split("\n\n")[0],
      epilog="Any other flag is passed to ldjax.run's parser (see python -m ldjax.run -h); "
             "its --devices is replaced by --device-counts.")
  p.add_argument("--device-counts", default="1,2,4",
                 help="comma list of device counts (default 1,2,4; those not visible are "
                      "skipped)")
  p.add_argument("--cut", type=int, default=None,
                 help="the head starts at this stage (default: the first stage from the "
                      "middle conv stage on whose adaptive multiplier k is >= 2, else the "
                      "middle one)")
  p.add_argument("--steps", type=int, default=10, help="steps per timing (default 10)")
  p.add_argument("--rounds", type=int, default=5,
                 help="interleaved rounds over all variants; medians are over them (default 5)")
  p.add_argument("--warmup-steps", type=int, default=2,
                 help="untimed steps of each variant before the rounds (default 2)")
  p.add_argument("--quick", action="store_true",
                 help=f"smoke test: --width {QUICK['width']}, {QUICK['steps']} steps, "
                      f"{QUICK['rounds']} rounds (a later --width wins)")
  p.add_argument("--out", nargs="?", const=DEFAULT_OUT, default=None, metavar="FILE.json",
                 help="write the report as JSON here and the printed lines as .txt next to it "
                      f"(alone: {os.path.relpath(DEFAULT_OUT)})")
  return p


class Report:
  """Printed lines, kept for the .txt and the JSON."""

  def __init__(self):
    self.lines: list[str] = []

  def __call__(self, line: str = "") -> None:
    print(line, flush=True)
    self.lines.append(line)


# -- the timed steps -------------------------------------------------------------

class Programmed(NamedTuple):
  """A drop run's programs on n devices and its start state, built as `fit` builds them
  (`ldjax.train.assembly`), without a Trainer."""
  data: object
  programs: object   # ldjax.train.programs.Programs
  variables: list
  opt_states: list
  key: jax.Array

  @classmethod
  def build(cls, model, data, cfg, variables) -> Programmed:
    programs, variables, opt_states = assembly.programs_and_state(model, data, cfg, variables)
    return cls(data, programs, variables, opt_states,
               programs.placement.replicate(jax.random.key(cfg.run.seed)))


class StepTimer:
  """One compiled train step with its own state and an input batch on the devices."""

  def __init__(self, run: Programmed, variant: str, cut: int, rng):
    programs = run.programs
    self.variant, self.devices = variant, programs.placement.devices
    store_cut = cut = 0 if variant == "sgd" else cut
    if variant == "head adaptive":
      self.compiled, self.k = programs.head_step(cut, cut)   # as --adaptive-batch does
    else:
      self.compiled, self.k = programs.step(store_cut, cut), 1
    self.cut, self.batch = cut, programs.batch_size * self.k
    p = programs.placement
    # A copy: the step donates it.
    state = p.replicate(train_steps.head_state(run.variables, run.opt_states, cut))
    self.carry = (state, p.replicate(scoring.init(state.params)))
    self.frozen = run.variables[store_cut:cut]   # empty: nothing frozen
    data = run.data
    if store_cut == 0:
      x = data.x_train[:self.batch]
    else:   # a batch read from the store: stage cut-1's maps, in the store's dtype
      shape = (self.batch, *programs.shapes[store_cut - 1])
      x = rng.standard_normal(shape).astype(programs.feature_dtype)
    self.x, self.y = p.put_batch(x), p.put_batch(data.y_train[:self.batch])
    self.key = run.key
    self.i = 0

  def run(self, steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) of `steps` steps, synchronised at the end."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
      state, scores, _ = self.compiled.fn(*self.carry, self.frozen, self.x, self.y, self.key,
                                          np.int32(self.i), np.float32(0))
      self.carry, self.i = (state, scores), self.i + 1
    jax.block_until_ready(self.carry)
    return time.perf_counter() - t0, time.process_time() - cpu0


def default_cut(macs, num_conv: int, batch_size: int, n_train: int, max_batch) -> int:
  """The first cut from the middle conv stage on where --adaptive-batch grows the batch."""
  middle = max(1, num_conv // 2)
  for cut in range(middle, num_conv):
    if adaptive.multiplier(macs, cut, batch_size=batch_size, n_train=n_train,
                           max_batch_size=max_batch) >= 2:
      return cut
  return middle


def device_counts(spec: str, visible: int) -> tuple[list[int], list[int]]:
  try:
    asked = [int(s) for s in spec.split(",") if s.strip()]
  except ValueError:
    raise UsageError(f"--device-counts must be a comma list of integers, got {spec!r}") from None
  if not asked or min(asked) < 1:
    raise UsageError(f"--device-counts must list integers > 0, got {spec!r}")
  return [n for n in asked if n <= visible], [n for n in asked if n > visible]


# -- main ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return _main(argv)
  except UsageError as e:
    print(f"bench_scale: {e}", file=sys.stderr)
    return 2


def _main(argv: list[str]) -> int:
  args, rest = build_parser().parse_known_args(argv)
  if args.quick:
    rest = ["--width", QUICK["width"], *rest]
    args.steps, args.rounds = QUICK["steps"], QUICK["rounds"]
  ld_args = run.build_parser().parse_args(BENCH_DEFAULTS + rest)   # the last of a flag wins
  cfg = run.config_from_args(ld_args)
  if min(args.steps, args.rounds) < 1 or args.warmup_steps < 0:
    raise UsageError("--steps and --rounds must be > 0, --warmup-steps >= 0")
  counts, skipped = device_counts(args.device_counts, jax.device_count())
  if not counts:
    raise UsageError(f"none of --device-counts {args.device_counts} is visible "
                     f"({jax.device_count()} {jax.default_backend()} devices)")
  bad = [n for n in counts if cfg.run.batch_size % n]
  if bad:
    raise UsageError(f"--batch-size {cfg.run.batch_size} does not divide by {bad} devices")
  cache = compile_cache.resolve(ld_args.compilation_cache)
  with compile_cache.using(cache):
    return _bench(args, argv, cfg, counts, skipped, cache)


def _bench(args, argv, cfg, counts, skipped, cache) -> int:
  rep = Report()
  command = repo_paths.command(["python", "experiments/bench_scale.py", *argv])
  backend, kind = jax.default_backend(), jax.devices()[0].device_kind
  load_start = os.getloadavg()
  rep(f"command: {command}")
  rep(f"jax {jax.__version__} on {backend} ({kind}): {jax.device_count()} visible devices, "
      f"{os.cpu_count()} CPUs, load average {load_start[0]:.1f} at start; "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  rep(f"compilation cache: {repo_paths.rel(cache) if cache else 'off'} "
      "(compile times below may be loads from it)")
  if skipped:
    rep(f"device counts {skipped} skipped: only {jax.device_count()} {backend} devices visible")
  if backend == "cpu":
    rep(f"NOTE: the {jax.device_count()} CPU devices are simulated by XLA and share the "
        f"machine's {os.cpu_count()} cores: more devices cannot be faster here; the ratios "
        "measure the cost of partitioning the step, not a speed-up")

  data, model = compare.prepare(cfg, ["sgd", "drop"])
  variables = model.init(jax.random.key(cfg.run.seed), data.image_shape)
  n_train, bs = len(data.x_train), cfg.run.batch_size
  macs = [c.macs for c in costs.stage_costs(model, data.image_shape)]
  cut = args.cut if args.cut is not None else default_cut(
      macs, model.num_conv, bs, n_train, cfg.adaptive.max_batch_size)
  if not 1 <= cut < model.num_conv:
    raise UsageError(f"--cut must be in [1, {model.num_conv - 1}] (a conv stage stays), "
                     f"got {cut}")
  k_macs = adaptive.multiplier(macs, cut, batch_size=bs, n_train=n_train,
                               max_batch_size=cfg.adaptive.max_batch_size)
  mac_ratio = costs.training_macs(macs, 0, "sgd") / costs.training_macs(macs, cut, "drop")
  rep(f"{model.name} width {cfg.model.width:g} on {data.name}: {n_train} train images "
      f"{'x'.join(map(str, data.image_shape))}, batch B = {bs}, precision {cfg.model.precision}, "
      f"features {cfg.store.dtype}")
  rep(f"head: stages {cut}-{model.num_stages - 1} (from {model.stage_names[cut]}, cut {cut}), "
      f"input {'x'.join(map(str, costs.stage_costs(model, data.image_shape)[cut - 1].output_shape))}"
      f"; training MACs per example whole model / head = {mac_ratio:.2f}; adaptive k = "
      f"{k_macs} (cap {cfg.adaptive.max_batch_size or adaptive.DEFAULT_CAP * bs}, lr x"
      f"{adaptive.lr_scale(k_macs, cfg.adaptive.lr_rule):g} {cfg.adaptive.lr_rule})")
  rep(f"timing: {args.rounds} interleaved rounds x {args.steps} steps per variant after "
      f"{args.warmup_steps} warm-up steps; inputs already on the devices")

  timers: list[StepTimer] = []
  rng = np.random.default_rng(0)
  for n in counts:
    built = Programmed.build(model, data, cfg.replace(devices=n), variables)
    for v in VARIANTS:
      t = StepTimer(built, v, cut, rng)
      t.run(args.warmup_steps)
      timers.append(t)
      print(f"(compiled {v} on {n} devices in {t.compiled.seconds:.2f} s)", file=sys.stderr,
            flush=True)
    del built

  # Interleaved rounds; the order rotates so each variant follows each other one.
  wall = {id(t): [] for t in timers}
  cpu = {id(t): [] for t in timers}
  for r in range(args.rounds):
    order = timers[r % len(timers):] + timers[:r % len(timers)]
    for t in order:
      w, c = t.run(args.steps)
      wall[id(t)].append(w / args.steps)
      cpu[id(t)].append(c / args.steps)
  load_end = os.getloadavg()

  base = timers[0] if timers[0].devices == 1 else None   # 1-device SGD
  ref = base or timers[0]
  ref_label = f"{ref.devices}-device SGD"
  rows = []
  for t in timers:
    step = np.asarray(wall[id(t)])
    ips = t.batch / step
    vs_ref = ips / (ref.batch / np.asarray(wall[id(ref)]))   # per round, then the median
    same1 = next(u for u in timers if u.variant == t.variant and u.devices == counts[0])
    vs_same = ips / (same1.batch / np.asarray(wall[id(same1)]))
    rows.append(dict(variant=t.variant, devices=t.devices, cut=t.cut, k=t.k, batch=t.batch,
                     compile_s=t.compiled.seconds, step_s=float(np.median(step)),
                     step_s_rounds=step.tolist(), images_per_s=float(np.median(ips)),
                     ratio_vs_ref=float(np.median(vs_ref)),
                     ratio_vs_same_variant_first_count=float(np.median(vs_same)),
                     cpu_s_per_step=float(np.median(cpu[id(t)])),
                     cpu_per_wall=float(np.median(np.asarray(cpu[id(t)]) / step)),
                     xla_flops_per_device=t.compiled.flops))

  rep("")
  rep(f"   {'variant':<14} {'dev':>3} {'k':>2} {'batch':>5} {'step ms':>9} {'images/s':>9} "
      f"{'vs ' + ref_label:>18} {f'vs {counts[0]} dev':>9} {'CPU s/step':>10} {'CPU/wall':>8} "
      f"{'compile s':>9}")
  for row in rows:
    rep(f"   {row['variant']:<14} {row['devices']:>3} {row['k']:>2} {row['batch']:>5} "
        f"{1e3 * row['step_s']:>9.2f} {row['images_per_s']:>9.0f} "
        f"{row['ratio_vs_ref']:>17.2f}x {row['ratio_vs_same_variant_first_count']:>8.2f}x "
        f"{row['cpu_s_per_step']:>10.3f} {row['cpu_per_wall']:>8.2f} {row['compile_s']:>9.2f}")
  rep("")
  rep(f"   images/s = batch / median step time; ratios = median over rounds of the images/s "
      f"ratio measured in the same round; 'vs {counts[0]} dev' compares a variant with itself "
      f"on {counts[0]} device(s) (the scaling); CPU s/step is the process's CPU time (all "
      "threads), CPU/wall how many cores it kept busy")
  by = {(r["variant"], r["devices"]): r for r in rows}

  def flops_ratio(a: dict, b: dict) -> str:   # XLA's FLOPs per image of a / of b
    if not a["xla_flops_per_device"] or not b["xla_flops_per_device"]:
      return "n/a"
    return f"{(a['xla_flops_per_device'] / a['batch']) / (b['xla_flops_per_device'] / b['batch']):.2f}x"
  for n in counts:
    sgd, head, ada = (by[(v, n)] for v in VARIANTS)
    rep(f"   {n} device(s): head / SGD {head['images_per_s'] / sgd['images_per_s']:.2f}x "
        f"(MAC ratio {mac_ratio:.2f}x, XLA FLOPs ratio {flops_ratio(sgd, head)}), adaptive head (k={ada['k']}) / head "
        f"{ada['images_per_s'] / head['images_per_s']:.2f}x, adaptive head / SGD "
        f"{ada['images_per_s'] / sgd['images_per_s']:.2f}x")
  rep(f"load average {load_end[0]:.1f} at the end (1 min; {load_end[1]:.1f} over 5 min)")

  if args.out:
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    result = dict(command=command, jax=jax.__version__, backend=backend, device_kind=kind,
                  visible_devices=jax.device_count(), cpus=os.cpu_count(),
                  xla_flags=os.environ.get("XLA_FLAGS", ""), device_counts=counts,
                  skipped_device_counts=skipped, config=repo_paths.tree(cfg.flat()),
                  model=model.name, stage_names=list(model.stage_names), cut=cut,
                  adaptive_k_from_macs=k_macs, train_mac_ratio=mac_ratio,
                  steps=args.steps, rounds=args.rounds, warmup_steps=args.warmup_steps,
                  reference=ref_label, load_average_start=list(load_start),
                  load_average_end=list(load_end), rows=rows, printed=rep.lines)
    with open(out, "w") as f:
      json.dump(result, f, indent=1, default=str)
    txt = os.path.splitext(out)[0] + ".txt"
    with open(txt, "w") as f:
      f.write("\n".join(rep.lines) + "\n")
    print(f"(wrote {out} and {txt})", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
