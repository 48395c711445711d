"""Command line: train with SGD, Freeze or Learn & Drop, or compare them side by side.

  python -m ldjax.run                                    # sgd,drop on the embedded data
  python -m ldjax.run --dataset idx:/usr/share/datasets/fashion-mnist \\
      --model vgg11 --width 0.25 --strategy sgd,freeze,drop --workdir runs/fm

Settings start from the dataset's preset (the paper's protocol, Section 4.2,
or a CPU-sized default for the embedded data); every flag overrides it. A
thin layer over `ldjax.train.compare.run_strategies`: bad input is reported in one
line with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from ldjax import cli
from ldjax.errors import DISK_FULL, CheckpointError, Interrupted, TrainingDiverged, UsageError
from ldjax.data import folder as image_folder, image_cache
from ldjax.jsonio import read_json
from ldjax.models.zoo import MODEL_NAMES
from ldjax.runs import cluster, compile_cache
from ldjax.runs.checkpoint import mount_point
from ldjax.runs.config import (CUT_RULES, DECISION_RULES, OPTIMIZERS, PRECISIONS, RECIPES,
                               SCHEDULES, TrainConfig, preset_for)
from ldjax.runs.workdir import ensure_writable
from ldjax.strategy import NAMES as STRATEGIES, Strategy
from ldjax.train import compare, sharding
from ldjax.train.continuation import run_path_for, stream_chunks

DEFAULT_STRATEGIES = "sgd,drop"


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m ldjax.run", description=__doc__.split("\n\n")[0],
      epilog="Unset settings come from the dataset's preset (see README).",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  a = p.add_argument
  a("--strategy", default=DEFAULT_STRATEGIES,
    help=f"one of {', '.join(STRATEGIES)}, or a comma list to run several from the same "
         "initial weights and write a comparison table (default: sgd,drop)")
  a("--dataset", default=None,
    help="'embedded' (Fashion-MNIST subset shipped with ldjax), a TFDS name (mnist, "
         "fashion_mnist, cifar10, imagenette/160px-v2), 'idx:DIR', 'npz:FILE' or 'folder:DIR' "
         "(your images, one subfolder per class: DIR/<class>/... or DIR/train/<class>/... "
         "and DIR/test/<class>/...; see --image-size) (default: embedded)")
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
    help="with --schedule step: divide the learning rate by 10 from this epoch on "
         "(preset if unset)")
  a("--momentum", type=float, default=None,
    help="momentum of sgd and nesterov (default 0.9; adamw uses betas 0.9/0.999)")
  a("--recipe", default="paper",
    help=f"training recipe under the flags: {', '.join(RECIPES)}. paper: the paper's protocol "
         "(the dataset's preset); strong: nesterov, lr 0.05, weight decay 5e-4, cosine schedule "
         "after a 1-epoch lr warm-up, label smoothing 0.1 (default: paper)")
  a("--optimizer", default=None,
    help=f"one of {', '.join(OPTIMIZERS)} (default: sgd, the paper's)")
  a("--weight-decay", type=float, default=None,
    help="weight decay of conv and dense kernels (not biases or BatchNorm); coupled (L2 "
         "in the gradient) for sgd/nesterov, decoupled for adamw (default 0)")
  a("--schedule", default=None,
    help=f"learning-rate schedule by global step: {', '.join(SCHEDULES)} (default: step if "
         "--lr-decay-epoch is set, else constant)")
  a("--warmup-lr-epochs", type=int, default=None, metavar="E",
    help="linear learning-rate warm-up over the first E epochs (onecycle: its rise); not "
         "the Learn & Drop --warmup (default 0)")
  a("--label-smoothing", type=float, default=None,
    help="label smoothing of the training loss, in [0, 1) (default 0)")
  a("--augment", default=None, metavar="NAME",
    help="training augmentation: none, flip (horizontal), crop (pad, crop back), flip,crop "
         "(default: flip,crop for cifar10 and imagenette, none for the others). After a drop "
         "the store holds the views: flip stays exact, crop becomes a window of the padded "
         "image's stored map (see README)")
  a("--crop-pad", type=int, default=None, metavar="P",
    help="pixels of zero padding of the crop (default 4 at 32x32, 2 at 28x28)")
  a("--cut-rule", default=None, choices=CUT_RULES,
    help="reading of Eq. 4: sign-change (the formula: stages up to the first P' > 0 followed "
         "by P' < 0; default) or max-prefix (the text: the leading run of maximum sum)")
  a("--crop-store", default=None, metavar="HOW",
    help="how a feature store serves --augment crop after a drop: views (exact: each image "
         "has --crop-views fixed views, a crop and a flip each, stored once; Freeze and Drop "
         "pick one per epoch; default) or window (approximate: a window of the padded "
         "image's stored map, offset rounded to the map's stride)")
  a("--crop-views", type=int, default=None, metavar="K",
    help="exact views per image with --crop-store views (default 4); the store holds K "
         "maps per image")
  a("--decision-rule", default=None, metavar="RULE",
    help=f"drop decision after the warm-up: {', '.join(DECISION_RULES)}. paper: Eqs. 3-4 "
         "and the median rule on one epoch's scores (default); stable: the leading "
         "stages whose P' of the two-epoch mean is at least 1, after the lr warm-up, and "
         "no drop that does not pay for its extraction (flips half as often under "
         "rounding, drops less; see README)")
  a("--budget", type=float, default=None, metavar="B",
    help="train each strategy to a compute budget of B reference epochs (B times the "
         "cost of one epoch of the whole model, from --cost-table) instead of --epochs; "
         "the learning-rate schedule follows the fraction of the budget spent and ends "
         "with it, so cheaper epochs buy more of them (the fair comparison of No Train No "
         "Gain)")
  a("--cost-table", default=None, metavar="macs|measure|FILE",
    help="the costs --budget charges: macs (training multiply-accumulates, deterministic; "
         "default), measure (median step times measured once at the start, interleaved, "
         "shared by the strategies) or a JSON file written by a run (cost_table.json)")
  a("--val-size", type=int, default=None, metavar="N",
    help="hold N training images out (a fixed choice, the same for every seed) as a "
         "validation split: evaluated every --eval-every epochs and logged as val_accuracy "
         "(what the figures use); the test set is then evaluated after the last epoch only")
  a("--test-every-epoch", action="store_true",
    help="with --val-size: evaluate the test set whenever the validation split is, too")
  a("--precision", default=None, choices=PRECISIONS,
    help="of convolutions and dense layers: float32 (default) or bfloat16 (weights, "
         "optimizer state, BatchNorm statistics, gradients and scores stay float32)")
  a("--seed", type=int, default=0, help="seed of the initial weights, data order and dropout (default: 0)")
  a("--feature-dtype", choices=("float32", "bfloat16"), default=None,
    help="dtype of the cached feature maps (float32; bfloat16 halves their bytes)")
  a("--feature-memory-gb", type=float, default=None,
    help="feature stores up to this many GB (4) stay in host memory; larger ones are "
         "memory-mapped .npy files in the work directory. Drop also caches the dropped "
         "stages' test-set outputs (float32) within what an in-memory store leaves; "
         "without room it evaluates the whole model")
  a("--eval-batch-size", type=int, default=None, help="batch size of test evaluation (1000; 250 for the embedded data)")
  a("--eval-every", type=int, default=None, metavar="N",
    help="evaluate on the test set every N epochs and after the last (default 1: every "
         "epoch, which the accuracy-per-epoch figure shows; evaluation is not part of T)")
  a("--init-from", default=None, metavar="RUN_DIR|FILE.safetensors",
    help="start from these weights: an ldjax run's (its weights.safetensors) or "
         "torchvision's / timm's ResNet and VGG state dicts saved as .safetensors; a "
         "classifier for another number of classes is re-initialised (see --keep-classifier); "
         "Learn & Drop's warm-up and decisions run as usual")
  a("--keep-classifier", action="store_true",
    help="with --init-from or --continue-from: refuse weights whose classifier has another "
         "number of classes instead of re-initialising it")
  a("--continue-from", default=None, metavar="RUN_DIR",
    help="train a finished run further on --dataset: its final weights, and for freeze/drop "
         "its dropped stages stay dropped (their features of the new data are computed once, "
         "then only the head trains); model, width and batch norm default to that run's; "
         "a comparison directory continues each strategy from its own run")
  a("--data-schedule", default=None, metavar="DATA,DATA,...",
    help="data that arrives in chunks: train on each dataset (as for --dataset; ';' separates "
         "them if a path has commas) in order, --epochs epochs each, each chunk continuing the "
         "previous chunk's run in WORKDIR/chunk-K (its dropped stages stay dropped, their "
         "features of each new chunk computed once); each chunk is tested on its own test set")
  # folder:DIR data (ldjax.data.folder) and the metrics files
  a("--image-size", default=None, metavar="S|H,W",
    help="folder: bring every image to H x W (S: S x S): scaled to cover it, aspect kept, "
         "and centre-cropped, as torchvision's Resize + CenterCrop (predict does the same); "
         "an image that would be enlarged more than 2x is refused (default: the training "
         "images' median shorter side rounded to a multiple of 4, at most 224 and at most "
         "twice the smallest side)")
  a("--channels", type=int, default=None, choices=(1, 3),
    help="folder: 1 (grey) or 3 (RGB) channels (default: 3 unless every image is grey)")
  a("--test-fraction", type=float, default=None, metavar="F",
    help="folder without test/ or val/: hold this fraction of each class out as the test "
         f"set, a fixed choice by file name (default: {image_folder.DEFAULT_TEST_FRACTION})")
  a("--skip-bad-images", action="store_true",
    help="folder: leave out images that cannot be decoded or are too small, and count "
         "them, instead of stopping with an error naming the first")
  a("--image-cache", default=None, metavar="DIR",
    help="folder: where the decoded images are kept as memory-mapped .npy files, decoded "
         "again only when the folder's files or these settings change (default: "
         f"${image_cache.ENV}, else ~/.cache/ldjax/images)")
  a("--tensorboard", action="store_true",
    help="also write TensorBoard event files into each run's directory (open them with "
         "'tensorboard --logdir WORKDIR'); metrics.csv is always written")
  a("--workdir", default=None,
    help="directory for config.json, metrics.jsonl, summary.json (one sub-directory "
         "per strategy when several); default runs/<dataset>-<model>-<time>")
  a("--overwrite", action="store_true", help="allow writing into a work directory that holds a run")
  a("--resume", action="store_true",
    help="continue the run in --workdir from its last checkpoint (same settings)")
  a("--no-progress", action="store_true", help="hide the progress bars")
  a("--drop-at", default=None, metavar="E:CUT,...",
    help="force Freeze's and Drop's decisions: after 1-based epoch E drop the stages before "
         "CUT (e.g. 2:3,4:5), instead of Eq. 4 and the median rule; scores are still logged. "
         "For ablations at equal decisions (another precision, recipe or device count)")
  a("--adaptive-batch", action="store_true",
    help="after a drop, grow the batch in proportion to how much cheaper the head's "
         "training step is per example (k = whole model's / head's training MACs, an "
         "integer), capped by --max-batch-size and the device's memory; the lr scales by "
         "--adaptive-lr; Freeze uses Drop's batch; metrics.jsonl records it per epoch")
  a("--max-batch-size", type=int, default=None, metavar="N",
    help="with --adaptive-batch: the largest batch (default: 8 x --batch-size)")
  a("--adaptive-lr", default=None, metavar="RULE",
    help="with --adaptive-batch: how the lr scales with the batch's multiplier k: linear "
         "(k x lr, default) or sqrt (sqrt(k) x lr)")
  a("--devices", type=int, default=None, metavar="N",
    help="data parallelism over the first N visible devices (default: all): each batch is "
         "split over them, weights and scores replicated; --batch-size must divide by N")
  a("--data-shards", type=int, default=None, metavar="N",
    help="split the training set into N contiguous blocks: each epoch shuffles within "
         "blocks and every batch takes batch/N examples from each, so that each process "
         "reads and stores only its own blocks (default: one per process; give a run of "
         "fewer processes the same N to reproduce a run of N processes)")
  a("--coordinator", default=None, metavar="HOST:PORT|auto",
    help="run as one process of several (hosts): process 0's address, the same in every "
         "process, with --num-processes and --process-id; 'auto' takes all three from a "
         "cluster manager JAX detects (SLURM, Open MPI, ...). Every process runs the same "
         "command; process 0 writes the work directory's files (README: Several hosts)")
  a("--num-processes", type=int, default=None, metavar="N",
    help="with --coordinator HOST:PORT: how many processes the run has")
  a("--process-id", type=int, default=None, metavar="I",
    help="with --coordinator HOST:PORT: this process's index, 0 to N-1 (0 writes the files)")
  a("--compilation-cache", default=None, metavar="DIR",
    help="keep compiled XLA programs in DIR for later runs and strategies, which then load "
         f"them instead of compiling (default: ${compile_cache.ENV}, else "
         "~/.cache/ldjax/xla/<cpu>); 'off' compiles everything anew")
  return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  if args.recipe not in RECIPES:
    raise UsageError(f"unknown --recipe {args.recipe!r}; choose from {', '.join(RECIPES)}")
  dataset = args.dataset or "embedded"
  if args.data_schedule is not None:   # the first chunk's preset
    if args.dataset is not None:
      raise UsageError("--data-schedule lists the datasets; drop --dataset")
    dataset = stream_chunks(args.data_schedule)[0]
  settings = dict(preset_for(dataset), dataset=dataset) | RECIPES[args.recipe]
  flags = {"data_dir": args.data_dir, "train_size": args.train_size,
           "test_size": args.test_size, "model": args.model, "width": args.width,
           "epochs": args.epochs, "warmup": args.warmup, "batch_size": args.batch_size,
           "lr": args.lr, "lr_decay_epoch": args.lr_decay_epoch, "momentum": args.momentum,
           "seed": args.seed, "feature_dtype": args.feature_dtype,
           "feature_memory_gb": args.feature_memory_gb, "eval_batch_size": args.eval_batch_size,
           "eval_every": args.eval_every, "optimizer": args.optimizer,
           "weight_decay": args.weight_decay, "schedule": args.schedule,
           "warmup_lr_epochs": args.warmup_lr_epochs, "label_smoothing": args.label_smoothing,
           "augment": args.augment, "crop_pad": args.crop_pad, "cut_rule": args.cut_rule,
           "crop_store": args.crop_store, "crop_views": args.crop_views,
           "decision_rule": args.decision_rule, "budget": args.budget,
           "cost_table": args.cost_table,
           "val_size": args.val_size, "precision": args.precision, "devices": args.devices,
           "data_shards": args.data_shards,
           "init_from": args.init_from, "continue_from": args.continue_from,
           "max_batch_size": args.max_batch_size, "adaptive_lr": args.adaptive_lr,
           "drop_at": args.drop_at}
  settings["batch_norm"] = not args.no_batch_norm
  if args.continue_from is not None:   # the architecture of the run it continues
    settings |= continued_architecture(args.continue_from, args.strategy)
  settings.update({k: v for k, v in flags.items() if v is not None})
  settings["test_every_epoch"] = args.test_every_epoch
  settings["keep_classifier"] = args.keep_classifier
  settings["adaptive_batch"] = args.adaptive_batch
  folder = {"image_size": args.image_size and image_folder.parse_image_size(args.image_size),
            "channels": args.channels, "test_fraction": args.test_fraction,
            "image_cache": args.image_cache}
  settings.update({k: v for k, v in folder.items() if v is not None})
  settings["skip_bad_images"] = args.skip_bad_images
  settings["tensorboard"] = args.tensorboard
  return TrainConfig(**settings)


def continued_architecture(path: str, strategy: str) -> dict:
  """model, width and batch_norm of the run --continue-from names (for --strategy's
  first strategy); its other settings are the new run's."""
  first = Strategy.parse_list(strategy)[0]
  config = read_json(run_path_for(path, first) / "config.json")
  return {k: config[k] for k in ("model", "width", "batch_norm") if k in config}


