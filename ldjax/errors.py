"""The exceptions that cross layers: bad input, a diverged run, an interrupted run,
a checkpoint that could not be written.

Library code raises `UsageError` with a single line that says what is wrong and
how to fix it; the command line entry points print that line and exit with
status 2, without a traceback. `TrainingDiverged` (exit status 1) and
`Interrupted` (exit status 130) come from the training loop; the command
line and the store's fill both see them here, with no import cycle.
`CheckpointError` (exit status 1) comes from `ldjax.runs.checkpoint`.
"""

import errno

# The errnos of a full disk (or quota), wherever a write meets one.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class UsageError(ValueError):
  """Bad input from the user: a one-line, actionable message."""


class TrainingDiverged(RuntimeError):
  """The loss or the weights became NaN or Inf; the last good checkpoint is kept."""


class Interrupted(Exception):
  """`should_stop` asked the run to stop; the last complete epoch is checkpointed."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (a full disk, an I/O error).

  Its message is one line, for a full disk "no space left on DEVICE: N MB
  needed; free space and rerun with --resume". The last complete checkpoint
  is kept, so `--resume` continues from it.
  """
