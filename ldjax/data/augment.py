"""Data augmentation that survives a drop: the same view whether computed or read from a store.

An augmented training image is `crop(flip(pad(x)))`: zero-padded by `pad`
pixels on each side (`crop`), mirrored left-right (`flip`), then cut back to
its size at an offset (dy, dx) in [0, 2 pad]^2. The draws are a pure function
of (seed, epoch, example index), like the epoch's order, so a resumed run and
every strategy see the same views.

A feature store holds, per image, the dropped stages' output for each *view*
the draws can ask for; the view v of image i is row `v * N + i`. How a store
serves the crop (`--crop-store`):

- "views" (the default): exact. Each image has `crop_views` (K) fixed views,
  a flip and a crop offset each, drawn once per run (`ViewTable`). Once a
  prefix of the model is frozen (Freeze and Drop, from the epoch after their
  first decision), every epoch picks one of the K views of each image
  (`draws(..., fixed=True)`): Freeze computes that view's image, Drop reads
  the frozen stages' output for it from the store, which holds K maps of the
  head's input size per image. Both see exactly the same input, so Freeze
  and Drop stay equal. Before the first decision, and for SGD always, every
  epoch draws fresh views.
- "window": approximate, the fresh view of every epoch. The store holds the
  maps of the padded image (as is, and mirrored with `flip`), larger than the
  head's input, and the head reads the window at the feature-map offset that
  matches (dy, dx). It equals the map of the cropped image except (a) within
  the tail's receptive field of the window's border, where the padded
  image's map saw the pixels (or zero padding) beyond the crop instead of the
  convolutions' own zero padding, and (b) where the map is downsampled: the
  offset is rounded to the nearest multiple of the tail's stride (offset x
  map size / image size). At a stride-1 map only (a) applies.

`flip` alone is exact either way: the store holds both views of every image
(as is, mirrored), and every epoch draws fresh flips.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ldjax import settings
from ldjax.errors import UsageError

NAMES = ("none", "flip", "crop", "flip,crop")
CROP_STORES = ("views", "window")
DEFAULT_CROP_VIEWS = 4
_STREAM = 0x61756720   # keeps these draws apart from the epoch order's (same seed, epoch)
_TABLE = 0x76696577    # the fixed views' table
_CHOICE = 0x63686f6f   # an epoch's choice among the fixed views


def default_crop_pad(image_shape) -> int:
  """4 pixels at 32x32, 2 at 28x28 (and about an eighth of the side elsewhere)."""
  side = min(image_shape[:2])
  return {28: 2, 32: 4}.get(side, max(1, round(side / 8)))


@settings.group("augment", "augmentation and how a store serves it")
class AugmentSettings:
  """Training augmentation (`Augment`), and how a feature store serves crop after a drop."""
  ops: str = settings.setting(
      "none", "training augmentation: none, flip (horizontal), crop (pad, crop back), flip,crop "
      "(default: flip,crop for cifar10 and imagenette, none for the others)", flat="augment",
      metavar="NAME", common=True)
  crop_pad: int | None = settings.setting(
      None, "pixels of zero padding of the crop (default 4 at 32x32, 2 at 28x28)", metavar="P")
  crop_store: str = settings.setting(
      "views", "how a feature store serves --augment crop after a drop: views (exact: each "
      "image has --crop-views fixed views, a crop and a flip each, stored once; Freeze and "
      "Drop pick one per epoch; default) or window (approximate: a window of the padded "
      "image's stored map, offset rounded to the map's stride)", metavar="HOW")
  crop_views: int | None = settings.setting(
      None, f"exact views per image with --crop-store views (default {DEFAULT_CROP_VIEWS}); "
      "the store holds K maps per image", metavar="K")

  def check(self):
    settings.check_choice(self.ops, "augment.ops", NAMES)
    if self.crop_pad is not None:
      settings.check_int(self.crop_pad, "augment.crop_pad", "an integer > 0 (or unset)",
                         lambda v: v > 0)
    settings.check_choice(self.crop_store, "augment.crop_store", CROP_STORES)
    if self.crop_views is not None:
      settings.check_int(self.crop_views, "augment.crop_views",
                         f"an integer >= 1 (or unset for {DEFAULT_CROP_VIEWS})", lambda v: v >= 1)

  def for_images(self, image_shape) -> Augment:
    """The augmentation of images of `image_shape`; UsageError if it cannot apply."""
    return Augment.parse(self.ops, self.crop_pad, image_shape, self.crop_store, self.crop_views)


@dataclasses.dataclass(frozen=True)
class Augment:
  """Which augmentations apply (`flip`, and `crop` when `pad` > 0), and how a store
  serves the crop: `crop_views` K > 0 exact views per image, or 0 for the window."""
  flip: bool = False
  pad: int = 0
  crop_views: int = 0

  @classmethod
  def parse(cls, name: str, pad: int | None, image_shape, store: str = "views",
            views: int | None = None) -> Augment:
    """From `--augment`, `--crop-pad` (None: `default_crop_pad`), `--crop-store` and
    `--crop-views` (None: `DEFAULT_CROP_VIEWS`); UsageError if bad."""
    if name not in NAMES:
      raise UsageError(f"unknown augment.ops {name!r}; choose from {', '.join(NAMES)}")
    if store not in CROP_STORES:
      raise UsageError(f"unknown augment.crop_store {store!r}; choose from {', '.join(CROP_STORES)}")
    views = DEFAULT_CROP_VIEWS if views is None else views
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
      raise UsageError(f"augment.crop_views must be an integer >= 1, got {views!r}")
    crop = "crop" in name
    if not crop:
      return cls(flip="flip" in name)
    pad = default_crop_pad(image_shape) if pad is None else pad
    side = min(image_shape[:2])
    if not 1 <= pad < side:
      raise UsageError(f"augment.crop_pad must be an integer in [1, {side - 1}] for "
                       f"{side}x{side} images, got {pad}")
    return cls(flip="flip" in name, pad=pad, crop_views=views if store == "views" else 0)

  @property
  def name(self) -> str:
    return ",".join(n for n, on in (("flip", self.flip), ("crop", self.pad > 0)) if on) or "none"

  @property
  def fixed_views(self) -> bool:
    """True when a store holds K exact views per image (crop with --crop-store views)."""
    return self.pad > 0 and self.crop_views > 0

  @property
  def views(self) -> int:
    """Stored views per image."""
    if self.fixed_views:
      return self.crop_views
    return 2 if self.flip else 1

  def view_shape(self, shape) -> tuple[int, ...]:
    """(H, W, C) of a stored view's image: the padded image with the window."""
    if not self.pad or self.fixed_views:
      return tuple(shape)
    h, w, c = shape
    return (h + 2 * self.pad, w + 2 * self.pad, c)

  def _fresh(self, rng: np.random.Generator, shape: tuple[int, ...]):
    flips = rng.random(shape) < 0.5 if self.flip else np.zeros(shape, bool)
    offsets = (rng.integers(0, 2 * self.pad + 1, size=(*shape, 2)) if self.pad
               else np.zeros((*shape, 2), np.int64))
    return flips, offsets

  def draws(self, seed: int, epoch: int, n: int, table: ViewTable | None = None) -> Draws:
    """The epoch's flips and crop offsets of all n examples: fresh, or with `table`
    (fixed views, `view_table`) one of each example's K views."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), _STREAM]))
    if table is None or not self.fixed_views:
      flips, offsets = self._fresh(rng, (n,))
      return Draws(self, flips, offsets, flips.astype(np.int64), exact=not self.pad)
    choice = np.random.default_rng(np.random.SeedSequence(
        [int(seed), int(epoch), _CHOICE])).integers(0, self.crop_views, n)
    i = np.arange(n)
    return Draws(self, table.flips[choice, i], table.offsets[choice, i], choice, exact=True)

  def view_table(self, seed: int, n: int) -> ViewTable | None:
    """The K fixed views of each of n examples (None unless `fixed_views`)."""
    if not self.fixed_views:
      return None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TABLE]))
    return ViewTable(*self._fresh(rng, (self.crop_views, n)))

  def views_of(self, images: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The views of `images` before the crop: padded with `crop`, mirrored where
    `mirrored` (bool per image) with `flip`."""
    p = self.pad
    views = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
    return np.where(mirrored[:, None, None, None], views[:, :, ::-1], views) if self.flip \
        else views

  def augmented(self, images: np.ndarray, flips: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """crop(flip(pad(images))) with these flips and (dy, dx) offsets, one per image."""
    if not self.flip and not self.pad:
      return images
    views = self.views_of(images, flips)
    return window(views, offsets, images.shape[1:3]) if self.pad else views


@dataclasses.dataclass(frozen=True)
class ViewTable:
  """The K fixed views of every example: view k of example i is (flips[k, i],
  offsets[k, i]); its store row is k * N + i."""
  flips: np.ndarray     # bool [K, N]
  offsets: np.ndarray   # int [K, N, 2]

  def block(self, start: int, stop: int) -> ViewTable:
    """The views of examples [start, stop), indexed from 0 (one process's blocks)."""
    return ViewTable(self.flips[:, start:stop], self.offsets[:, start:stop])


@dataclasses.dataclass(frozen=True)
class Draws:
  """One epoch's augmentation of every example."""
  augment: Augment
  flips: np.ndarray     # bool [N]
  offsets: np.ndarray   # int [N, 2]: (dy, dx) of the crop in the padded image
  view: np.ndarray      # int [N]: the stored view each example reads
  exact: bool = True    # stored views are the augmented images' (else: windows of them)

  def block(self, start: int, stop: int) -> Draws:
    """The draws of examples [start, stop), indexed from 0 (one process's blocks,
    `ldjax.data.batching.Blocks`)."""
    return Draws(self.augment, self.flips[start:stop], self.offsets[start:stop],
                 self.view[start:stop], self.exact)

  def rows(self, idx: np.ndarray) -> np.ndarray:
    """Store rows of the views examples `idx` draw."""
    return self.view[idx] * len(self.view) + idx

  def images(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The augmented images of examples `idx` of `x` (N, H, W, C)."""
    return self.augment.augmented(x[idx], self.flips[idx], self.offsets[idx])

  def features(self, stored: np.ndarray, idx: np.ndarray, size: tuple[int, int],
               image_size: tuple[int, int]) -> np.ndarray:
    """The head's input for examples `idx` from their stored views' maps `stored`:
    as stored when exact, else the `size` window at the crop offset scaled to the map
    (see the module docstring)."""
    if self.exact:
      return stored
    return window(stored, self.feature_offsets(idx, size, image_size, stored.shape[1:3]), size)

  def feature_offsets(self, idx: np.ndarray, size: tuple[int, int], image_size: tuple[int, int],
                      map_size: tuple[int, int]) -> np.ndarray:
    """(dy, dx) of the `size` windows in stored maps of `map_size` for examples `idx`:
    the crop offsets scaled to the map, rounded, kept inside it."""
    scale = np.array(size) / np.array(image_size)
    limit = np.array(map_size) - np.array(size)
    return np.clip(np.rint(self.offsets[idx] * scale), 0, limit).astype(np.int64)


def window(x: np.ndarray, offsets: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Per row b, x[b, dy:dy + h, dx:dx + w] for (dy, dx) = offsets[b]."""
  h, w = size
  rows = offsets[:, :1] + np.arange(h)        # [B, h]
  cols = offsets[:, 1:] + np.arange(w)        # [B, w]
  b = np.arange(len(x))[:, None, None]
  return x[b, rows[:, :, None], cols[:, None, :]]


class ViewSource:
  """The stored views of the images, indexable by store row (for the first extraction):
  with a `table`, row k * N + i is view k of image i, cropped; else the padded image
  (as is, then mirrored with flip)."""

  def __init__(self, images: np.ndarray, augment: Augment, table: ViewTable | None = None):
    self.images, self.augment, self.table = images, augment, table

  def __len__(self) -> int:
    return self.augment.views * len(self.images)

  def __getitem__(self, rows: np.ndarray) -> np.ndarray:
    n = len(self.images)
    k, i = rows // n, rows % n
    if self.table is None:
      return self.augment.views_of(self.images[i], k > 0)
    return self.augment.augmented(self.images[i], self.table.flips[k, i],
                                  self.table.offsets[k, i])