def default_workdir(cfg: TrainConfig) -> Path:
  tag = cfg.dataset.replace(":", "-").replace("/", "_").strip("_-")[-40:]
  return Path("runs") / f"{tag}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_workdir(path: Path, overwrite: bool, resume: bool) -> None:
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {str(path)!r} is a file; give a directory")
  if resume:
    if not path.is_dir():
      raise UsageError(f"--resume needs an existing --workdir; {str(path)!r} does not exist")
    return
  if path.is_dir() and any(path.rglob("metrics.jsonl")) and not overwrite:
    raise UsageError(f"work directory {str(path)!r} already holds a run; pass --resume to "
                     "continue it, --overwrite to replace it, or choose another --workdir")


def clear_run(path: Path) -> None:
  """Removes what a previous run wrote into `path` (for --overwrite)."""
  for child in (*STRATEGIES, "checkpoints", "features"):
    shutil.rmtree(path / child, ignore_errors=True)
  for events in path.glob("events.out.tfevents.*"):
    events.unlink()
  for name in ("config.json", "metrics.jsonl", "metrics.csv", "summary.json", "comparison.json",
               "comparison.md", "report.md", "report.json", "aapd.png", "scores.png",
               "accuracy_time.png", "params_macs.png"):
    (path / name).unlink(missing_ok=True)


