"""Image classification datasets as in-memory uint8 numpy arrays.

`load_dataset(spec)` accepts:

* `"embedded"` (the default): 6000 train / 1000 test Fashion-MNIST images
  shipped inside the package, so that everything runs offline.
* `"mnist"`, `"fashion_mnist"`, `"cifar10"`, `"imagenette/160px-v2"`: TFDS
  datasets read through `tfds.data_source`, i.e. random access to
  array_record files, which works without TensorFlow. They must first be
  prepared once (with TensorFlow and internet) by `python -m ldjax.prepare`.
* `"idx:DIR"`: MNIST-format IDX files (see `ldjax.idx`), e.g. Debian's
  `/usr/share/datasets/fashion-mnist`.
* `"npz:FILE"`: a numpy `.npz` with x_train, y_train, x_test, y_test.
* `"folder:DIR"`: your own images, one subfolder per class (`ldjax.data.folder`),
  decoded once into a cache of memory-mapped `.npy` files.

Every split is uint8 [N, H, W, C] (C=1 for grey images) with int32 labels,
held in memory, or for `folder:` memory-mapped (a `np.memmap` is a numpy
array: the training loop gathers its batches from it, and only a subset
(`--train-size`, `--test-size`) or a held-out validation split (`--val-size`)
is copied into memory). Imagenette at 160x160 is about 0.7 GB in memory. Pixels are only turned into floats on the
accelerator, by `normalize`, inside the jitted step.
"""

import dataclasses
import importlib.resources
import os
import zipfile

import jax.numpy as jnp
import numpy as np

from ldjax.data import folder as image_folder
from ldjax.data import idx
from ldjax.data.stats import channel_stats
from ldjax import settings
from ldjax.errors import UsageError

KNOWN_TFDS = ("mnist", "fashion_mnist", "cifar10", "imagenette/160px-v2")

# The held-out split of each TFDS dataset; Imagenette has no "test" split.
_TFDS_TEST_SPLIT = {"imagenette/160px-v2": "validation"}
# Imagenette images have varying sizes, so they are brought to one square.
_TFDS_SQUARE_SIZE = {"imagenette/160px-v2": 160}
# Examples fetched per `__getitems__` call: batched reads are about twice as
# fast as one-by-one, and 1024 decoded 160px images is only ~80 MB.
_TFDS_READ_CHUNK = 1024

EMBEDDED_RESOURCE = "fashion_mnist_subset.npz"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

_ACCEPTED_SPECS = (
    "'embedded', a TFDS name (" + ", ".join(KNOWN_TFDS) + "), "
    "'idx:DIR' (MNIST-format IDX files in DIR), 'npz:FILE' (an .npz with "
    "x_train, y_train, x_test, y_test) or 'folder:DIR' (a folder of class subfolders of "
    "images)")


# eq=False: the generated __eq__/__hash__ would compare numpy arrays, which is
# ambiguous (eq) or impossible (hash); identity semantics are what is wanted.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test image classification dataset held as numpy arrays.

  Attributes:
    name: the spec it was loaded from, e.g. "embedded" or "idx:/some/dir".
    x_train: uint8 [N, H, W, C] training images.
    y_train: int32 [N] training labels in [0, num_classes).
    x_test: uint8 [M, H, W, C] test images.
    y_test: int32 [M] test labels.
    num_classes: number of classes (of the full dataset, not of a subset).
    mean: per-channel mean of x_train in [0, 1] pixel units.
    std: per-channel standard deviation of x_train in [0, 1] pixel units.
    class_names: the classes' names by label (the sorted folder names of `folder:`
      data), or None.
    train_start, train_total: with several processes each holds only its block
      of the training set (`keep_train_block`): x_train is examples
      [train_start, train_start + len(x_train)) of `train_total`; mean and std
      stay those of the whole set.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  x_val: np.ndarray | None = None   # images held out of the training set (`hold_out`)
  y_val: np.ndarray | None = None
  train_start: int = 0
  train_total: int | None = None    # None: x_train is the whole training set
  class_names: tuple[str, ...] | None = None   # of folder: data, label i is class_names[i]

  @property
  def num_train(self) -> int:
    """Examples of the whole training set (of every process's blocks)."""
    return len(self.x_train) if self.train_total is None else self.train_total

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(self.x_train.shape[1:])


