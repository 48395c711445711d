"""Builds ldjax/data/fashion_mnist_subset.npz, the offline default dataset.

Data: Fashion-MNIST, by Han Xiao, Kashif Rasul and Roland Vollgraf, "Fashion-
MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms"
(arXiv:1708.07747, 2017), Zalando Research, released under the MIT licence
(https://github.com/zalandoresearch/fashion-mnist). The file is made from the
copy in Debian's `dataset-fashion-mnist` package, installed at
/usr/share/datasets/fashion-mnist as gzipped IDX files.

The subset is class-balanced and deterministic (seed 0): 600 training and 100
test images of each of the 10 classes, i.e. 6000 / 1000 images, kept in their
original order. Images are stored as uint8 [N, 28, 28] (the loader adds the
channel axis) and labels as uint8, compressed with np.savez_compressed.

Usage: python experiments/make_embedded_data.py [--source DIR] [--out FILE]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from ldjax.data import idx  # pylint: disable=g-import-not-at-top

PER_CLASS = {"train": 600, "test": 100}
SEED = 0


def balanced_indices(labels: np.ndarray, per_class: int,
                     rng: np.random.Generator) -> np.ndarray:
  """`per_class` random indices of each class, returned in sorted order."""
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    keep.append(rng.choice(members, per_class, replace=False))
  # Sorted: the file keeps the dataset's original order, classes interleaved.
  return np.sort(np.concatenate(keep))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist",
                      help="directory with the Fashion-MNIST IDX files")
  parser.add_argument(
      "--out", default=os.path.join(os.path.dirname(__file__), "..", "ldjax",
                                    "data", "fashion_mnist_subset.npz"),
      help="output .npz path")
  args = parser.parse_args()

  rng = np.random.default_rng(SEED)
  arrays = {}
  for split in ("train", "test"):
    images, labels = idx.load_idx_split(args.source, split)
    keep = balanced_indices(labels, PER_CLASS[split], rng)
    arrays[f"x_{split}"] = images[keep].astype(np.uint8)
    arrays[f"y_{split}"] = labels[keep].astype(np.uint8)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {os.path.normpath(args.out)} "
        f"({os.path.getsize(args.out) / 1e6:.2f} MB): "
        + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
  main()
