"""Command line: show a built-in model's stages with their output shapes, params and MACs.

  python -m ldjax.summary resnet18 --input-shape 224,224,3 --num-classes 1000
  python -m ldjax.summary vgg16 --input-shape 32,32,3 --num-classes 10 --json
  python -m ldjax.summary resnet18 --input-shape 32,32,3 --num-classes 10 --device h100

The stages listed are exactly the units Learn & Drop can drop, so this is the
place to see what dropping the first n stages would save. Everything is
computed by abstract evaluation, so no weights are allocated. MACs are
forward conv + dense multiply-accumulates per example (see `ldjax.costs`).

With `--device`, it also prints the input-bandwidth model of the head's step
at each cut (`ldjax.models.bandwidth`): bytes read and FLOPs per step, their
ratio, and whether the device waits for a store on the host or on the device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from ldjax import cli
from ldjax.models import bandwidth
from ldjax.models.costs import StageCost, stage_costs
from ldjax.errors import UsageError
from ldjax.models.zoo import MODEL_NAMES, build_model


def parse_input_shape(text: str) -> tuple[int, int, int]:
  """'H,W,C' -> (H, W, C); raises UsageError with a one-line message otherwise."""
  parts = [p.strip() for p in text.split(",")]
  if len(parts) != 3:
    raise UsageError(f"--input-shape must be H,W,C (three integers, e.g. 32,32,3), got {text!r}")
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    raise UsageError(
        f"--input-shape must be H,W,C (three integers, e.g. 32,32,3), got {text!r}") from None
  if min(shape) <= 0:
    raise UsageError(f"--input-shape sizes must be positive, got {text!r}")
  return shape  # type: ignore[return-value]


def _human(n: int) -> str:
  """Compact size for the totals line, e.g. 1.81G; the table keeps exact numbers."""
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.2f}{unit}"
  return str(n)


def format_table(model_name: str, input_shape: Sequence[int], costs: Sequence[StageCost]) -> str:
  """The aligned text table plus totals."""
  header = ("#", "stage", "output shape", "params", "MACs")
  rows = [(str(c.index), c.name, "x".join(map(str, c.output_shape)), f"{c.params:,}",
           f"{c.macs:,}") for c in costs]
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  # Text columns left-aligned, numbers right-aligned so digits line up.
  align = ("<", "<", "<", ">", ">")

  def line(row):
    return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip()

  total_params = sum(c.params for c in costs)
  total_macs = sum(c.macs for c in costs)
  out = [f"{model_name} on {'x'.join(map(str, input_shape))} inputs: {len(costs)} stages",
         line(header), line(tuple("-" * w for w in widths))]
  out += [line(r) for r in rows]
  out.append(f"total params: {total_params:,} ({_human(total_params)})")
  out.append(f"total MACs:   {total_macs:,} ({_human(total_macs)}) per example, forward")
  return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m ldjax.summary",
      description="List a model's stages (the units Learn & Drop drops) with output shapes, "
                  "trainable parameters and forward MACs per example.")
  parser.add_argument("model", help=f"model name: one of {', '.join(MODEL_NAMES)} "
                                    "(a _bn suffix on VGG names is accepted)")
  parser.add_argument("--input-shape", required=True, metavar="H,W,C",
                      help="input image shape, e.g. 32,32,3; inputs of 128 px and more use "
                           "the ImageNet design of the model")
  parser.add_argument("--num-classes", type=int, required=True, metavar="K",
                      help="number of output classes (at least 2)")
  parser.add_argument("--width", type=float, default=1.0,
                      help="channel width multiplier (> 0; default 1.0)")
  parser.add_argument("--no-batch-norm", action="store_true",
                      help="VGG only: build the model without BatchNorm")
  parser.add_argument("--device", choices=sorted(bandwidth.DEVICES),
                      help="also print the input-bandwidth model of the head's step at each "
                           "cut on this device (its assumed peaks are printed with it)")
  parser.add_argument("--batch-size", type=int, default=256,
                      help="with --device: the step's batch (default 256)")
  parser.add_argument("--feature-dtype", choices=("float32", "bfloat16"), default="float32",
                      help="with --device: the store's dtype (default float32)")
  parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                      help="with --device: the step's compute precision (default float32)")
  parser.add_argument("--num-train", type=int, metavar="N",
                      help="with --device: training examples, to size the stores")
  parser.add_argument("--json", action="store_true",
                      help="print exactly one JSON object instead of the table")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (argparse errors exit 2 on their own)."""
  args = build_parser().parse_args(argv)
  try:
    input_shape = parse_input_shape(args.input_shape)
    # build_model only rejects width <= 0; nan and inf would crash deep inside it.
    if not math.isfinite(args.width):
      raise UsageError(f"--width must be a finite number > 0, got {args.width}")
    model = build_model(args.model, input_shape, args.num_classes, width=args.width,
                        batch_norm=not args.no_batch_norm)
    costs = stage_costs(model, input_shape)
    if args.batch_size < 1 or (args.num_train is not None and args.num_train < 1):
      raise UsageError("--batch-size and --num-train must be integers > 0")
    feeds = None if args.device is None else bandwidth.feeds(
        costs, input_shape, bandwidth.DEVICES[args.device], batch_size=args.batch_size,
        itemsize=2 if args.feature_dtype == "bfloat16" else 4, precision=args.precision,
        cuts=range(model.num_conv))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps({
        "model": model.name,
        "input_shape": list(input_shape),
        "num_classes": args.num_classes,
        "width": args.width,
        "total_params": sum(c.params for c in costs),
        "total_macs": sum(c.macs for c in costs),
        "stages": [{"index": c.index, "name": c.name, "output_shape": list(c.output_shape),
                    "params": c.params, "macs": c.macs} for c in costs],
    } | ({} if feeds is None else {"bandwidth": {
        "device": args.device, "batch_size": args.batch_size,
        "feature_dtype": args.feature_dtype, "precision": args.precision,
        "cuts": [f.to_json() for f in feeds]}})))
  else:
    print(format_table(model.name, input_shape, costs))
    if feeds is not None:
      print()
      print(bandwidth.format_feeds(model.name, costs, feeds, bandwidth.DEVICES[args.device],
                                   args.precision, args.num_train))
  return 0


if __name__ == "__main__":
  sys.exit(main())