def load_dataset(spec: str, *, data_dir: str | None = None,
                 train_size: int | None = None,
                 test_size: int | None = None,
                 folder: image_folder.FolderOptions | None = None,
                 progress: bool = False, log=None) -> Dataset:
  """Loads a dataset by spec (see the module docstring for the forms).

  Args:
    spec: "embedded", a name in KNOWN_TFDS, "idx:DIR" or "npz:FILE".
    data_dir: TFDS data directory for the TFDS names (default: $TFDS_DATA_DIR
      or ~/tensorflow_datasets); ignored by the other forms.
    train_size: if set, keep a deterministic subset of this many training
      examples (see `subset`); mean/std are computed on that subset.
    test_size: likewise for the test split.
    folder: the settings of a "folder:DIR" spec (image size, channels, test
      fraction, bad images, cache directory); defaults if None.
    progress, log: a progress bar while a folder is decoded, and a function
      that prints what was found (e.g. `print`); silent by default.

  Returns:
    A `Dataset`.

  Raises:
    UsageError: unknown spec, missing or malformed files, unprepared TFDS
      dataset, or subset sizes that do not fit.
  """
  if not isinstance(spec, str):
    raise UsageError(f"dataset spec must be a string, got {spec!r}; use "
                     f"{_ACCEPTED_SPECS}")
  if spec == "embedded":
    ref = importlib.resources.files(__package__).joinpath(EMBEDDED_RESOURCE)
    if not ref.is_file():
      raise UsageError(f"the embedded dataset {EMBEDDED_RESOURCE} is missing "
                       "from the installed ldjax package; reinstall ldjax")
    with importlib.resources.as_file(ref) as path:
      arrays = _read_npz(str(path))
    num_classes = None
  elif spec in KNOWN_TFDS:
    from ldjax.data import tfds_source  # Lazy: importing tfds takes ~0.5 s.
    arrays, num_classes = tfds_source.read_tfds(
        spec, data_dir=data_dir, test_split=_TFDS_TEST_SPLIT.get(spec, "test"),
        square_size=_TFDS_SQUARE_SIZE.get(spec), chunk=_TFDS_READ_CHUNK)
  elif spec.startswith("idx:") and spec[4:]:
    directory = os.path.expanduser(spec[4:])
    if not os.path.isdir(directory):
      raise UsageError(f"idx directory {directory} does not exist; give the "
                       "directory holding the MNIST-format IDX files")
    x_train, y_train = idx.load_idx_split(directory, "train")
    x_test, y_test = idx.load_idx_split(directory, "test")
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test,
                  y_test=y_test)
    num_classes = None
  elif spec.startswith("npz:") and spec[4:]:
    arrays = _read_npz(os.path.expanduser(spec[4:]))
    num_classes = None
  elif spec.startswith("folder:") and spec[7:]:
    return _load_folder(spec, folder or image_folder.FolderOptions(), train_size, test_size,
                        progress, log)
  else:
    raise UsageError(f"unknown dataset {spec!r}; use {_ACCEPTED_SPECS}")

  x_train, y_train, x_test, y_test = _validate(arrays, spec)
  if num_classes is None:
    # From both splits and before subsetting, so that a small subset that
    # happens to miss the top class still gets the full classifier head.
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  x_train, y_train = subset(x_train, y_train, train_size, what="train_size")
  x_test, y_test = subset(x_test, y_test, test_size, what="test_size")
  mean, std = channel_stats(x_train)
  return Dataset(name=spec, x_train=x_train, y_train=y_train, x_test=x_test,
                 y_test=y_test, num_classes=num_classes, mean=mean, std=std)


def _load_folder(spec: str, options, train_size, test_size, progress, log) -> Dataset:
  """A folder: dataset, its splits memory-mapped; mean and std from the cache unless
  a training subset is taken."""
  got = image_folder.load_folder(spec[7:], options, progress=progress, log=log)
  x_train, y_train = subset(got.x["train"], got.y["train"], train_size, what="train_size")
  x_test, y_test = subset(got.x["test"], got.y["test"], test_size, what="test_size")
  mean, std = (got.mean, got.std) if train_size is None else channel_stats(x_train)
  return Dataset(name=spec, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                 num_classes=len(got.classes), mean=mean, std=std, x_val=got.x.get("val"),
                 y_val=got.y.get("val"), class_names=got.classes)


VAL_SEED = 1   # the held-out images do not depend on --seed: every seed validates on the same


def check_val_size(size: int, num_train: int) -> None:
  """UsageError unless holding `size` of `num_train` training examples out leaves some."""
  if not 0 < size < num_train:
    raise UsageError(f"data.val_size {size} leaves no training data ({num_train} training "
                     f"examples); use a value in [1, {num_train - 1}]")


