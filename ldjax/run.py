"""Command line: train with SGD, Freeze or Learn & Drop, or compare them side by side.

  python -m ldjax.run                                    # sgd,drop on the embedded data
  python -m ldjax.run --dataset idx:/usr/share/datasets/fashion-mnist \\
      --model vgg11 --width 0.25 --strategy sgd,freeze,drop --workdir runs/fm

Settings start from the dataset's preset (the paper's protocol, Section 4.2,
or a CPU-sized default for the embedded data); every flag overrides it. A
thin layer over `ldjax.compare.run_strategies`: bad input is reported in one
line with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

from ldjax import compare
from ldjax.config import STRATEGIES, TrainConfig, preset_for
from ldjax.errors import UsageError
from ldjax.models import MODEL_NAMES

DEFAULT_STRATEGIES = "sgd,drop"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m ldjax.run", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  a = p.add_argument
  a("--strategy", default=DEFAULT_STRATEGIES,
    help=f"one of {', '.join(STRATEGIES)}, or a comma list to run several from the same "
         "initial weights and write a comparison table")
  a("--dataset", default="embedded",
    help="'embedded' (Fashion-MNIST subset shipped with ldjax), a TFDS name (mnist, "
         "fashion_mnist, cifar10, imagenette/160px-v2), 'idx:DIR' or 'npz:FILE'")
  a("--data-dir", default=None, help="TFDS data directory (default: TFDS's own)")
  a("--train-size", type=int, default=None, help="use a deterministic subset of N training images")
  a("--test-size", type=int, default=None, help="use a deterministic subset of N test images")
  a("--model", default=None, help=f"one of {', '.join(MODEL_NAMES)} (preset if unset)")
  a("--width", type=float, default=None, help="channel width multiplier (preset if unset)")
  a("--no-batch-norm", action="store_true", help="VGG without BatchNorm (the paper advises BN)")
  a("--epochs", type=int, default=None, help="total epochs, warm-up included (preset if unset)")
  a("--warmup", type=int, default=None,
    help="warm-up epochs that train the whole model before any decision (preset if unset)")
  a("--batch-size", type=int, default=None, help="training batch size (preset: 256)")
  a("--lr", type=float, default=None, help="learning rate (preset if unset)")
  a("--lr-decay-epoch", type=int, default=None,
    help="divide the learning rate by 10 from this epoch on (preset if unset)")
  a("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
  a("--seed", type=int, default=0, help="seed of the initial weights, data order and dropout")
  a("--feature-dtype", choices=("float32", "bfloat16"), default="float32",
    help="dtype of the cached feature maps (bfloat16 halves their bytes)")
  a("--feature-memory-gb", type=float, default=4.0,
    help="feature stores up to this size stay in host memory; larger ones are "
         "memory-mapped .npy files in the work directory")
  a("--eval-batch-size", type=int, default=1000, help="batch size of test evaluation")
  a("--workdir", default=None,
    help="directory for config.json, metrics.jsonl, summary.json (one sub-directory "
         "per strategy when several); default runs/<dataset>-<model>-<time>")
  a("--overwrite", action="store_true", help="allow writing into a work directory that holds a run")
  a("--no-progress", action="store_true", help="hide the progress bars")
  return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  settings = dict(preset_for(args.dataset), dataset=args.dataset)
  flags = {"data_dir": args.data_dir, "train_size": args.train_size,
           "test_size": args.test_size, "model": args.model, "width": args.width,
           "epochs": args.epochs, "warmup": args.warmup, "batch_size": args.batch_size,
           "lr": args.lr, "lr_decay_epoch": args.lr_decay_epoch, "momentum": args.momentum,
           "seed": args.seed, "feature_dtype": args.feature_dtype,
           "feature_memory_gb": args.feature_memory_gb, "eval_batch_size": args.eval_batch_size}
  settings.update({k: v for k, v in flags.items() if v is not None})
  settings["batch_norm"] = not args.no_batch_norm
  return TrainConfig(**settings)


def parse_strategies(text: str) -> list[str]:
  strategies = [s.strip() for s in text.split(",") if s.strip()]
  if not strategies:
    raise UsageError("--strategy is empty; give one of sgd, freeze, drop or a comma list")
  if len(set(strategies)) != len(strategies):
    raise UsageError(f"--strategy lists a strategy twice: {text!r}")
  return strategies


def default_workdir(cfg: TrainConfig) -> Path:
  tag = cfg.dataset.replace(":", "-").replace("/", "_").strip("_-")[-40:]
  return Path("runs") / f"{tag}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_workdir(path: Path, overwrite: bool) -> None:
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {str(path)!r} is a file; give a directory")
  if path.is_dir() and any(path.rglob("summary.json")) and not overwrite:
    raise UsageError(f"work directory {str(path)!r} already holds a run; pass --overwrite "
                     "or choose another --workdir")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  created = None
  try:
    strategies = parse_strategies(args.strategy)
    cfg = config_from_args(args)
    cfg.validate()
    cfg.validate_strategies(strategies)
    data, model = compare.prepare(cfg, strategies)
    workdir = Path(args.workdir) if args.workdir else default_workdir(cfg)
    check_workdir(workdir, args.overwrite)
    created = None if workdir.exists() else workdir
    print(f"ldjax: {model.name} (width {cfg.width}) on {data.name}: "
          f"{len(data.x_train)} train / {len(data.x_test)} test images "
          f"{'x'.join(map(str, data.image_shape))}; strategies {','.join(strategies)}; "
          f"{cfg.epochs} epochs, warm-up {cfg.warmup}; work directory {workdir}", flush=True)
    summaries = compare.run_strategies(cfg, strategies, workdir, data=data, model=model,
                                       progress=not args.no_progress)
  except UsageError as e:
    if created is not None and created.exists():
      shutil.rmtree(created, ignore_errors=True)
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"interrupted; completed epochs are in {workdir}", file=sys.stderr)
    return 130
  if len(strategies) > 1:
    print((workdir / "comparison.md").read_text())
  else:
    s = summaries[strategies[0]]
    print(f"test accuracy {s['test_accuracy']:.2f}%  training time {s['train_time_s']:.1f} s")
  print(f"results in {workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
