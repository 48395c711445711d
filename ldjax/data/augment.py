"""Data augmentation that survives a drop: the same view whether computed or read from a store.

An augmented training image is `crop(flip(pad(x)))`: zero-padded by `pad`
pixels on each side (`crop`), mirrored left-right (`flip`), then cut back to
its size at an offset (dy, dx) in [0, 2 pad]^2. The draws are a pure function
of (seed, epoch, example index), like the epoch's order, so a resumed run and
every strategy see the same views.

A feature store holds, per image, the dropped stages' output for each *view*
the draws can ask for before the crop: `views` = 2 with `flip` (as is,
mirrored), else 1; the view of image i is row `view * N + i`. With `crop` the
views are of the padded image, so a stored map is larger than the head's
input, and the head reads the window at the feature-map offset that matches
(dy, dx):

- flip is exact: a stored view is what the frozen stages compute for that
  image, so Drop reads what Freeze computes.
- crop is approximate: the window of the padded image's map equals the map of
  the cropped image except (a) within the tail's receptive field of the
  window's border, where the padded image's map saw the pixels (or zero
  padding) beyond the crop instead of the convolutions' own zero padding, and
  (b) where the map is downsampled: the offset is rounded to the nearest
  multiple of the tail's stride (offset x map size / image size). At a
  stride-1 map only (a) applies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ldjax.errors import UsageError

NAMES = ("none", "flip", "crop", "flip,crop")
_STREAM = 0x61756720   # keeps these draws apart from the epoch order's (same seed, epoch)


def default_crop_pad(image_shape) -> int:
  """4 pixels at 32x32, 2 at 28x28 (and about an eighth of the side elsewhere)."""
  side = min(image_shape[:2])
  return {28: 2, 32: 4}.get(side, max(1, round(side / 8)))


@dataclasses.dataclass(frozen=True)
class Augment:
  """Which augmentations apply (`flip`, and `crop` when `pad` > 0)."""
  flip: bool = False
  pad: int = 0

  @classmethod
  def parse(cls, name: str, pad: int | None, image_shape) -> Augment:
    """From `--augment` and `--crop-pad` (None: `default_crop_pad`); UsageError if bad."""
    if name not in NAMES:
      raise UsageError(f"unknown --augment {name!r}; choose from {', '.join(NAMES)}")
    crop = "crop" in name
    if not crop:
      return cls(flip="flip" in name)
    pad = default_crop_pad(image_shape) if pad is None else pad
    side = min(image_shape[:2])
    if not 1 <= pad < side:
      raise UsageError(f"--crop-pad must be an integer in [1, {side - 1}] for "
                       f"{side}x{side} images, got {pad}")
    return cls(flip="flip" in name, pad=pad)

  @property
  def name(self) -> str:
    return ",".join(n for n, on in (("flip", self.flip), ("crop", self.pad > 0)) if on) or "none"

  @property
  def views(self) -> int:
    return 2 if self.flip else 1

  def view_shape(self, shape) -> tuple[int, ...]:
    """(H, W, C) of a view: the padded image with `crop`."""
    h, w, c = shape
    return (h + 2 * self.pad, w + 2 * self.pad, c)

  def draws(self, seed: int, epoch: int, n: int) -> Draws:
    """The epoch's flips and crop offsets of all n examples."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), _STREAM]))
    flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
    offsets = rng.integers(0, 2 * self.pad + 1, size=(n, 2)) if self.pad else np.zeros(
        (n, 2), np.int64)
    return Draws(self, flips, offsets)

  def views_of(self, images: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The views of `images` before the crop: padded with `crop`, mirrored where
    `mirrored` (bool per image) with `flip`."""
    p = self.pad
    views = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
    return np.where(mirrored[:, None, None, None], views[:, :, ::-1], views) if self.flip \
        else views


@dataclasses.dataclass(frozen=True)
class Draws:
  """One epoch's augmentation of every example."""
  augment: Augment
  flips: np.ndarray     # bool [N]
  offsets: np.ndarray   # int [N, 2]: (dy, dx) of the crop in the padded image

  def block(self, start: int, stop: int) -> Draws:
    """The draws of examples [start, stop), indexed from 0 (one process's blocks,
    `ldjax.data.batching.Blocks`)."""
    return Draws(self.augment, self.flips[start:stop], self.offsets[start:stop])

  def rows(self, idx: np.ndarray) -> np.ndarray:
    """Store rows of the views examples `idx` draw."""
    return self.flips[idx].astype(np.int64) * len(self.flips) + idx

  def images(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The augmented images of examples `idx` of `x` (N, H, W, C)."""
    batch = x[idx]
    if self.augment == Augment():
      return batch
    views = self.augment.views_of(batch, self.flips[idx])
    return window(views, self.offsets[idx], batch.shape[1:3])

  def features(self, stored: np.ndarray, idx: np.ndarray, size: tuple[int, int],
               image_size: tuple[int, int]) -> np.ndarray:
    """The head's input for examples `idx` from their stored views' maps `stored`:
    the `size` window at the crop offset scaled to the map (see the module docstring)."""
    if not self.augment.pad:
      return stored
    scale = np.array(size) / np.array(image_size)
    limit = np.array(stored.shape[1:3]) - np.array(size)
    offsets = np.clip(np.rint(self.offsets[idx] * scale), 0, limit).astype(np.int64)
    return window(stored, offsets, size)


def window(x: np.ndarray, offsets: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Per row b, x[b, dy:dy + h, dx:dx + w] for (dy, dx) = offsets[b]."""
  h, w = size
  rows = offsets[:, :1] + np.arange(h)        # [B, h]
  cols = offsets[:, 1:] + np.arange(w)        # [B, w]
  b = np.arange(len(x))[:, None, None]
  return x[b, rows[:, :, None], cols[:, None, :]]


class ViewSource:
  """The stored views of the images, indexable by store row (for the first extraction)."""

  def __init__(self, images: np.ndarray, augment: Augment):
    self.images, self.augment = images, augment

  def __len__(self) -> int:
    return self.augment.views * len(self.images)

  def __getitem__(self, rows: np.ndarray) -> np.ndarray:
    n = len(self.images)
    return self.augment.views_of(self.images[rows % n], rows >= n)
