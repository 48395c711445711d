"""Per-channel mean and std of uint8 images, from exact integer sums.

`channel_stats` reads an array (in chunks, so a memory-mapped one is never
held whole); `PixelSums` accumulates the same sums batch by batch, so a
decoder (`ldjax.data.image_cache`) gets the statistics without a second pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ldjax.errors import UsageError


@dataclasses.dataclass
class PixelSums:
  """Exact int64 sums of pixels and of squared pixels per channel, and their count."""
  total: np.ndarray
  total_sq: np.ndarray
  count: int = 0

  @classmethod
  def zeros(cls, channels: int) -> PixelSums:
    return cls(np.zeros(channels, np.int64), np.zeros(channels, np.int64))

  def add(self, x: np.ndarray) -> None:
    """Adds uint8 images [..., C]."""
    flat = x.reshape(-1, x.shape[-1])
    self.total += flat.sum(axis=0, dtype=np.int64)
    wide = flat.astype(np.uint16)  # 255**2 = 65025 fits in uint16.
    self.total_sq += (wide * wide).sum(axis=0, dtype=np.int64)
    self.count += len(flat)

  def merge(self, other: PixelSums) -> None:
    self.total += other.total
    self.total_sq += other.total_sq
    self.count += other.count

  def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std in [0, 1] units; a channel with zero spread (e.g. a constant
    synthetic image) gets std 1.0 so that `normalize` stays finite."""
    if not self.count:
      raise UsageError("cannot compute mean/std of an empty training split")
    mean = self.total / self.count / 255.0
    var = np.maximum(self.total_sq / self.count / 255.0**2 - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 0, std, 1.0)
    return (tuple(float(m) for m in mean), tuple(float(s) for s in std))


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...],
                                          tuple[float, ...]]:
  """Per-channel mean and std of uint8 images [N, H, W, C], in [0, 1] units.

  Sums of pixels and of squared pixels are accumulated exactly in int64 over
  chunks of ~4M values, so a 60000x160x160x3 array is never converted to
  float as a whole.
  """
  channels = x.shape[-1]
  flat = x.reshape(-1, channels)
  sums = PixelSums.zeros(channels)
  step = max(1, (1 << 22) // channels)
  for start in range(0, len(flat), step):
    sums.add(flat[start:start + step])
  return sums.mean_std()