def keep_train_block(data: Dataset, start: int, stop: int) -> Dataset:
  """`data` holding only training examples [start, stop) (a copy; the rest can be
  freed), with everything else (test and validation sets, mean, std) as it is."""
  if data.train_total is not None:
    raise ValueError("keep_train_block: the dataset already holds one block only")
  return dataclasses.replace(data, x_train=data.x_train[start:stop].copy(),
                             y_train=data.y_train[start:stop].copy(), train_start=start,
                             train_total=len(data.x_train))


def hold_out(data: Dataset, size: int) -> Dataset:
  """`data` with `size` training examples moved to a validation split (`x_val`, `y_val`).

  The held-out examples are the first `size` of a fixed permutation (seed
  `VAL_SEED`), kept in their original order, as are the training examples
  left; mean and std are recomputed on those.
  """
  if data.train_total is not None:
    raise ValueError("hold_out: the dataset holds one block of the training set only; "
                     "hold the validation split out before `keep_train_block`")
  n = len(data.x_train)
  check_val_size(size, n)
  val = np.zeros(n, bool)
  val[np.random.default_rng(VAL_SEED).permutation(n)[:size]] = True
  x_train, y_train = data.x_train[~val], data.y_train[~val]
  mean, std = channel_stats(x_train)
  return dataclasses.replace(data, x_train=x_train, y_train=y_train, x_val=data.x_train[val],
                             y_val=data.y_train[val], mean=mean, std=std)


def with_validation(data: Dataset, size: int | None) -> Dataset:
  """`data` with a validation split of `size` (`hold_out`), unless it has one already (a
  folder's val/, or held out before) or `size` is None."""
  return data if not size or data.x_val is not None else hold_out(data, size)


def subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int = 0, *,
           what: str = "size") -> tuple[np.ndarray, np.ndarray]:
  """Returns a deterministic subset of `size` examples of (x, y).

  The kept indices are the first `size` of a fixed-seed permutation, sorted
  so that the subset keeps the original order; the result depends only on
  (len(x), size, seed).

  Args:
    x: examples, indexed along the first axis.
    y: labels, same length as x.
    size: how many to keep; None keeps everything.
    seed: permutation seed.
    what: the name of the size argument, for error messages.

  Returns:
    (x_subset, y_subset).

  Raises:
    UsageError: size is not a positive integer or exceeds len(x).
  """
  n = len(x)
  if len(y) != n:
    raise UsageError(f"subset got {n} examples but {len(y)} labels; pass "
                     "arrays of equal length")
  if size is None:
    return x, y
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise UsageError(f"{what} must be an integer, got {size!r}")
  if size <= 0:
    raise UsageError(f"{what}={size} must be positive; leave it unset to use "
                     "all examples")
  if size > n:
    raise UsageError(f"{what}={size} is larger than the {n} examples "
                     f"available; use at most {n} or leave it unset")
  if size == n:
    return x, y  # Same as the sorted full permutation, without a copy.
  keep = np.sort(np.random.default_rng(seed).permutation(n)[:size])
  return x[keep], y[keep]


