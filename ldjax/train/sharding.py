"""Data parallelism: the batch split over the devices of a one-axis mesh, `data`.

A run uses the first `--devices` visible devices (default: all of them) as a
`jax.sharding.Mesh` with one axis, "data". Every batch that enters a
compiled program (images, stored feature maps, labels, masks) is sharded
along its first dimension over that axis; everything else (the weights,
BatchNorm statistics, the optimizer states, the running score sums S and A
of Eq. 2, the random key) is replicated on every device. The programs are
the same jitted functions as on one device (`ldjax.train.steps`); only the
shardings they are compiled for differ (`Placement.structs`,
`Placement.batch_struct`, and `out_shardings`): jit partitions the global
computation itself (GSPMD).

Why the decisions do not depend on the device count: each step is still
the computation on the global batch. The mean loss over the global batch
differentiates to the global gradient (XLA inserts the all-reduce), BatchNorm
normalises with the statistics of the global batch (its means over the batch
axis are all-reduced too), dropout masks are drawn from the same key with
partitionable threefry (`jax_threefry_partitionable`, JAX's default), so
they do not depend on the sharding either. The score sums fold in these
global gradients on every device alike. What changes with the device count
is only the order of floating-point additions inside the reductions
(relative differences around 1e-7), which moves a decision only if a score
sits on its threshold to that precision.

Every shard has the same static shape. The training batch must divide by
the device count (training skips the incomplete last batch of an epoch, so
every step has that shape). The evaluation batch is rounded up to a multiple
of it instead: its padded rows are masked out like those of the last, short
batch (`ldjax.data.batching.pad_rows`), so the result is the same, and a
preset such as the embedded data's 250 still runs on 4 or 8 devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ldjax.errors import UsageError

DATA = "data"   # the mesh axis the batch is split over


def device_count(requested: int | None, batch_size: int) -> int:
  """The number of devices a run uses: `requested`, or all visible ones when None.

  Raises UsageError (one line) when more are requested than are visible, or
  when the training batch does not divide by the count.
  """
  visible = jax.device_count()
  n = visible if requested is None else requested
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise UsageError(f"run.devices must be an integer > 0 (or unset for all), got {n!r}")
  if jax.process_count() > 1 and n != visible:
    raise UsageError(f"run.devices {n}: with {jax.process_count()} processes a run uses "
                     f"all {visible} devices of all processes; leave run.devices unset")
  if n > visible:
    kind = jax.devices()[0].platform
    raise UsageError(f"run.devices {n} asks for more devices than the {visible} visible "
                     f"({kind}); use at most {visible} or leave it unset")
  if batch_size % n:
    raise UsageError(f"run.batch_size {batch_size} does not divide by the {n} devices; "
                     f"use a multiple of {n} or set run.devices")
  return int(n)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run's arrays live: batches sharded over "data", the rest replicated."""
  mesh: Mesh

  @classmethod
  def of(cls, devices: int | None = None) -> "Placement":
    """The mesh of the first `devices` visible devices (default: all)."""
    chosen = jax.devices()[:devices] if devices is not None else jax.devices()
    return cls(Mesh(np.asarray(chosen), (DATA,)))

  @property
  def devices(self) -> int:
    return int(self.mesh.size)

  @property
  def batch(self) -> NamedSharding:
    """Split along the first (batch) dimension, replicated along the others."""
    return NamedSharding(self.mesh, PartitionSpec(DATA))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def round_up(self, n: int) -> int:
    """The smallest multiple of the device count that is >= n (a padded batch)."""
    return -(-n // self.devices) * self.devices

  @property
  def host_readable(self) -> NamedSharding:
    """The sharding of outputs the host reads whole (the extraction's feature rows):
    the batch sharding in one process; replicated when the mesh spans several
    processes, whose host could not read the other processes' rows."""
    return self.batch if jax.process_count() == 1 else self.replicated

  def put_batch(self, x) -> jax.Array:
    """A host batch (numpy: images, stored rows, labels) or a device array, sharded
    over "data". Its length must divide by the device count.

    With several processes every process passes the same global batch and puts
    only its own devices' rows (`make_array_from_callback`), without the
    all-process equality check `device_put` does there on every call."""
    if jax.process_count() > 1 and not isinstance(x, jax.Array):
      return _from_host(x, self.batch)
    return jax.device_put(x, self.batch)

  def put_local(self, x) -> jax.Array:
    """This process's rows of a global batch (numpy), sharded over "data": the
    global batch is every process's rows in process order (`Blocks.local`). The
    same as `put_batch` with one process."""
    if jax.process_count() == 1:
      return jax.device_put(x, self.batch)
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        self.batch, x, (len(x) * jax.process_count(), *x.shape[1:]))

  def replicate(self, tree: Any) -> Any:
    """A copy of `tree` on every device, never an alias of its buffers: the steps
    donate their state. (`device_put(..., may_alias=False)` alone still lets the
    shard on the array's own device share its buffer.) With several processes
    every process must pass the same values."""
    if jax.process_count() > 1:
      return jax.tree.map(lambda a: _replicated_copy(a, self.replicated), tree)
    return jax.device_put(jax.tree.map(jnp.copy, tree), self.replicated)

  def local_rows(self, fn):
    """`fn` of a batch as one process calls it: its rows of the global batch in (numpy,
    `put_local`), its rows of the output back when numpy reads them (`LocalRows`), so
    the host can go on while the devices compute."""
    return lambda x: LocalRows(fn(self.put_local(x)))

  def structs(self, tree: Any) -> Any:
    """Shapes and dtypes of `tree`, replicated: what a program is compiled for."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), tree)

  def batch_struct(self, struct: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """`struct` (a batch) sharded over "data"."""
    return jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=self.batch)


class LocalRows:
  """This process's rows of a batch-sharded global array, read when numpy asks for
  them (`np.asarray`): the host can go on while the devices compute."""

  def __init__(self, a: jax.Array):
    self.a = a

  def __array__(self, dtype=None, copy=None):
    if self.a.is_fully_addressable:
      out = np.asarray(self.a)
    else:
      shards = sorted(self.a.addressable_shards, key=lambda s: s.index[0].start or 0)
      out = np.concatenate([np.asarray(s.data) for s in shards])
    return out if dtype is None else out.astype(dtype)


def _from_host(x, sharding: NamedSharding) -> jax.Array:
  """A global array of host value `x` (the same in every process): each process
  fills only its own devices' shards, in fresh buffers."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: np.array(x[index]))


def _replicated_copy(a, sharding: NamedSharding):
  """`a` (host value, process-local or global array, or a typed PRNG key) replicated
  over a mesh of several processes."""
  if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_replicated_copy(jax.random.key_data(a), sharding),
                                    impl=jax.random.key_impl(a))
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    return jax.jit(jnp.copy, out_shardings=sharding)(a)
  return _from_host(a, sharding)
