"""Command line: a trained model's logits on new inputs, in eval mode.

  python -m ldjax.predict --weights runs/fm/drop --input x.npy --output logits.npy
  python -m ldjax.predict --model resnet18 --weights resnet18.safetensors \\
      --input photos/ --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --output logits.npy

What the model is fed. ldjax's models do not normalize inside: training
reads uint8 images and normalizes them on the device, before the first
stage, as ``(x / 255 - mean) / std`` in float32 with the training set's
per-channel mean and std in [0, 1] units (`ldjax.train.steps.prepare_input`;
a run records them in config.json as ``input_mean`` / ``input_std``, the
embedded Fashion-MNIST data included). So:

- a float array (``.npy``, NHWC) is fed as is, cast to float32: it must
  already be normalized that way;
- a uint8 array, or images (a PNG / JPEG file, or a folder of them, read in
  sorted file-name order, as L or RGB by the channel count), are raw pixels
  and are normalized exactly as in training, with ``--mean`` / ``--std``, or
  else the weights' metadata, or else the run's config.json; images must
  have the model's H x W already (nothing is resized).

Model, width, BatchNorm, classes and input shape default to the weights'
ldjax metadata; torchvision / timm weights need ``--model`` (the classes
then come from the file's classifier, the width is 1 unless given). Bad input is one line and exit status 2,
and nothing is written; the logits, float32 [N, classes], are written to a
temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldjax import cli
from ldjax.errors import UsageError
from ldjax.jsonio import read_json
from ldjax.models.zoo import MODEL_NAMES, build_model
from ldjax.weights import decode_meta, init_from, read_metadata, weights_path
from ldjax.weights.files import read_shapes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The classifier's weight in each torch format: its first axis is the number of classes.
TORCH_CLASSIFIERS = ("fc.weight", "classifier.6.weight", "head.fc.weight")


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m ldjax.predict", description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="\n\n".join(__doc__.split("\n\n")[2:]))
  a = p.add_argument
  a("--weights", required=True, metavar="FILE_OR_RUN",
    help="a .safetensors file (ldjax's, or torchvision's / timm's ResNet or VGG), or a run's "
         "work directory (its weights.safetensors)")
  a("--strategy", default=None,
    help="with a comparison's work directory: the strategy whose weights to use")
  a("--input", required=True, metavar="X",
    help="an NHWC .npy array (float: fed as is; uint8: normalized), or a PNG / JPEG file or "
         "a folder of them (normalized)")
  a("--output", required=True, metavar="Y.npy", help="where the logits go (float32, N x classes)")
  a("--model", default=None, choices=[*MODEL_NAMES, *(f"{m}_bn" for m in MODEL_NAMES
                                                   if m.startswith("vgg"))],
    help="the architecture (default: the weights' metadata; needed for torch weights)")
  a("--width", type=float, default=None,
    help="channel width multiplier (default: the metadata's, else 1)")
  a("--no-batch-norm", action="store_true", help="VGG without BatchNorm (default: the metadata's)")
  a("--num-classes", type=int, default=None,
    help="classes of the classifier (default: the metadata's, or the torch file's classifier)")
  a("--image-size", default=None, metavar="H,W,C",
    help="the model's input shape (default: the metadata's, else the input's)")
  a("--mean", default=None, metavar="M,M,M",
    help="per-channel mean in [0, 1] units for uint8 inputs and images (default: the "
         "weights' metadata or the run's config.json)")
  a("--std", default=None, metavar="S,S,S", help="per-channel std, as --mean")
  a("--batch-size", type=int, default=64, help="inputs per forward pass (default: 64)")
  return p


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
  try:
    values = tuple(float(t) for t in text.split(","))
  except ValueError:
    raise UsageError(f"{flag} {text!r} is not comma-separated numbers") from None
  if not all(np.isfinite(values)):
    raise UsageError(f"{flag} {text!r} must be finite numbers")
  return values


def parse_shape(text: str) -> tuple[int, int, int]:
  try:
    shape = tuple(int(t) for t in text.replace("x", ",").split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) <= 0:
    raise UsageError(f"--image-size {text!r} must be H,W,C with positive sizes, e.g. 28,28,1")
  return shape


def read_npy(path: Path) -> np.ndarray:
  try:
    x = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise UsageError(f"--input {str(path)!r} does not exist") from None
  except (ValueError, OSError, EOFError) as e:
    raise UsageError(f"--input {path} is not a readable .npy array of numbers "
                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  if not isinstance(x, np.ndarray):
    raise UsageError(f"--input {path} is an .npz archive; give one .npy array")
  return x


def read_images(path: Path, channels: int) -> np.ndarray:
  """uint8 [N, H, W, C] of an image file or a folder's images (sorted by name)."""
  from PIL import Image, UnidentifiedImageError
  files = ([p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
           if path.is_dir() else [path])
  if not files:
    raise UsageError(f"--input {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
  if channels not in (1, 3):
    raise UsageError(f"images load as 1 (L) or 3 (RGB) channels, the model takes {channels}")
  arrays = []
  for f in files:
    try:
      with Image.open(f) as im:
        arrays.append(np.asarray(im.convert("L" if channels == 1 else "RGB"), np.uint8))
    except (UnidentifiedImageError, OSError) as e:
      raise UsageError(f"--input image {f} cannot be read ({e})") from None
    if arrays[-1].shape[:2] != arrays[0].shape[:2]:
      raise UsageError(f"--input image {f} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}, "
                       f"{files[0].name} {arrays[0].shape[1]}x{arrays[0].shape[0]}; resize "
                       "them to the model's size first")
  return np.stack([a.reshape(*a.shape[:2], channels) for a in arrays])


def read_input(path: Path, channels: int) -> np.ndarray:
  if not path.exists():
    raise UsageError(f"--input {str(path)!r} does not exist")
  if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
    return read_images(path, channels)
  x = read_npy(path)
  if x.ndim != 4:
    raise UsageError(f"--input {path} has shape {x.shape}; give NHWC images "
                     "(one image: x[None])")
  if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
    raise UsageError(f"--input {path} is {x.dtype}; give float32 (normalized) or uint8 pixels")
  return x


def normalization(args, meta: dict | None, weights_file: Path, channels: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of raw-pixel inputs: the flags', the metadata's, or the run's config.json."""
  mean = None if args.mean is None else parse_floats(args.mean, "--mean")
  std = None if args.std is None else parse_floats(args.std, "--std")
  for source in (meta or {}, run_config(weights_file)):
    if mean is None and source.get("input_mean") is not None:
      mean = tuple(source["input_mean"])
    if std is None and source.get("input_std") is not None:
      std = tuple(source["input_std"])
  if mean is None or std is None:
    raise UsageError("the input is raw pixels (uint8 or images) and the weights record no "
                     "input normalization; give --mean and --std, or a normalized float array")
  for flag, v in (("--mean", mean), ("--std", std)):
    if len(v) not in (1, channels):
      raise UsageError(f"{flag} has {len(v)} values, the images {channels} channels")
  if min(std) <= 0:
    raise UsageError(f"--std must be > 0, got {','.join(map(str, std))}")
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def run_config(weights_file: Path) -> dict:
  config = weights_file.parent / "config.json"
  try:
    return read_json(config) if config.is_file() else {}
  except UsageError:
    return {}


def torch_classes(weights_file: Path) -> int | None:
  shapes = read_shapes(weights_file)
  return next((shapes[n][0] for n in TORCH_CLASSIFIERS if n in shapes), None)


def predict(args) -> tuple[np.ndarray, str]:
  """The logits of `args.input`, and a line saying what ran; UsageError on bad input."""
  import jax
  from ldjax.models.staged import abstract_variables, apply_stages
  if args.batch_size <= 0:
    raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
  file = weights_path(args.weights, args.strategy)
  header = read_metadata(file)
  try:
    meta = decode_meta(header) or {}
  except ValueError:
    raise UsageError(f"{file} has a garbled ldjax metadata entry; save the weights again"
                     ) from None
  name = args.model or meta.get("model")
  if name is None:
    raise UsageError(f"{file} has no ldjax metadata; give the architecture with --model")
  batch_norm = not args.no_batch_norm and meta.get("batch_norm", True)
  if name.endswith("_bn"):
    batch_norm = True
  width = args.width if args.width is not None else float(meta.get("width", 1.0))
  shape = parse_shape(args.image_size) if args.image_size else (
      tuple(meta["image_shape"]) if meta.get("image_shape") else None)
  x = read_input(Path(args.input), shape[2] if shape else 3)
  shape = shape or tuple(x.shape[1:])
  if tuple(x.shape[1:]) != tuple(shape):
    raise UsageError(f"--input has {'x'.join(map(str, x.shape[1:]))} images, the model takes "
                     f"{'x'.join(map(str, shape))} (H x W x C)")
  classes = args.num_classes or meta.get("num_classes") or torch_classes(file) or 1000
  model = build_model(name, shape, classes, width=width, batch_norm=batch_norm)
  if x.dtype == np.uint8:
    mean, std = normalization(args, meta, file, shape[2])
    x = (x.astype(np.float32) / 255.0 - mean) / std
  x = x.astype(np.float32)
  template = abstract_variables(model, shape)   # every array comes from the file
  variables, info = init_from(file, model, template, keep_classifier=True,
                              width=width if args.width is not None else None,
                              image_shape=shape if args.image_size else None)
  forward = jax.jit(lambda v, b: apply_stages(model.stages, v, b)[0])
  out = []
  for start in range(0, len(x), args.batch_size):
    batch = x[start:start + args.batch_size]
    pad = args.batch_size - len(batch) if len(x) > args.batch_size else 0
    logits = forward(variables, np.concatenate([batch, np.zeros((pad, *shape), np.float32)]))
    out.append(np.asarray(logits)[:len(batch)])
  logits = np.concatenate(out) if out else np.zeros((0, classes), np.float32)
  return logits.astype(np.float32), f"{model.name} (width {width}) from {info}"


def write_npy(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:   # --help (0), or a bad command line (2, one line printed)
    return int(e.code or 0)
  try:
    out = Path(args.output)
    if not out.parent.is_dir():
      raise UsageError(f"--output directory {str(out.parent)!r} does not exist")
    if out.is_dir():
      raise UsageError(f"--output {str(out)!r} is a directory; name the .npy file")
    logits, what = predict(args)
    write_npy(out, logits)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: cannot write --output {args.output}: {e.strerror or e}", file=sys.stderr)
    return 2
  print(f"wrote logits {logits.shape[0]} x {logits.shape[1]} to {out}: {what}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
