"""Which examples form each batch: the epoch's order and the padding of a last, short batch."""

from __future__ import annotations

import numpy as np

from ldjax.errors import UsageError


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  """`a` with zero rows appended up to `rows` (a last, incomplete batch)."""
  if len(a) == rows:
    return a
  return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of one epoch: an int64 permutation of range(n).

  A pure function of (seed, epoch, n), so a resumed run replays exactly the
  order an uninterrupted one would have used, with no RNG state to save.
  """
  for name, value in (("seed", seed), ("epoch", epoch), ("n", n)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < 0:
      # SeedSequence rejects negative entropy; say so in our own words.
      raise UsageError(f"{name} must be >= 0, got {value}")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
  return rng.permutation(int(n)).astype(np.int64)
