"""Command line: a trained model's logits and top-k classes on new inputs, in eval mode.

  python -m ldjax.predict --weights runs/fm/drop --input x.npy --output logits.npy
  python -m ldjax.predict --weights runs/pets/drop --input photos/test --output out/logits.npy \\
      --evaluate
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
- a uint8 array, or images (an image file, or a folder searched recursively,
  in sorted path order; other files are ignored and counted), are raw pixels
  and are normalized exactly as in training, with ``--mean`` / ``--std``, or
  else the weights' metadata, or else the run's config.json. Images of any
  size and mode are brought to the model's H x W x C by the policy training
  on a folder uses (`ldjax.data.images`: EXIF orientation, L or RGB, scaled
  to cover H x W and centre-cropped; one that would be enlarged more than
  2x is refused), decoded in parallel.

Besides the logits (``--output``, float32 [N, classes]) it writes
``predictions.csv`` (``--csv``): each input's file (or row), its top-k
classes by name (the weights' ``class_names``, else the index) and their
softmax probabilities. With ``--evaluate`` the input folder's first-level
subfolders are the true classes (as training's ``folder:`` reads them): the
CSV gets ``true_class`` and ``correct``, and the accuracy and the confusion
matrix are printed.

Model, width, BatchNorm, classes and input shape default to the weights'
ldjax metadata; torchvision / timm weights need ``--model`` (the classes
then come from the file's classifier, the width is 1 unless given). Bad input is one line and exit status 2,
and nothing is written; the logits and the CSV are written to temporary
names and renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldjax import cli
from ldjax.data import image_cache
from ldjax.data.folder import find_images
from ldjax.data.images import BadImage, Header, TooSmall, is_image_name, load_image, read_header
from ldjax.errors import UsageError
from ldjax.jsonio import read_json
from ldjax.models.zoo import MODEL_NAMES, build_model
from ldjax.weights import decode_meta, init_from, read_metadata, weights_path
from ldjax.weights.files import read_shapes

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
    help="an NHWC .npy array (float: fed as is; uint8: normalized), or an image file or a "
         "folder of them, searched recursively (resized to the model's size, normalized)")
  a("--output", required=True, metavar="Y.npy", help="where the logits go (float32, N x classes)")
  a("--csv", default=None, metavar="FILE.csv",
    help="where the top-k classes and probabilities go (default: predictions.csv beside "
         "--output)")
  a("--top-k", type=int, default=5, metavar="K",
    help="classes per input in the CSV (default: 5, at most the number of classes)")
  a("--evaluate", action="store_true",
    help="--input is a folder of class subfolders named as the model's classes: print the "
         "accuracy and the confusion matrix, and add the true class to the CSV")
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
  a("--no-progress", action="store_true", help="no progress bar while images decode")
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


def image_files(path: Path) -> tuple[list[Path], int]:
  """The images of --input (a file, or a folder searched recursively), and how many other
  files the folder holds."""
  files, ignored = find_images(path)
  if not files or not is_image_name(files[0]):
    raise UsageError(f"--input {path} holds no images (e.g. .jpg, .png, .bmp, .webp, .gif)")
  return files, ignored


def decoded(files: list[Path], shape: tuple[int, int, int], progress: bool):
  """uint8 [n, H, W, C] chunks of `files` by the training policy, decoded in parallel, in
  order; UsageError naming the first bad file."""
  def decode(chunk):
    out = []
    for f in chunk:
      try:
        out.append(load_image(f, shape[:2], shape[2]))
      except TooSmall as e:   # "is WxH (W x H), too small for ..."
        raise UsageError(f"--input image {f} {e}; give a larger image") from None
      except BadImage as e:
        raise UsageError(f"--input image {f} cannot be read: {e}") from None
    return np.stack(out)
  with image_cache.progress_bar(len(files), "predicting", progress) as bar, \
      contextlib.closing(image_cache.parallel(decode, files, bar)) as chunks:
    yield from chunks


def true_labels(root: Path, files: list[Path], classes: Sequence[str] | None) -> np.ndarray:
  """--evaluate: each file's class, the name of its first-level folder under `root`."""
  if classes is None:
    raise UsageError("--evaluate needs the weights' class names (weights saved by a folder: "
                     "run record them); these weights have none")
  if not root.is_dir():
    raise UsageError(f"--evaluate needs a folder of class subfolders, --input {root} is a file")
  index = {name: i for i, name in enumerate(classes)}
  out = []
  for f in files:
    top = f.relative_to(root).parts
    if len(top) < 2:
      raise UsageError(f"--evaluate: {f} lies outside the class subfolders of {root}")
    if top[0] not in index:
      raise UsageError(f"--evaluate: folder {root / top[0]} is not a class of the model "
                       f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); "
                       "point --input at a folder of class subfolders (e.g. DIR/test)")
    out.append(index[top[0]])
  return np.array(out, np.int32)


