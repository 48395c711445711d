"""Dry run of the paper's 21 configurations: build everything, run one train step.

For each row of `paper_configs.ROWS` (Tables 1-2):

1. the row's `python -m ldjax.run` command is parsed by ldjax's own parser
   into a `TrainConfig`, which must validate and equal the paper's settings;
2. the dataset is loaded by its TFDS name through `ldjax.data.load_dataset`
   under `tfds.testing.mock_data` (random images of the real shape and
   classes, so no download is needed);
3. the model is built at the row's real width (1.0, unless --width says
   otherwise) and input size, and its parameters and forward MACs counted;
4. a `ldjax.train.epoch.Trainer` is built by `ldjax.train.assembly.trainer_for`
   (this compiles the full model's evaluation step) and one epoch of exactly one
   step is run through `Trainer.run_epoch`, the loop's own code path: the head
   step is compiled for cut 0 and called once on one batch; then the test set is
   evaluated once.

The only departure from the paper's settings is the batch: 2 instead of 256
(and 2 mock examples per split), so that a full-width ResNet-152 at 160 px
fits a CPU; compile time hardly depends on the batch, step time does.

  python experiments/dry_run.py [--rows vgg11-mnist,...] [--width W] [--batch 2] [--out FILE.json]

Prints one line per row (stages, parameters, MACs, loss, compile and step
seconds) and writes all results as JSON to --out. Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (os.path.dirname(HERE), HERE) if p not in sys.path]

import jax  # noqa: E402
import numpy as np  # noqa: E402

import paper_configs  # noqa: E402
import repo_paths  # noqa: E402
from ldjax import run  # noqa: E402
from ldjax.data.datasets import load_dataset  # noqa: E402
from ldjax.errors import TrainingDiverged  # noqa: E402
from ldjax.models import build_model, count_params  # noqa: E402
from ldjax.strategy import Strategy  # noqa: E402
from ldjax.train.assembly import trainer_for  # noqa: E402
from ldjax.train.progress import progress_bar  # noqa: E402

DEFAULT_BATCH = 2


def config_for_row(row: dict):
  """The Config and strategies that `python -m ldjax.run` builds from the row's command."""
  args = run.build_parser().parse_args(paper_configs.ldjax_args(row))
  return run.config_from_args(args), [
      s.value for s in Strategy.parse_list(run.strategy_from_args(args))]


def config_mismatches(cfg, row: dict) -> list[str]:
  """Settings of `cfg` (by flat name) that differ from the row's (the paper's)."""
  flat = cfg.flat()
  return [f"{k}={flat[k]!r} (paper: {v!r})" for k, v in row["settings"].items()
          if flat[k] != v]


def dry_run_row(row: dict, *, width: float | None = None, batch: int = DEFAULT_BATCH,
                seed: int = 0) -> dict:
  """Builds the row's config, mock data, model and Trainer, runs one step; returns a result dict.

  Exceptions propagate (the CLI records them per row); a non-finite loss is
  reported in the result, not raised.
  """
  import tensorflow_datasets as tfds  # Lazy: ~1 s to import.
  t_row = time.perf_counter()
  cfg, strategies = config_for_row(row)
  cfg.check_strategies(strategies)
  mismatches = config_mismatches(cfg, row)

  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as data_dir, tfds.testing.mock_data(num_examples=batch):
    data = load_dataset(cfg.data.name, data_dir=data_dir)
  load_s = time.perf_counter() - t0
  if data.image_shape != tuple(row["image_shape"]) or data.num_classes != row["num_classes"]:
    mismatches.append(f"data {data.image_shape} x {data.num_classes} classes "
                      f"(paper: {tuple(row['image_shape'])} x {row['num_classes']})")

  # The paper's run, but with a CPU-sized batch (and width, if asked).
  small = cfg.replace(width=cfg.model.width if width is None else width,
                      batch_size=batch, eval_batch_size=batch, seed=seed)
  small.check_data(len(data.x_train))
  model = build_model(small.model.name, data.image_shape, data.num_classes,
                      width=small.model.width, batch_norm=small.model.batch_norm)
  variables = model.init(jax.random.key(small.run.seed), data.image_shape)

  t0 = time.perf_counter()
  trainer = trainer_for(model, data, small, "drop", variables, run_dir=None)
  trainer_s = time.perf_counter() - t0
  macs = trainer.programs.macs   # costs.stage_macs, counted for the programs
  if trainer.steps_per_epoch != 1:
    raise AssertionError(f"expected one step per epoch, got {trainer.steps_per_epoch}")
  loss, error = math.nan, None
  try:
    with progress_bar(1, row["id"], enabled=False) as bar:
      out = trainer.run_epoch(0, bar)
    loss = out.loss
    trainer.score_and_decide(out.scores, 0)
    ev = trainer.evaluate()
  except TrainingDiverged as e:   # the loop's own check of the loss
    out, ev, error = None, None, str(e)
  return {
      "id": row["id"], "network": row["network"], "dataset": row["tfds"],
      "model": model.name, "width": small.model.width, "batch": batch,
      "image_shape": list(data.image_shape), "num_classes": data.num_classes,
      "stages": model.num_stages, "conv_stages": model.num_conv,
      "params": count_params(variables), "forward_macs": int(sum(macs)),
      "paper_table3_forward_mmac": row["paper"]["table3_forward_mmac"]["sgd"],
      "config_ok": not mismatches, "config_mismatches": mismatches,
      "loss": loss, "loss_finite": bool(np.isfinite(loss)), "error": error,
      "test_loss_finite": None if ev is None else bool(np.isfinite(ev["test_loss"])),
      "load_s": load_s,
      "eval_compile_s": trainer.evaluator.eval_fn.seconds,
      "trainer_s": trainer_s,
      "step_compile_s": None if out is None else out.times.compile_s,
      "step_s": None if out is None else out.times.train_s,
      "xla_step_flops": None if trainer.step_fn is None else trainer.step_fn.flops,
      "total_s": time.perf_counter() - t_row,
  }


