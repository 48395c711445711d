"""The training input on the devices when it fits: `DeviceInput`.

Without it every head step gathers its batch on the host (numpy fancy indexing
of the store, the crop windows cut in numpy, the images augmented there) and
puts it on the devices (`ldjax.train.reader`). With room on the devices
(`store.device_memory_gb` per device), the array the head reads (the feature
store's rows, or the training images) is put there once, sharded by rows over
the mesh's "data" axis, and a jitted reader, compiled once per array and
batch size, does the gather, the view choice, the crop window and the flip
there. A step then moves only small integer arrays from the host: the rows of
its examples' views, their crop offsets and flips (the epoch's `Draws`, drawn
on the host as before).

Exactly the batches of the host path: the reader moves data and computes
nothing. Float rows are gathered as their bit patterns (uint32, uint16 for
bfloat16) and the rows of a sharded array are collected with an integer
reduce-scatter in which every row has one contributor and zeros elsewhere,
so no sum can round or turn a -0.0 into 0.0. The same weights and decisions
follow (`tests/test_device_input.py`).

Budget: at most `budget_bytes` of each device hold the training input (the
store, or the images; each device holds its ceil(rows / devices) rows). A store
takes the place of the images (once the head reads a store it never reads the
images again); an evaluator's test cache may `claim` what is left. Whatever
does not fit stays on the host, read as before. The extraction that fills a
new store still reads its input on the host (once per drop). Unset, the
budget is 40 % of an accelerator's memory (the rest is the model's, its
activations' and XLA's), and 0 on XLA:CPU, whose device memory is host
memory: a copy there would hold the store twice for no measured gain
(experiments/results/input_wait/). With several processes the input stays on
the host (each process reads its own blocks there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from ldjax.data.augment import Augment, Draws
from ldjax.train.sharding import DATA, Placement

AUTO_SHARE = 0.4   # of an accelerator's memory, when store.device_memory_gb is unset
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def budget_bytes(gb: float | None, placement: Placement) -> int:
  """Bytes per device for the training input: `gb` GB, or unset (None) `AUTO_SHARE`
  of an accelerator's memory and 0 on XLA:CPU (see the module docstring)."""
  if gb is not None:
    return int(gb * (1 << 30))
  device = placement.mesh.devices.flat[0]
  if device.platform == "cpu":
    return 0
  stats = device.memory_stats() or {}
  return int(AUTO_SHARE * stats.get("bytes_limit", 0))


@dataclasses.dataclass
class Resident:
  """A host array's rows on the devices, as their bit pattern, sharded over "data"."""
  source: object          # the host array (images) or FeatureStore it copies
  bits: jax.Array         # [rows padded to a multiple of the devices, ...] unsigned ints
  dtype: np.dtype         # of the host array
  bytes_per_device: int
  programs: dict = dataclasses.field(default_factory=dict)   # (batch, kind) -> compiled

  def delete(self) -> None:
    """Drops this copy: its buffers are freed once no program still in flight reads
    them (no explicit `jax.Array.delete`, which would not wait for those)."""
    self.bits = None
    self.programs.clear()


