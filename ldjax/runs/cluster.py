"""Several processes (hosts) in one run: starting the cluster, and who writes.

Every process of a `jax.distributed` cluster runs the same program on the
same data (`ldjax.train.sharding` puts each process's rows of a batch on its
own devices). Of a run's files, one process writes each:

- the primary process (index 0) writes config.json, metrics.jsonl,
  summary.json, the comparison, report and figures, and the final weights
  (`is_primary`);
- every process calls orbax's `CheckpointManager` (it coordinates them and
  writes each array once), so the checkpoints need a directory that all
  processes see (a shared filesystem; on one machine, any directory);
- every process keeps its own disk feature store, in
  `features/process-<index>` of the run (`store_directory`).

`barrier` waits until every process reaches the same point (after the work
directory is checked, before anything is written into it; after process 0
wrote a finished run, which the next chunk of a data schedule reads);
`agree` makes a choice each process takes from its own state the same in
all of them (a store that one process cannot write is written by none).
"""

from __future__ import annotations

from pathlib import Path

from ldjax.errors import UsageError


def initialize(coordinator: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """Joins the cluster, before anything asks jax for its devices.

  coordinator: "HOST:PORT" of process 0 (then `num_processes` and
  `process_id` are needed too), "auto" for a cluster manager JAX detects
  (SLURM, Open MPI, Kubernetes with JobSet, Cloud TPU: no other argument),
  or None for one process. A process that has already joined (a library
  user's own `jax.distributed.initialize`) is left as it is.
  """
  import jax
  given = (num_processes is not None, process_id is not None)
  if coordinator is None:
    if any(given):
      raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT")
    return
  if coordinator == "auto":
    if any(given):
      raise UsageError("--coordinator auto takes the cluster from its manager; "
                       "drop --num-processes and --process-id")
  else:
    if not all(given):
      raise UsageError(f"--coordinator {coordinator}: give --num-processes N and "
                       "--process-id I (0 to N-1) too, or --coordinator auto")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
      raise UsageError(f"--coordinator {coordinator!r} is not HOST:PORT "
                       "(e.g. localhost:1234 or 10.0.0.1:1234)")
    if num_processes < 1:
      raise UsageError(f"--num-processes {num_processes}: must be at least 1")
    if not 0 <= process_id < num_processes:
      raise UsageError(f"--process-id {process_id}: must be in 0..{num_processes - 1}")
  if jax.distributed.is_initialized():
    return
  try:
    if coordinator == "auto":
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise UsageError(f"cannot join the cluster at --coordinator {coordinator} ({first})") \
        from None


def processes() -> int:
  import jax
  return jax.process_count()


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0, or the only one)."""
  import jax
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Returns when every process has called `barrier(name)`; at once with one process."""
  if processes() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"ldjax:{name}")


def agree(ok: bool) -> bool:
  """Whether `ok` holds in every process (each passes its own); `ok` with one process.

  For choices each process makes from its own state (room for its store,
  whether its store verifies, whether a step fits its device) that must come
  out the same everywhere: the processes call the same programs in the same
  order or wait for each other forever."""
  if processes() == 1:
    return bool(ok)
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(ok)))))


def store_directory(run_path: Path) -> Path:
  """Where this process's disk feature store goes in the run directory `run_path`."""
  if processes() == 1:
    return run_path / "features"
  import jax
  return run_path / "features" / f"process-{jax.process_index()}"
