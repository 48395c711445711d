"""Which examples form each batch: the epoch's order, its blocks per process, and the
padding of a last, short batch."""

from __future__ import annotations

import dataclasses

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


_BLOCKS = 0x626c6b73   # keeps the block orders apart from `epoch_permutation`'s


def shard_count(requested: int | None) -> int:
  """The number of blocks of a run: `requested` (--data-shards), else one per process."""
  if requested is not None:
    return requested
  import jax
  return jax.process_count()


def check_batch_split(batch: int, shards: int) -> None:
  """UsageError unless a batch of `batch` splits into `shards` equal parts."""
  if batch % shards:
    raise UsageError(f"run.batch_size {batch} does not divide by data.shards "
                     f"{shards}; use a multiple of {shards}")


@dataclasses.dataclass(frozen=True)
class Blocks:
  """The training set as `shards` equal, contiguous blocks, of which this process
  holds `shards / processes` consecutive ones (process `index`).

  One block (the default with one process) is today's order: each epoch a
  permutation of all n examples, cut into batches. With S blocks each epoch
  permutes every block on its own, and a batch of B takes B / S examples from
  each block, in block order; the n mod S examples past the last block are
  not trained on. A process then only ever needs its own blocks' images and
  stored maps, and its rows of a global batch are its devices' rows (the
  mesh lists each process's devices together). The order depends on S, not
  on the process count: a run of S processes and one of a single process
  with S blocks make the same batches.
  """
  n: int
  shards: int = 1
  processes: int = 1
  index: int = 0

  @classmethod
  def here(cls, n: int, shards: int | None = None) -> Blocks:
    """This process's blocks of `n` examples in `shard_count(shards)` blocks."""
    import jax
    return cls(n, shard_count(shards), jax.process_count(), jax.process_index())

  def __post_init__(self):
    if isinstance(self.shards, bool) or not isinstance(self.shards, (int, np.integer)) \
        or self.shards < 1:
      raise UsageError(f"data.shards must be an integer > 0 (or unset), got {self.shards!r}")
    if self.shards % self.processes:
      raise UsageError(f"data.shards {self.shards} does not divide by the {self.processes} "
                       f"processes; use a multiple of {self.processes}")
    if self.n < self.shards:
      raise UsageError(f"data.shards {self.shards} is more than the {self.n} training "
                       "examples")

  @property
  def size(self) -> int:
    """Examples per block."""
    return self.n // self.shards

  @property
  def used(self) -> int:
    """Examples trained on (all n with one block)."""
    return self.size * self.shards

  @property
  def start(self) -> int:
    """The first example this process holds; it holds [start, stop)."""
    return self.index * self.local_size

  @property
  def stop(self) -> int:
    return self.start + self.local_size

  @property
  def local_size(self) -> int:
    return self.size * (self.shards // self.processes)

  def check_batch(self, batch: int) -> None:
    """UsageError unless a batch of `batch` splits into one part per block."""
    check_batch_split(batch, self.shards)
    if batch // self.shards > self.size:
      raise UsageError(f"run.batch_size {batch} needs {batch // self.shards} examples from "
                       f"each of the {self.shards} data shards, which hold {self.size}; use "
                       "a smaller batch or fewer shards")

  def batches(self, seed: int, epoch: int, batch: int) -> np.ndarray:
    """[steps, batch] example indices of the epoch's batches (every process: all of them)."""
    if self.shards == 1:
      perm = epoch_permutation(seed, epoch, self.n)
      steps = self.n // batch
      return perm[:steps * batch].reshape(steps, batch)
    self.check_batch(batch)
    part = batch // self.shards
    steps = self.size // part
    orders = [np.random.default_rng(np.random.SeedSequence(
        [int(seed), int(epoch), _BLOCKS, s])).permutation(self.size)[:steps * part]
        .reshape(steps, part) + s * self.size for s in range(self.shards)]
    return np.concatenate(orders, axis=1).astype(np.int64)

  def local(self, idx: np.ndarray) -> np.ndarray:
    """This process's part of a batch `idx` of `batches`, as indices into its blocks."""
    part = idx.shape[-1] // self.processes
    return idx[..., self.index * part:(self.index + 1) * part] - self.start
