"""`folder:DIR`: your own images, one subfolder per class (the layout of torchvision's
``ImageFolder`` and Keras' ``image_dataset_from_directory``).

Layouts:

* ``DIR/train/<class>/...`` with ``DIR/test/<class>/...`` (or ``DIR/val/``; with
  both, ``val/`` becomes the validation split and ``test/`` the test set);
* ``DIR/<class>/...`` (or ``DIR/train/`` alone): the test set is a
  deterministic, stratified `test_fraction` of each class (default
  `DEFAULT_TEST_FRACTION`): the files with the smallest SHA-256 of their
  path, so a file added later does not move the others between splits.

Class names are the sorted folder names. Class folders are searched
recursively; files Pillow cannot open by their suffix (``.txt``, ``.csv``,
hidden files) and files outside the class folders are ignored and counted.
Images become uint8 arrays by `ldjax.data.images`' policy at `image_size`
(default: the median shorter side of the training images, rounded to a
multiple of 4, at most `MAX_DEFAULT_SIDE` and at most twice the smallest
side, so that no image is too small) with `channels` (default: 3
unless every image is grey). They are decoded once into the cache
(`ldjax.data.image_cache`) and read from it memory-mapped.

Bad input is a `UsageError` naming the folder or file: no class folders, a
class folder without images, a single class, train and test with different
classes, a corrupt or truncated image or one too small for the size (unless
`skip_bad_images`: then it is left out and counted), an unwritable cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ldjax import settings
from ldjax.data import image_cache, images
from ldjax.errors import UsageError

DEFAULT_TEST_FRACTION = 0.2
MAX_DEFAULT_SIDE = 224
SPLIT_DIRS = ("train", "test", "val")
ORDER_SEED = 0   # the training rows' fixed order: classes mixed in every contiguous block


@settings.group("folder", "folder:DIR data")
class FolderOptions:
  """The settings a folder's arrays depend on (part of the cache key), and the cache."""
  image_size: tuple[int, int] | None = settings.setting(
      None, "folder: bring every image to H x W (S: S x S): scaled to cover it, aspect kept, "
      "and centre-cropped, as torchvision's Resize + CenterCrop (predict does the same); an "
      "image that would be enlarged more than 2x is refused (default: the training images' "
      "median shorter side rounded to a multiple of 4, at most 224 and at most twice the "
      "smallest side)", metavar="S|H,W", parse=lambda text: parse_image_size(text), resumable=True)
  channels: int | None = settings.setting(
      None, "folder: 1 (grey) or 3 (RGB) channels (default: 3 unless every image is grey)",
      resumable=True)
  test_fraction: float | None = settings.setting(
      None, "folder without test/ or val/: hold this fraction of each class out as the test "
      f"set, a fixed choice by file name (default: {DEFAULT_TEST_FRACTION})", metavar="F",
      resumable=True)
  skip_bad_images: bool = settings.setting(
      False, "folder: leave out images that cannot be decoded or are too small, and count "
      "them, instead of stopping with an error naming the first", resumable=True)
  cache_dir: str | None = settings.setting(
      None, "folder: where the decoded images are kept as memory-mapped .npy files, decoded "
      "again only when the folder's files or these settings change (default: "
      f"${image_cache.ENV}, else ~/.cache/ldjax/images)", flat="image_cache", metavar="DIR",
      resumable=True)

  def check(self):
    size = self.image_size
    if isinstance(size, list):   # from a JSON or TOML file
      object.__setattr__(self, "image_size", size := tuple(size))
    if size is not None and not (isinstance(size, tuple) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
      raise UsageError(f"folder.image_size must be two integers > 0 (H, W), got {size!r}")
    if self.channels is not None:
      settings.check_int(self.channels, "folder.channels", "1 or 3", lambda v: v in (1, 3))
    if self.test_fraction is not None:
      settings.check_float(self.test_fraction, "folder.test_fraction", "a number in (0, 1)",
                           lambda v: 0 < v < 1)
    settings.check_bool(self.skip_bad_images, "folder.skip_bad_images")
    settings.check_text(self.cache_dir, "folder.cache_dir")

  @property
  def given(self) -> list[str]:
    """The dotted names of the settings that differ from their defaults."""
    return [f"folder.{f.name}" for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default]


@dataclasses.dataclass(frozen=True)
class Listing:
  """A folder's images: per split, files relative to `root` in row order, and labels."""
  root: Path
  classes: tuple[str, ...]
  files: dict[str, list[str]]
  labels: dict[str, np.ndarray]
  ignored: int          # files that are no images, or lie outside the class folders
  test_from: str        # where the test set comes from, in words


@dataclasses.dataclass(frozen=True)
class FolderData:
  """A folder's decoded splits (memory-mapped) with its classes and the training set's
  mean and std."""
  x: dict[str, np.ndarray]
  y: dict[str, np.ndarray]
  classes: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  cache: Path


def parse_image_size(text: str) -> tuple[int, int]:
  """``S`` or ``H,W`` (also ``HxW``) as (H, W); UsageError otherwise."""
  try:
    parts = [int(t) for t in str(text).replace("x", ",").split(",")]
  except ValueError:
    parts = []
  if len(parts) == 1:
    parts *= 2
  if len(parts) != 2 or min(parts) < 1:
    raise UsageError(f"folder.image_size {text!r} must be S or H,W with positive sizes, e.g. 64 "
                     "or 96,128")
  return parts[0], parts[1]


def _class_dirs(directory: Path) -> tuple[list[str], int]:
  """Sorted class folder names in `directory`, and how many files lie beside them."""
  dirs, loose = [], 0
  for entry in os.scandir(directory):
    if entry.name.startswith("."):
      loose += entry.is_file()
    elif entry.is_dir():
      dirs.append(entry.name)
    else:
      loose += 1
  return sorted(dirs), loose


def _images_of(class_dir: Path, root: Path) -> tuple[list[str], int]:
  """Image files under `class_dir` (recursively, sorted, relative to `root`), and how
  many other files there are."""
  found, other = [], 0
  for top, dirs, files in os.walk(class_dir):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for f in files:
      if images.is_image_name(f):
        found.append(os.path.relpath(os.path.join(top, f), root))
      else:
        other += 1
  return sorted(found), other


def find_images(path: str | os.PathLike) -> tuple[list[Path], int]:
  """The image files of a file or (recursively, sorted by path) a folder, and how many
  other files the folder holds."""
  path = Path(path)
  if not path.is_dir():
    return [path], 0
  found, other = _images_of(path, path)
  return [path / f for f in found], other


def _read_classes(directory: Path, root: Path) -> tuple[dict[str, list[str]], int]:
  """{class: image files} of a tree of class folders; UsageError for no class folder or a
  class folder without images."""
  names, ignored = _class_dirs(directory)
  if not names:
    raise UsageError(f"folder {directory} holds no class folders; put the images in one "
                     "subfolder per class (DIR/<class>/... or DIR/train/<class>/... with "
                     "DIR/test/<class>/...)")
  out = {}
  for name in names:
    found, other = _images_of(directory / name, root)
    if not found:
      raise UsageError(f"class folder {directory / name} holds no images ({other} other "
                       f"files); add images ({', '.join(sorted(_shown_suffixes()))}, ...) "
                       "or remove the folder")
    out[name] = found
    ignored += other
  return out, ignored


def _shown_suffixes() -> set[str]:
  return {".jpg", ".png", ".bmp", ".webp", ".gif"} & images.image_suffixes()


def _stratified(per_class: dict[str, list[str]], fraction: float, where: Path
                ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
  """(train, test) per class: in each class the round(fraction * n) files (at least one,
  at most n - 1) with the smallest SHA-256 of their path go to test."""
  train, test = {}, {}
  for name, files in per_class.items():
    if len(files) < 2:
      raise UsageError(f"class folder {where / name} has 1 image; a test split needs at "
                       "least 2 per class (or give DIR/train and DIR/test)")
    ranked = sorted(files, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    k = min(len(files) - 1, max(1, round(fraction * len(files))))
    test[name] = sorted(ranked[:k])
    train[name] = sorted(ranked[k:])
  return train, test


def _check_same_classes(a: dict, a_dir: Path, b: dict, b_dir: Path) -> None:
  if set(a) != set(b):
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    what = (f"{a_dir / only_a[0]} has no counterpart in {b_dir}" if only_a
            else f"{b_dir / only_b[0]} has no counterpart in {a_dir}")
    raise UsageError(f"train and test have different classes: {what}; give both splits the "
                     "same class folders")


def scan(directory: str | os.PathLike, test_fraction: float | None = None) -> Listing:
  """The images of a folder in one of the module doc's layouts; UsageError if it is not."""
  root = Path(directory).expanduser()
  if not root.is_dir():
    raise UsageError(f"folder {str(root)!r} does not exist or is not a directory; give a "
                     "folder of class subfolders")
  if test_fraction is not None and not (isinstance(test_fraction, (int, float))
                                        and 0 < test_fraction < 1):
    raise UsageError(f"folder.test_fraction must be a number in (0, 1), got {test_fraction!r}")
  splits = {}
  ignored = 0
  if (root / "train").is_dir():
    splits["train"], ignored = _read_classes(root / "train", root)
    ignored += sum(1 for e in os.scandir(root) if e.is_file())
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is not None and test_fraction is not None:
      raise UsageError(f"folder.test_fraction splits a folder without a test set, but {test_dir} "
                       "is one; drop folder.test_fraction")
    if test_dir is not None:
      splits["test"], n = _read_classes(test_dir, root)
      ignored += n
      _check_same_classes(splits["train"], root / "train", splits["test"], test_dir)
      test_from = f"{test_dir.name}/"
      if test_dir.name == "test" and (root / "val").is_dir():
        splits["val"], n = _read_classes(root / "val", root)
        ignored += n
        _check_same_classes(splits["train"], root / "train", splits["val"], root / "val")
        test_from += " (val/: the validation split)"
    where = root / "train"
  else:
    test_dir = None
    splits["train"], ignored = _read_classes(root, root)
    where = root
  if test_dir is None:
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
    splits["train"], splits["test"] = _stratified(splits["train"], fraction, where)
    test_from = f"{fraction:g} of each class of {where.name}/"
  classes = tuple(sorted(splits["train"]))
  if len(classes) < 2:
    raise UsageError(f"folder {where} has one class ({classes[0]}); a classifier needs at "
                     "least 2 class folders")
  files, labels = {}, {}
  for split, per_class in splits.items():
    pairs = [(f, i) for i, name in enumerate(classes) for f in per_class[name]]
    if split == "train":   # a fixed order that mixes the classes (see ORDER_SEED)
      pairs = [pairs[i] for i in np.random.default_rng(ORDER_SEED).permutation(len(pairs))]
    files[split] = [f for f, _ in pairs]
    labels[split] = np.array([i for _, i in pairs], np.int32)
  return Listing(root, classes, files, labels, ignored, test_from)


def default_size(train: list[images.Header], every: list[images.Header]) -> tuple[int, int]:
  """A square: the training images' median shorter side, rounded to a multiple of 4, at
  most MAX_DEFAULT_SIDE and at most images.MAX_ENLARGE times the smallest side of
  `every` image (so that none is too small)."""
  side = 4 * round(statistics.median(min(h.width, h.height) for h in train) / 4)
  smallest = min(min(h.width, h.height) for h in every)
  side = int(max(1, min(side, MAX_DEFAULT_SIDE, images.MAX_ENLARGE * smallest)))
  return side, side


def _headers(paths: list[Path], progress: bool) -> list:
  """Each file's `images.Header`, or the BadImage it raised."""
  def read(chunk):
    out = []
    for p in chunk:
      try:
        out.append(images.read_header(p))
      except images.BadImage as e:
        out.append(e)
    return out
  results = []
  with image_cache.progress_bar(len(paths), "reading headers", progress) as bar, \
      contextlib.closing(image_cache.parallel(read, paths, bar)) as chunks:
    for chunk in chunks:
      results.extend(chunk)
  return results


def _bad(path: Path, error: Exception, skip: bool, skipped: list) -> None:
  """Stops with a one-line UsageError for a bad image, or counts it when skipping."""
  if skip:
    skipped.append((path, error))
    return
  if isinstance(error, images.TooSmall):
    raise UsageError(f"image {path} {error}; give a smaller folder.image_size, or "
                     "folder.skip_bad_images to leave such images out")
  raise UsageError(f"image {path} cannot be read ({error}); replace or delete it, or pass "
                   "folder.skip_bad_images to leave unreadable images out")


def load_folder(directory: str | os.PathLike, options: FolderOptions = FolderOptions(), *,
                progress: bool = False, log: Callable[[str], None] | None = None
                ) -> FolderData:
  """A folder's splits, decoded (or read from the cache); see the module doc."""
  log = log or (lambda _: None)
  if options.channels not in (None, 1, 3):
    raise UsageError(f"folder.channels must be 1 or 3, got {options.channels!r}")
  t0 = time.perf_counter()
  listing = scan(directory, options.test_fraction)
  root = listing.root
  paths = {s: [root / f for f in files] for s, files in listing.files.items()}
  stats = [(s, f, int(l), *_stat(root / f)) for s in listing.files
           for f, l in zip(listing.files[s], listing.labels[s])]
  settings = {"image_size": options.image_size, "channels": options.channels,
              "test_fraction": options.test_fraction, "skip_bad": options.skip_bad_images}
  cache = image_cache.cache_root(options.cache_dir)
  name = image_cache.entry_name(root, settings, stats)
  counts = ", ".join(f"{len(f)} {s}" for s, f in listing.files.items())
  ignored = f"; {listing.ignored} other files ignored" if listing.ignored else ""
  entry = image_cache.open_entry(cache, name) if cache.is_dir() else None
  if entry is not None:
    meta = entry.meta
    log(f"folder {root}: {len(listing.classes)} classes, {counts} images (test: "
        f"{listing.test_from}){ignored}; decoded images read from the cache {entry.path} "
        f"(listing, checking and opening took {time.perf_counter() - t0:.2f} s)" + _skipped_note(entry))
  else:
    image_cache.check_writable(cache)
    entry = _decode(listing, paths, options, cache, name, progress, log, counts, ignored)
    meta = entry.meta
  empty = set(range(len(listing.classes))) - set(np.unique(entry.y["train"]).tolist())
  if empty:
    raise UsageError(f"after skipping bad images class {listing.classes[min(empty)]!r} has no "
                     "training image left; fix or replace its images")
  return FolderData(x=entry.x, y=entry.y, classes=listing.classes, mean=tuple(meta["mean"]),
                    std=tuple(meta["std"]), cache=entry.path)


def _stat(path: Path) -> tuple[int, int]:
  st = path.stat()
  return st.st_size, st.st_mtime_ns


def _skipped_note(entry: image_cache.Entry) -> str:
  n = len(entry.meta.get("skipped", []))
  return f"; {n} bad images skipped (listed in {entry.path / 'meta.json'})" if n else ""


def _decode(listing: Listing, paths: dict, options: FolderOptions, cache: Path, name: str,
            progress: bool, log, counts: str, ignored: str) -> image_cache.Entry:
  """Reads the headers (for the default size and channels, and to refuse bad or small
  images before decoding), then decodes into a new cache entry."""
  skipped: list[tuple[Path, Exception]] = []
  all_paths = [p for files in paths.values() for p in files]
  headers = dict(zip(all_paths, _headers(all_paths, progress)))
  good = {}
  for path, h in headers.items():
    if isinstance(h, images.BadImage):
      _bad(path, h, options.skip_bad_images, skipped)
    else:
      good[path] = h
  train_headers = [good[p] for p in paths["train"] if p in good]
  if not train_headers:
    raise UsageError(f"no training image of {listing.root} can be read")
  size = options.image_size or default_size(train_headers, list(good.values()))
  channels = options.channels or (1 if all(h.grey for h in good.values()) else 3)
  for path, h in good.items():
    try:
      images.check_size(h, size)
    except images.TooSmall as e:
      _bad(path, e, options.skip_bad_images, skipped)
  dropped = {p for p, _ in skipped}
  files = {s: [p for p in ps if p not in dropped] for s, ps in paths.items()}
  labels = {s: listing.labels[s][[p not in dropped for p in ps]] for s, ps in paths.items()}
  for split, fs in files.items():
    if not fs:
      raise UsageError(f"after skipping bad images the {split} split of {listing.root} is "
                       "empty; fix or replace its images")
  request = image_cache.Request(files, labels, size, channels)
  log(f"folder {listing.root}: {len(listing.classes)} classes, {counts} images (test: "
      f"{listing.test_from}){ignored}; decoding them once to {size[0]}x{size[1]}x{channels} "
      f"({images.POLICY}) into {cache}")
  meta = {"folder": str(listing.root.resolve()), "classes": list(listing.classes),
          "ignored": listing.ignored,
          "skipped": [[os.path.relpath(p, listing.root), str(e)] for p, e in skipped]}
  entry = image_cache.fill(cache, name, request, meta, progress=progress,
                           on_bad=lambda p, e: _bad(p, e, options.skip_bad_images, skipped))
  image_cache.remove_stale(cache, name.rsplit("-", 1)[0] + "-", name)
  m = entry.meta
  log(f"decoded {sum(m['counts'].values())} images in {m['decode_s']:.1f} s "
      f"({m['images_per_s']:.0f} images/s, {image_cache.workers()} threads)"
      + _skipped_note(entry))
  return entry