HEADER = (f"{'row':<21} {'model':<10} {'stages':>9} {'params':>12} {'fwd GMAC':>9} "
          f"{'loss':>8} {'ok':>3} {'eval cmp s':>10} {'step cmp s':>10} {'step s':>7} "
          f"{'total s':>8}")


def format_result(r: dict) -> str:
  if "error_type" in r:
    return f"{r['id']:<21} FAILED: {r['error_type']}: {r['error']}"
  ok = r["config_ok"] and r["loss_finite"] and r["test_loss_finite"]
  step_c = "-" if r["step_compile_s"] is None else f"{r['step_compile_s']:.1f}"
  step = "-" if r["step_s"] is None else f"{r['step_s']:.3f}"
  return (f"{r['id']:<21} {r['model']:<10} {r['conv_stages']:>4}+{r['stages'] - r['conv_stages']:<4} "
          f"{r['params']:>12,} {r['forward_macs'] / 1e9:>9.3f} {r['loss']:>8.4f} "
          f"{'yes' if ok else 'NO':>3} {r['eval_compile_s']:>10.1f} {step_c:>10} {step:>7} "
          f"{r['total_s']:>8.1f}")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python experiments/dry_run.py",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", default=None,
                 help="comma list of row ids (default: all 21; see paper_configs.py list)")
  p.add_argument("--width", type=float, default=None,
                 help="override the rows' width (default: the paper's 1.0)")
  p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                 help=f"batch of the one step (default {DEFAULT_BATCH}; the paper uses 256)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)   # mock_data's metadata warnings
  try:
    rows = ([paper_configs.get_row(r.strip()) for r in args.rows.split(",") if r.strip()]
            if args.rows else paper_configs.ROWS)
  except KeyError as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  width = "the paper's width 1.0" if args.width is None else f"width {args.width:g}"
  print(f"Dry run of {len(rows)} paper configuration(s): TFDS mock data (random images of the "
        f"real shape, {args.batch} per split), {width}, ONE train step with batch "
        f"{args.batch} instead of the paper's 256, through ldjax.train.epoch.Trainer.run_epoch.\n"
        f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}); stages = conv+dense; fwd GMAC per example; "
        "eval cmp = compiling the full model's test step (building the Trainer).", flush=True)
  print(HEADER + "\n" + "-" * len(HEADER), flush=True)
  results, t_all = [], time.perf_counter()
  for row in rows:
    try:
      r = dry_run_row(row, width=args.width, batch=args.batch)
    except Exception as e:  # pylint: disable=broad-except
      # One broken row must not hide the state of the others.
      r = {"id": row["id"], "error_type": type(e).__name__, "error": str(e).splitlines()[0]
           if str(e) else "", "traceback": traceback.format_exc()}
    results.append(r)
    print(format_result(r), flush=True)
    jax.clear_caches()   # keep the 21 rows' compiled executables from piling up
  total = time.perf_counter() - t_all
  failed = [r["id"] for r in results if "error_type" in r or not r["config_ok"]
            or not r["loss_finite"] or not r["test_loss_finite"]]
  done = [r for r in results if "error_type" not in r]
  print("-" * len(HEADER))
  if done:
    slow = max(done, key=lambda r: r["step_compile_s"] or 0)
    print(f"compile of the train step: median {np.median([r['step_compile_s'] or 0 for r in done]):.1f} s, "
          f"max {slow['step_compile_s']:.1f} s ({slow['id']}); one step: median "
          f"{np.median([r['step_s'] or 0 for r in done]):.3f} s, max "
          f"{max(r['step_s'] or 0 for r in done):.3f} s")
  print(f"{len(results) - len(failed)}/{len(results)} rows OK in {total:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
  if args.out:
    report = {"what": "dry run of the paper configurations (tfds mock data, one train step)",
              "command": repo_paths.command(["python", "experiments/dry_run.py",
                                             *(sys.argv[1:] if argv is None else argv)]),
              "batch": args.batch, "width": args.width, "paper_batch": paper_configs.BATCH_SIZE,
              "jax": jax.__version__, "backend": jax.default_backend(),
              "cpus": os.cpu_count(), "machine": platform.machine(),
              "total_s": total, "failed": failed, "rows": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