def read_input(path: Path) -> tuple[np.ndarray | list[Path], int]:
  """An .npy array, or the image files to decode; and the files ignored."""
  if not path.exists():
    raise UsageError(f"--input {str(path)!r} does not exist")
  if path.is_dir() or is_image_name(path):
    return image_files(path)
  x = read_npy(path)
  if x.ndim != 4:
    raise UsageError(f"--input {path} has shape {x.shape}; give NHWC images "
                     "(one image: x[None])")
  if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
    raise UsageError(f"--input {path} is {x.dtype}; give float32 (normalized) or uint8 pixels")
  return x, 0


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


@dataclasses.dataclass
class Prediction:
  logits: np.ndarray                 # float32 [N, classes]
  rows: list[str]                    # each input's file (relative to --input) or row index
  class_names: list[str]             # by class index: the weights' names, else "0", "1", ...
  labels: np.ndarray | None          # --evaluate: the true classes
  what: str                          # the model and where its weights came from
  ignored: int = 0                   # files of the --input folder that are no images


def predict(args, progress: bool = False) -> Prediction:
  """The logits of `args.input` (see the module doc); UsageError on bad input."""
  import jax
  from ldjax.models.staged import abstract_variables, apply_stages
  if args.batch_size <= 0:
    raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
  if args.top_k <= 0:
    raise UsageError(f"--top-k must be > 0, got {args.top_k}")
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
  root = Path(args.input)
  x, ignored = read_input(root)
  files = x if isinstance(x, list) else None
  if files is not None and shape is None:   # torch weights without --image-size
    first = read_first_header(files[0])
    shape = (first.height, first.width, 3)
  shape = shape or tuple(x.shape[1:])
  if files is None and tuple(x.shape[1:]) != tuple(shape):
    raise UsageError(f"--input has {'x'.join(map(str, x.shape[1:]))} images, the model takes "
                     f"{'x'.join(map(str, shape))} (H x W x C)")
  if files is not None and shape[2] not in (1, 3):
    raise UsageError(f"images load as 1 (L) or 3 (RGB) channels, the model takes {shape[2]}")
  classes = args.num_classes or meta.get("num_classes") or torch_classes(file) or 1000
  names = meta.get("class_names")
  names = list(names) if isinstance(names, list) and len(names) == classes else None
  if args.evaluate and files is None:
    raise UsageError("--evaluate needs --input to be a folder of class subfolders of images")
  labels = true_labels(root, files, names) if args.evaluate else None
  model = build_model(name, shape, classes, width=width, batch_norm=batch_norm)
  raw = files is not None or x.dtype == np.uint8
  mean, std = normalization(args, meta, file, shape[2]) if raw else (0.0, 1.0)
  template = abstract_variables(model, shape)   # every array comes from the file
  variables, info = init_from(file, model, template, keep_classifier=True,
                              width=width if args.width is not None else None,
                              image_shape=shape if args.image_size else None)
  forward = jax.jit(lambda v, b: apply_stages(model.stages, v, b)[0])
  n = len(files) if files is not None else len(x)
  bs = min(args.batch_size, max(n, 1))
  chunks = (decoded(files, shape, progress) if files is not None
            else (x[i:i + bs] for i in range(0, n, bs)))
  out = []
  for batch in rebatch(chunks, bs):
    if raw:
      batch = (batch.astype(np.float32) / 255.0 - mean) / std
    batch = batch.astype(np.float32)
    padded = np.concatenate([batch, np.zeros((bs - len(batch), *shape), np.float32)])
    out.append(np.asarray(forward(variables, padded))[:len(batch)])
  logits = np.concatenate(out) if out else np.zeros((0, classes), np.float32)
  rows = ([str(f.relative_to(root)) if root.is_dir() else f.name for f in files]
          if files is not None else [str(i) for i in range(n)])
  return Prediction(logits.astype(np.float32), rows, names or [str(i) for i in range(classes)],
                    labels, f"{model.name} (width {width}) from {info}", ignored)


