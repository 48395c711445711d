"""A head batch that grows as the head shrinks (`--adaptive-batch`, the paper's future work).

After a drop the head's step is cheaper per example, so at the same batch a
device does less work per step. With `--adaptive-batch` the batch of the
epochs after a drop is

    batch(cut) = --batch-size * k,   k = floor(train MACs of the whole model
                                               / train MACs of the head [cut, L))

per example (`ldjax.models.costs.training_macs`: a trained stage costs 3x
its forward MACs, Drop's stored prefix nothing), capped so that the batch is
at most `--max-batch-size` (default 8 x --batch-size) and leaves at least one
step per epoch. k is an integer, so the batch still divides by the device
count. Where the device reports its memory (GPUs), k is halved while XLA's
estimate of the compiled step's memory exceeds 90 % of it; XLA:CPU reports
none, so on a CPU only the cap bounds it.

The learning rate is scaled by `--adaptive-lr`: `linear` (k x lr, Goyal et
al. 2017, the default for SGD) or `sqrt` (sqrt(k) x lr, often used with
Adam), and the schedule advances k base steps per step
(`ldjax.train.optim.make_optimizer`'s `stride`), so it stays a function of
the examples seen: an epoch at batch kB advances k * floor(N / kB) base
steps, up to k - 1 fewer than floor(N / B), as that epoch sees up to kB - 1
fewer examples (the incomplete last batch is skipped).

Freeze uses Drop's batch (computed from Drop's head cost), so Freeze and Drop
still make the same decisions and end with the same weights; SGD never
drops, so its batch never grows. metrics.jsonl records each epoch's
`batch_size` and `lr_scale`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ldjax import settings
from ldjax.errors import UsageError
from ldjax.models import costs

__all__ = ["LR_RULES", "AdaptiveSettings", "multiplier", "lr_scale", "fits_memory"]
LR_RULES = ("linear", "sqrt")
DEFAULT_CAP = 8   # --max-batch-size defaults to this many times --batch-size
MEMORY_FRACTION = 0.9


@settings.group("adaptive", "a head batch that grows after a drop")
class AdaptiveSettings:
  """Whether and how far the head's batch grows after a drop, and how its lr scales."""
  enabled: bool = settings.setting(
      False, "after a drop, grow the batch in proportion to how much cheaper the head's "
      "training step is per example (k = whole model's / head's training MACs, an integer), "
      "capped by --max-batch-size and the device's memory; the lr scales by --adaptive-lr; "
      "Freeze uses Drop's batch; metrics.jsonl records it per epoch", flat="adaptive_batch")
  max_batch_size: int | None = settings.setting(
      None, "with --adaptive-batch: the largest batch (default: 8 x --batch-size)",
      metavar="N")
  lr_rule: str = settings.setting(
      "linear", "with --adaptive-batch: how the lr scales with the batch's multiplier k: "
      "linear (k x lr, default) or sqrt (sqrt(k) x lr)", flat="adaptive_lr", metavar="RULE")

  def check(self):
    settings.check_bool(self.enabled, "adaptive.enabled")
    settings.check_choice(self.lr_rule, "adaptive.lr_rule", LR_RULES)
    if self.lr_rule != "linear" and not self.enabled:
      raise UsageError("adaptive.lr_rule applies to adaptive.enabled; enable it or drop the "
                       "setting")
    if self.max_batch_size is not None:   # and >= run.batch_size: `Config`
      settings.check_int(self.max_batch_size, "adaptive.max_batch_size",
                         "an integer > 0 (or unset)", lambda v: v > 0)


def multiplier(macs: Sequence[int], cut: int, *, batch_size: int, n_train: int,
               max_batch_size: int | None = None) -> int:
  """k of the module doc: how many times --batch-size the head's batch is at `cut`."""
  full = costs.training_macs(macs, 0, "sgd")
  head = costs.training_macs(macs, cut, "drop")
  k = max(1, full // max(head, 1))
  cap = (max_batch_size or DEFAULT_CAP * batch_size) // batch_size
  return int(max(1, min(k, cap, n_train // batch_size)))


def lr_scale(k: int, rule: str) -> float:
  """The learning rate's factor at batch multiplier `k`."""
  return float(k) if rule == "linear" else math.sqrt(k)


def fits_memory(compiled, device) -> bool:
  """False when XLA's memory estimate of `compiled` exceeds MEMORY_FRACTION of what
  `device` reports it has; True when either is unknown (XLA:CPU)."""
  try:
    limit = (device.memory_stats() or {}).get("bytes_limit")
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):   # no memory statistics
    return True
  if not limit or analysis is None:
    return True
  need = sum(int(getattr(analysis, f, 0) or 0) for f in (
      "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
      "generated_code_size_in_bytes"))
  return need <= MEMORY_FRACTION * limit