def normalize(x, mean, std):
  """(x / 255 - mean) / std in float32; x is uint8 [..., C], jit-friendly.

  Works on numpy or jax arrays, inside or outside `jax.jit`; mean and std are
  per-channel sequences (e.g. `Dataset.mean`) broadcast over the last axis.
  """
  x = jnp.asarray(x).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads the four arrays of an .npz file without ever unpickling."""
  if not os.path.isfile(path):
    raise UsageError(f"npz file {path} does not exist; give an .npz written "
                     "with np.savez(path, x_train=..., y_train=..., "
                     "x_test=..., y_test=...)")
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UsageError(f"cannot read {path} as an .npz file ({e}); write it "
                     "with np.savez(path, x_train=..., y_train=..., "
                     "x_test=..., y_test=...)") from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise UsageError(f"{path} holds a single array, not an .npz archive; "
                     "write it with np.savez(path, x_train=..., y_train=..., "
                     "x_test=..., y_test=...)")
  with loaded:
    missing = [k for k in _NPZ_KEYS if k not in loaded.files]
    if missing:
      raise UsageError(f"{path} lacks array(s) {', '.join(missing)} (has "
                       f"{', '.join(loaded.files) or 'none'}); it needs "
                       f"{', '.join(_NPZ_KEYS)}")
    arrays = {}
    for key in _NPZ_KEYS:
      try:
        arrays[key] = loaded[key]
      except (ValueError, OSError, zipfile.BadZipFile) as e:
        # Object arrays need pickle, which is refused on purpose.
        raise UsageError(f"cannot load array {key} from {path} ({e}); store "
                         "plain integer arrays, not objects") from e
  return arrays


def _validate(arrays: dict[str, np.ndarray], source: str):
  """Checks shapes/dtypes; returns uint8 NHWC images and int32 labels."""
  out = {}
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim == 3:
      x = x[..., None]  # Grey [N, H, W] -> [N, H, W, 1].
    if x.ndim != 4 or 0 in x.shape:
      raise UsageError(f"x_{split} of {source} has shape {x.shape}; images "
                       "must be a non-empty [N, H, W] or [N, H, W, C] array")
    if y.ndim == 2 and y.shape[1] == 1:
      y = y[:, 0]  # Keras-style [N, 1] labels.
    if y.ndim != 1:
      raise UsageError(f"y_{split} of {source} has shape {y.shape}; labels "
                       "must be a 1-D array of class indices")
    if len(x) != len(y):
      raise UsageError(f"{source} has {len(x)} x_{split} images but {len(y)} "
                       f"y_{split} labels; they must match")
    out[f"x_{split}"] = _as_integers(x, f"x_{split}", source, np.uint8, 255)
    out[f"y_{split}"] = _as_integers(y, f"y_{split}", source, np.int32,
                                     np.iinfo(np.int32).max)
  if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
    raise UsageError(f"{source}: train images are {out['x_train'].shape[1:]} "
                     f"but test images are {out['x_test'].shape[1:]}; both "
                     "splits need the same (H, W, C)")
  return out["x_train"], out["y_train"], out["x_test"], out["y_test"]


def _as_integers(a: np.ndarray, key: str, source: str, dtype, top: int):
  """Converts integer `a` to `dtype` if all values lie in [0, top]."""
  if a.dtype == dtype:
    bad = a.dtype != np.uint8 and a.size and a.min() < 0
  elif a.dtype == bool or np.issubdtype(a.dtype, np.integer):
    bad = a.size and (a.min() < 0 or a.max() > top)
  else:
    raise UsageError(f"{key} of {source} has dtype {a.dtype}; it must hold "
                     f"integers 0..{top} (for float pixels in [0, 1] store "
                     "(x * 255).round().astype(np.uint8))")
  if bad:
    raise UsageError(f"{key} of {source} has values {a.min()}..{a.max()}; "
                     f"they must lie in 0..{top}")
  return a.astype(dtype, copy=False)


@settings.group("data", "the data")
class DataSettings:
  """Which dataset, which part of it, and how the training set is split over processes."""
  name: str = settings.setting(
      "embedded", "'embedded' (Fashion-MNIST subset shipped with ldjax), a TFDS name (mnist, "
      "fashion_mnist, cifar10, imagenette/160px-v2), 'idx:DIR', 'npz:FILE' or 'folder:DIR' "
      "(your images, one subfolder per class: DIR/<class>/... or DIR/train/<class>/... and "
      "DIR/test/<class>/...; see --image-size)", flat="dataset", common=True)
  dir: str | None = settings.setting(
      None, "TFDS data directory (default: TFDS's own)", flat="data_dir")
  train_size: int | None = settings.setting(
      None, "use a deterministic subset of N training images", metavar="N", common=True, resumable=True)
  test_size: int | None = settings.setting(
      None, "use a deterministic subset of N test images", metavar="N", common=True, resumable=True)
  val_size: int | None = settings.setting(
      None, "hold N training images out (a fixed choice, the same for every seed) as a "
      "validation split: evaluated every --eval-every epochs and logged as val_accuracy "
      "(what the figures use); the test set is then evaluated after the last epoch only",
      metavar="N", common=True)
  shards: int | None = settings.setting(
      None, "split the training set into N contiguous blocks: each epoch shuffles within "
      "blocks and every batch takes batch/N examples from each, so that each process reads "
      "and stores only its own blocks (default: one per process; give a run of fewer "
      "processes the same N to reproduce a run of N processes)", flat="data_shards",
      metavar="N")

  def check(self):
    settings.check_text(self.name, "data.name", optional=False)
    settings.check_text(self.dir, "data.dir")
    for name in ("train_size", "test_size", "val_size"):
      value = getattr(self, name)
      if value is not None:
        settings.check_int(value, f"data.{name}", "an integer > 0 (or unset)", lambda v: v > 0)
    if self.shards is not None:
      settings.check_int(self.shards, "data.shards", "an integer > 0 (or unset)",
                         lambda v: v > 0)