def read_first_header(path: Path) -> Header:
  try:
    return read_header(path)
  except BadImage as e:
    raise UsageError(f"--input image {path} cannot be read: {e}") from None


def rebatch(chunks, size: int):
  """Arrays of `size` rows (the last one shorter) from arrays of any number of rows."""
  pending, held = [], 0
  for chunk in chunks:
    pending.append(chunk)
    held += len(chunk)
    while held >= size:
      joined = np.concatenate(pending)
      yield joined[:size]
      pending, held = [joined[size:]], held - size
  if held:
    yield np.concatenate(pending)


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def predictions_csv(p: Prediction, k: int) -> str:
  """file, class_1, prob_1, ..., class_k, prob_k[, true_class, correct] per input."""
  k = min(k, p.logits.shape[1])
  probs = softmax(p.logits.astype(np.float64))
  top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  head = ["file"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")]
  writer.writerow(head + (["true_class", "correct"] if p.labels is not None else []))
  for r, row in enumerate(p.rows):
    cells = [row] + [c for j in top[r] for c in (p.class_names[j], f"{probs[r, j]:.4f}")]
    if p.labels is not None:
      cells += [p.class_names[p.labels[r]], int(top[r, 0] == p.labels[r])]
    writer.writerow(cells)
  return buf.getvalue()


def confusion_text(p: Prediction) -> str:
  """The accuracy and the confusion matrix (rows: true class, columns: predicted)."""
  predicted = p.logits.argmax(axis=1)
  k = len(p.class_names)
  matrix = np.zeros((k, k), np.int64)
  np.add.at(matrix, (p.labels, predicted), 1)
  accuracy = 100.0 * float(np.mean(predicted == p.labels))
  names = [n[:12] for n in p.class_names]
  width = max(5, *(len(n) for n in names), len(str(matrix.max())))
  lines = [f"accuracy {accuracy:.2f}% ({int((predicted == p.labels).sum())} of "
           f"{len(p.labels)})", "confusion matrix (rows: true class, columns: predicted):",
           " " * width + " " + " ".join(n.rjust(width) for n in names)]
  for name, row in zip(names, matrix):
    lines.append(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))
  return "\n".join(lines)


def write_npy(path: Path, array: np.ndarray) -> Path:
  """`array` to a temporary name beside `path`; returns it (renamed by the caller)."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with open(tmp, "wb") as f:
    np.save(f, array, allow_pickle=False)
  return tmp


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:   # --help (0), or a bad command line (2, one line printed)
    return int(e.code or 0)
  written = []
  try:
    out = Path(args.output)
    table = Path(args.csv) if args.csv else out.parent / "predictions.csv"
    for flag, path in (("--output", out), ("--csv", table)):
      if not path.parent.is_dir():
        raise UsageError(f"{flag} directory {str(path.parent)!r} does not exist")
      if path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a directory; name the file")
    result = predict(args, progress=not args.no_progress)
    written.append(write_npy(out, result.logits))
    written.append(table.with_name(f".{table.name}.tmp-{os.getpid()}"))
    written[-1].write_text(predictions_csv(result, args.top_k))
    os.replace(written[0], out)
    os.replace(written[1], table)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: cannot write --output {args.output} or --csv: {e.strerror or e}",
          file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    return 130
  finally:
    for tmp in written:
      tmp.unlink(missing_ok=True)
  logits = result.logits
  print(f"wrote logits {logits.shape[0]} x {logits.shape[1]} to {out} and the top "
        f"{min(args.top_k, logits.shape[1])} classes to {table}: {result.what}"
        + (f"; {result.ignored} files that are no images ignored" if result.ignored else ""))
  if result.labels is not None:
    print(confusion_text(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