def rows_bytes(shape, dtype, devices: int) -> int:
  """Bytes on each device of an array of `shape` sharded by rows over `devices`."""
  return -(-shape[0] // devices) * int(np.prod(shape[1:])) * np.dtype(dtype).itemsize


class DeviceInput:
  """The training input of one run kept on the devices of `placement`, within
  `budget_bytes` per device; `reader` gives a step's batch from there."""

  def __init__(self, placement: Placement, budget_bytes: int):
    self.placement, self.budget_bytes = placement, int(budget_bytes)
    self.held: dict[str, Resident] = {}   # "images", "store"
    self.claims: dict[str, int] = {}      # bytes per device others keep here (test caches)

  @property
  def used_bytes(self) -> int:
    return sum(r.bytes_per_device for r in self.held.values()) + sum(self.claims.values())

  def claim(self, name: str, bytes_per_device: int) -> bool:
    """Whether `name` (an evaluator's test cache) may keep `bytes_per_device` on each
    device beside what is held, replacing its previous claim; recorded if so."""
    self.claims.pop(name, None)   # the new cache replaces the previous one
    ok = (jax.process_count() == 1 and self.budget_bytes > 0
          and bytes_per_device + self.used_bytes <= self.budget_bytes)
    if ok:
      self.claims[name] = int(bytes_per_device)
    return ok

  def reader(self, draws: Draws, batch: int, images: np.ndarray, store=None, size=None,
             image_size=None) -> Callable[[np.ndarray], jax.Array] | None:
    """examples -> their batch on the devices (sharded over "data"), equal to the host
    path's: `draws.images(images, idx)`, or with `store` (a FeatureStore)
    `draws.features(store.read(draws.rows(idx)), idx, size, image_size)`, for batches of
    `batch` examples. None when it does not fit the budget (or with several
    processes): read on the host then. Its program is compiled here, once per held
    array, batch and kind of view."""
    if self.budget_bytes <= 0 or jax.process_count() > 1:
      return None
    if store is None:
      held = self._hold("images", images)
      kind = ("images", draws.augment)
    else:   # the head reads the store from now on, never the images again
      self.release("images")
      held = self._hold("store", store, store.read(slice(None)))
      kind = ("features", None if draws.exact else tuple(size))
    if held is None:
      return None
    fn = self._program(held, batch, kind)
    put = self._put

    def read(idx: np.ndarray) -> jax.Array:
      if store is None:
        rows, offsets = idx, draws.offsets[idx]
      else:
        rows = draws.rows(idx)
        offsets = (draws.offsets[idx] if draws.exact else
                   draws.feature_offsets(idx, size, image_size, held.bits.shape[1:3]))
      return fn(held.bits, put(rows.astype(np.int32), replicated=True), put(draws.flips[idx]),
                put(offsets.astype(np.int32)))
    return read

  def release(self, name: str | None = None) -> None:
    """Frees what is held (one entry, or all; all claims too)."""
    if name is None:
      self.claims.clear()
    for key in [name] if name is not None else list(self.held):
      held = self.held.pop(key, None)
      if held is not None:
        held.delete()

  def _hold(self, name: str, source, array: np.ndarray | None = None) -> Resident | None:
    """`source`'s rows (`array`, default `source`) on the devices, put there now unless
    already held, or None when they do not fit beside what else is held."""
    held = self.held.get(name)
    if held is not None and held.source is source:
      return held
    self.release(name)
    array = source if array is None else array
    need = rows_bytes(array.shape, array.dtype, self.placement.devices)
    if need + self.used_bytes > self.budget_bytes:
      return None
    bits = np.asarray(array).view(_BITS[array.dtype.itemsize])
    self.held[name] = Resident(source, _put_rows(bits, self.placement), np.dtype(array.dtype),
                               need)
    return self.held[name]

  # -- a step's batch ---------------------------------------------------------------

  def _put(self, a: np.ndarray, replicated: bool = False) -> jax.Array:
    p = self.placement
    return jax.device_put(a, p.replicated if replicated else p.batch)

  def _program(self, held: Resident, batch: int, kind: tuple):
    """The reader of `held` for batches of `batch` and `kind` ("images", augment) or
    ("features", window size or None), compiled ahead of time once."""
    key = (batch, kind)
    if key not in held.programs:
      p = self.placement
      if kind[0] == "images":
        fn = _augmented_images(kind[1], p)
      else:
        fn = _stored_features(held.dtype, kind[1], p)
      struct = lambda shape, dtype, sharding: jax.ShapeDtypeStruct(   # noqa: E731
          shape, dtype, sharding=sharding)
      held.programs[key] = jax.jit(fn, out_shardings=p.batch).lower(
          held.bits, struct((batch,), np.int32, p.replicated),
          struct((batch,), np.bool_, p.batch), struct((batch, 2), np.int32, p.batch)).compile()
    return held.programs[key]


def _put_rows(bits: np.ndarray, placement: Placement) -> jax.Array:
  """`bits` sharded by rows over "data", zero rows appended up to a multiple of the
  devices (only the last shard's rows are copied to pad them)."""
  rows = placement.round_up(len(bits))
  if rows == len(bits):
    return jax.device_put(bits, placement.batch)

  def shard(index):
    part = bits[index[0]]
    missing = (index[0].stop or rows) - (index[0].start or 0) - len(part)
    return np.concatenate([part, np.zeros((missing, *bits.shape[1:]), bits.dtype)]) \
        if missing else part
  return jax.make_array_from_callback((rows, *bits.shape[1:]), placement.batch, shard)


# -- the jitted readers (pure functions of the held bits and a step's small arrays) ------

def gather_rows(bits: jax.Array, rows: jax.Array, placement: Placement) -> jax.Array:
  """bits[rows] (rows replicated; bits sharded by rows over "data"), sharded over "data".

  Each device takes the requested rows it holds, zeros for the others; an integer
  reduce-scatter then gives every device its part of the batch. Exact: each row
  has one contributor."""
  if placement.devices == 1:
    return jnp.take(bits, rows, axis=0, mode="clip")

  def local(part, rows):
    n = part.shape[0]
    mine = rows - lax.axis_index(DATA) * n
    inside = (mine >= 0) & (mine < n)
    got = jnp.take(part, jnp.clip(mine, 0, n - 1), axis=0, mode="clip")
    got = jnp.where(inside.reshape(-1, *([1] * (got.ndim - 1))), got, jnp.zeros_like(got))
    # NCCL reduces no 16-bit integers: bfloat16's bit patterns travel as uint32 (exact).
    wide = got.dtype == jnp.uint16
    out = lax.psum_scatter(got.astype(jnp.uint32) if wide else got, DATA,
                           scatter_dimension=0, tiled=True)
    return out.astype(jnp.uint16) if wide else out

  return jax.shard_map(local, mesh=placement.mesh, in_specs=(PartitionSpec(DATA), PartitionSpec()),
                       out_specs=PartitionSpec(DATA))(bits, rows)


def windows(x: jax.Array, offsets: jax.Array, size) -> jax.Array:
  """Per row b, x[b, dy:dy + h, dx:dx + w] for (dy, dx) = offsets[b]
  (`ldjax.data.augment.window`)."""
  h, w = size
  cut = lambda a, o: lax.dynamic_slice(a, (o[0], o[1], 0), (h, w, a.shape[-1]))  # noqa: E731
  return jax.vmap(cut)(x, offsets)


def _augmented_images(augment: Augment, placement: Placement):
  """(bits, idx, flips, offsets) -> crop(flip(pad(images[idx]))) (`Augment.augmented`)."""
  def fn(bits, idx, flips, offsets):
    x = gather_rows(bits, idx, placement)
    _, h, w, _ = x.shape
    if not augment.flip and not augment.pad:
      return x
    p = augment.pad
    if p:
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    if augment.flip:
      x = jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
    return windows(x, offsets, (h, w)) if p else x
  return fn


def _stored_features(dtype, window, placement: Placement):
  """(bits, rows, flips, offsets) -> the head's input: the stored rows (of `dtype`), or
  their `window` at `offsets` (the flips are the stored views')."""
  dtype = jnp.dtype(dtype)

  def fn(bits, rows, flips, offsets):
    x = gather_rows(bits, rows, placement)
    if window is not None:
      x = windows(x, offsets, window)
    return lax.bitcast_convert_type(x, dtype)
  return fn