@contextlib.contextmanager
def stop_on_sigint():
  """While active, Ctrl-C asks the run to stop at the next step instead of raising
  KeyboardInterrupt anywhere (a second Ctrl-C does raise it)."""
  flag = {"stop": False}

  def handler(signum, frame):
    if flag["stop"]:
      raise KeyboardInterrupt
    flag["stop"] = True
  try:
    previous = signal.signal(signal.SIGINT, handler)
  except ValueError:   # not the main thread: leave signals alone
    yield lambda: False
    return
  try:
    yield lambda: flag["stop"]
  finally:
    signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:   # --help (0), or a bad command line (2, one line printed)
    return int(e.code or 0)
  with contextlib.ExitStack() as outputs:
    return _main(args, argv, outputs)


def _main(args: argparse.Namespace, argv: list[str] | None, outputs: contextlib.ExitStack) -> int:
  created = None
  try:
    cluster.initialize(args.coordinator, args.num_processes, args.process_id)
    if not cluster.is_primary():   # process 0 reports; the others would repeat it
      outputs.enter_context(contextlib.redirect_stdout(io.StringIO()))
      args.no_progress = True
    if cluster.processes() > 1 and not args.workdir:
      raise UsageError("with several processes give --workdir, the same directory in each "
                       "(each process would pick its own default)")
    strategies = Strategy.parse_list(args.strategy)
    cfg = config_from_args(args)
    cfg.validate()
    cfg = sharding.resolve(cfg)   # the devices it uses, as config.json records them
    cfg.validate_strategies(strategies)
    if args.resume and not args.workdir:
      raise UsageError("--resume needs the --workdir of the run to continue")
    if args.resume and args.init_from:
      raise UsageError("--resume continues from the run's checkpoint; drop --init-from")
    chunks = None if args.data_schedule is None else stream_chunks(args.data_schedule)
    workdir = Path(args.workdir) if args.workdir else default_workdir(cfg)
    check_workdir(workdir, args.overwrite, args.resume)
    created = None if workdir.exists() or not cluster.is_primary() else workdir
    cluster.barrier("workdir checked")   # by every process, before any creates it
    ensure_writable(workdir)   # before the slow part: loading data, building the model
    cache = compile_cache.resolve(args.compilation_cache)
    # JAX's cache setting is process-wide: `using` puts it back as it was on return.
    with compile_cache.using(cache):
      data, model = compare.prepare(cfg, strategies, progress=not args.no_progress, log=print)
      if args.overwrite and not args.resume and cluster.is_primary():
        clear_run(workdir)
      cluster.barrier("workdir cleared")
      print(f"ldjax: {model.name} (width {cfg.width}) on {data.name}: "
            f"{data.num_train} train / {len(data.x_test)} test images "
            f"{'x'.join(map(str, data.image_shape))}; strategies {','.join(strategies)}; "
            + (f"{cfg.epochs} epochs" if cfg.budget is None else
               f"a budget of {cfg.budget:g} reference epochs ({cfg.cost_table} costs)")
            + f", warm-up {cfg.warmup}; work directory {workdir}; "
            f"compilation cache {cache or 'off'}", flush=True)
      with stop_on_sigint() as should_stop:
        if chunks is None:
          summaries = compare.run_strategies(cfg, strategies, workdir, data=data, model=model,
                                             progress=not args.no_progress,
                                             resume=args.resume, should_stop=should_stop)
        else:
          summaries = compare.run_stream(cfg, strategies, chunks, workdir, first=(data, model),
                                         progress=not args.no_progress, resume=args.resume,
                                         should_stop=should_stop)[-1]
          workdir = workdir / f"chunk-{len(chunks)}"
  except UsageError as e:
    if created is not None and created.exists():
      shutil.rmtree(created, ignore_errors=True)
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:   # e.g. while images decode, or a second Ctrl-C in training
    if created is not None and created.is_dir() and not any(created.iterdir()):
      created.rmdir()   # only an empty work directory this run made; a run's files stay
    print("\ninterrupted", file=sys.stderr)
    return 130
  except Interrupted:
    again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    if not args.workdir:
      again += ["--workdir", str(workdir)]
    print(f"\ninterrupted: the last complete epoch is saved in {workdir}; resume with:\n"
          f"  python -m ldjax.run {shlex.join(again + ['--resume'])}", file=sys.stderr)
    return 130
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except CheckpointError as e:   # the last complete checkpoint is kept: --resume continues
    print(e, file=sys.stderr)
    return 1
  except OSError as e:           # another write (metrics, summary) on a full disk
    if e.errno not in DISK_FULL:
      raise
    where = mount_point(e.filename or args.workdir or ".")
    what = f"writing {e.filename} failed" if e.filename else "a write failed"
    print(f"no space left on {where}: {what}; free space and rerun with --resume",
          file=sys.stderr)
    return 1
  if not cluster.is_primary():   # it wrote nothing to report (and prints nothing)
    return 0
  if len(strategies) > 1:
    print((workdir / "comparison.md").read_text())
  else:
    s = summaries[strategies[0]]
    print(f"test accuracy {s['test_accuracy']:.2f}%  training time {s['train_time_s']:.1f} s")
  print(f"results in {workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
