"""Reads prepared TFDS datasets into numpy arrays without TensorFlow.

`tfds.data_source` gives random access to datasets stored as array_record
files and decodes them with numpy/PIL, so reading needs neither TensorFlow
nor a network. Preparing them (download + conversion) does need TensorFlow:
that is `python -m ldjax.prepare`, which writes array_record files; datasets
prepared in TFDS's default tfrecord format cannot be read here.

Kept apart from `ldjax.data` so that `tensorflow_datasets` (~0.5 s to import)
is only imported when a TFDS dataset is actually requested.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from ldjax.data.images import resize_center_crop   # the policy predict and folder: share
from ldjax.errors import UsageError


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(
      os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir` made absolute (so messages show a usable path), or default."""
  return os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))


def prepare_hint(name: str, data_dir: str) -> str:
  """The command that prepares `name` in `data_dir`."""
  return (f"run: python -m ldjax.prepare {name} --data-dir {data_dir}  "
          "(needs internet and `pip install ldjax[prepare]`)")


def read_tfds(name: str, *, data_dir: str | None, test_split: str,
              square_size: int | None, chunk: int):
  """Reads the train and `test_split` splits of a prepared TFDS dataset.

  Args:
    name: TFDS name, e.g. "cifar10".
    data_dir: TFDS data directory; None means `default_data_dir()`.
    test_split: name of the held-out split ("test" or "validation").
    square_size: if set, each image is resized so that its shorter side is
      this long, then center-cropped to a square of that side (Imagenette).
    chunk: examples per batched read.

  Returns:
    (dict with x_train, y_train, x_test, y_test arrays, num_classes).

  Raises:
    UsageError: the dataset is not prepared in data_dir, or was prepared in a
      format that cannot be read without TensorFlow.
  """
  data_dir = resolve_data_dir(data_dir)
  arrays = {}
  num_classes = None
  for split, key in (("train", "train"), (test_split, "test")):
    try:
      # download=False: tfds would otherwise try to prepare the dataset
      # itself, which needs TensorFlow and silently downloads gigabytes.
      source = tfds.data_source(name, split=split, data_dir=data_dir,
                                download=False)
    except Exception as e:  # pylint: disable=broad-except
      error = _diagnose(name, data_dir)
      if error is None:
        raise
      raise error from e
    arrays[f"x_{key}"], arrays[f"y_{key}"] = _read_split(
        source, f"{name}:{split}", square_size, chunk)
    num_classes = source.dataset_info.features["label"].num_classes
  return arrays, int(num_classes)


def non_array_record_formats(builder) -> str | None:
  """The formats a prepared dataset is stored in, if array_record is not one of
  them (so it cannot be read without TensorFlow); None if it is readable."""
  formats = builder.info.available_file_formats()
  if tfds.core.FileFormat.ARRAY_RECORD in formats:
    return None
  return ", ".join(sorted(f.value for f in formats)) or "unknown"


def _diagnose(name: str, data_dir: str) -> UsageError | None:
  """Turns a failed `tfds.data_source` into a UsageError, if it is one."""
  # tfds's own message for a missing dataset talks about tfrecord formats,
  # which is misleading; the builder says plainly whether data is there.
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    return UsageError(f"dataset {name!r} is not prepared in {data_dir}; "
                      + prepare_hint(name, data_dir))
  found = non_array_record_formats(builder)
  if found is not None:
    return UsageError(
        f"dataset {name!r} in {builder.data_dir} was prepared as {found}, "
        "which needs TensorFlow to read; delete that directory (or pick "
        f"another data.dir) and {prepare_hint(name, data_dir)}")
  return None


def _read_split(source, what: str, square_size: int | None, chunk: int):
  """Decodes every example of a data source into (uint8 NHWC, int32 N)."""
  n = len(source)
  if n == 0:
    raise UsageError(f"TFDS split {what} is empty; re-prepare the dataset")
  images = labels = None
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    for i, example in zip(keys, _get_many(source, keys)):
      image = np.asarray(example["image"], np.uint8)
      if square_size is not None:
        image = resize_center_crop(image, square_size)
      if images is None:
        # Shapes are known only after decoding the first image.
        images = np.empty((n, *image.shape), np.uint8)
        labels = np.empty((n,), np.int32)
      if image.shape != images.shape[1:]:
        raise UsageError(f"TFDS split {what}: example {i} is {image.shape}, "
                         f"example 0 is {images.shape[1:]}; re-prepare it")
      images[i] = image
      labels[i] = example["label"]
  return images, labels


def _get_many(source, keys):
  """Batched read, falling back to one-by-one reads.

  `__getitems__` reads a batch in parallel (about 2x faster than single
  reads), but `tfds.testing.mock_data` (tfds 4.9.x) installs it on a mock
  without binding `self`, so it raises TypeError there. A real TypeError
  would recur in the fallback and still surface.
  """
  try:
    return source.__getitems__(keys)
  except TypeError:
    return [source[k] for k in keys]
