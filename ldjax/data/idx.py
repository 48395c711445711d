"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte big-endian magic number (two zero bytes, a type code
and the number of dimensions), one big-endian uint32 per dimension, then the
raw row-major data. Only unsigned bytes (type code 0x08) occur in the MNIST
family, so that is all this reader accepts: images have magic 0x00000803
(N, rows, cols) and labels 0x00000801 (N,). Files may be gzipped (`.gz`).

The parser is plain numpy so that `idx:DIR` datasets, e.g. Debian's
`/usr/share/datasets/fashion-mnist/`, load without TensorFlow or a download.
"""

import gzip
import os
import zlib

import numpy as np

from ldjax.errors import UsageError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Base names of the four files of an MNIST-style directory, by (split, kind).
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def find_file(directory: str, base: str) -> str:
  """Returns the path of `base` or `base.gz` in `directory`, preferring raw."""
  for candidate in (base, base + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  raise UsageError(
      f"missing IDX file {os.path.join(directory, base)} (or {base}.gz); an "
      "idx: directory needs train-images-idx3-ubyte, train-labels-idx1-ubyte, "
      "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally "
      "gzipped")


def _read_bytes(path: str) -> bytes:
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError.
    raise UsageError(
        f"cannot read IDX file {path}: {e}; re-download or replace it") from e


def read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Parses one IDX file into a uint8 array with the dimensions it declares.

  Args:
    path: the file; a name ending in `.gz` is decompressed.
    expected_magic: IMAGES_MAGIC or LABELS_MAGIC.

  Returns:
    A uint8 array of shape (N, rows, cols) for images or (N,) for labels.

  Raises:
    UsageError: naming the file, if the magic number is wrong or the file
      holds fewer (or more) bytes than its header declares.
  """
  data = _read_bytes(path)
  ndim = expected_magic & 0xFF
  header_size = 4 + 4 * ndim
  if len(data) < 4:
    raise UsageError(
        f"IDX file {path} is truncated: {len(data)} bytes, too short for a "
        "header; re-download it")
  magic = int.from_bytes(data[:4], "big")
  if magic != expected_magic:
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    raise UsageError(
        f"IDX file {path} has magic number 0x{magic:08x}, expected "
        f"0x{expected_magic:08x} for uint8 {kind}; is it the right file (and "
        "decompressed if it has no .gz suffix)?")
  if len(data) < header_size:
    raise UsageError(
        f"IDX file {path} is truncated: {len(data)} bytes, shorter than its "
        f"{header_size}-byte header; re-download it")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  expected = header_size + int(np.prod(dims, dtype=np.int64))
  if len(data) < expected:
    raise UsageError(
        f"IDX file {path} is truncated: its header declares shape {dims} "
        f"({expected} bytes) but it has {len(data)} bytes; re-download it")
  if len(data) > expected:
    # Trailing bytes mean the header and the payload disagree, which is
    # corruption as much as missing bytes are.
    raise UsageError(
        f"IDX file {path} has {len(data) - expected} bytes more than its "
        f"header's shape {dims} allows; re-download it")
  # Copy out of the immutable bytes buffer so that callers get a normal,
  # writable array.
  return np.frombuffer(data, np.uint8, expected - header_size,
                       offset=header_size).reshape(dims).copy()


def load_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads the images (N, H, W) and labels (N,) of `split` ("train"/"test")."""
  images_path = find_file(directory, FILES[(split, "images")])
  labels_path = find_file(directory, FILES[(split, "labels")])
  images = read_idx(images_path, IMAGES_MAGIC)
  labels = read_idx(labels_path, LABELS_MAGIC)
  if len(images) != len(labels):
    raise UsageError(
        f"IDX files disagree: {images_path} has {len(images)} images but "
        f"{labels_path} has {len(labels)} labels; use files from the same "
        "release")
  return images, labels
