"""Run configuration and the paper's hyper-parameter presets.

`TrainConfig` holds every setting of one run. `preset_for(dataset)` gives the
paper's protocol (Section 4.2) for a dataset; the command line starts from it
and applies the user's flags on top.
"""

from __future__ import annotations

import dataclasses

from ldjax.errors import UsageError

STRATEGIES = ("sgd", "freeze", "drop")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: str = "vgg11"
  width: float = 1.0
  batch_norm: bool = True
  dataset: str = "embedded"
  data_dir: str | None = None
  train_size: int | None = None
  test_size: int | None = None
  epochs: int = 60
  warmup: int = 5
  batch_size: int = 256
  lr: float = 0.001
  lr_decay_epoch: int | None = None   # multiply the lr by lr_decay_factor from this epoch on
  lr_decay_factor: float = 0.1
  momentum: float = 0.9
  seed: int = 0
  eval_batch_size: int = 1000
  eval_every: int = 1   # test evaluation every this many epochs, and after the last
  feature_dtype: str = "float32"
  feature_memory_gb: float = 4.0

  def validate(self, num_train: int | None = None) -> None:
    """Raises UsageError for settings that cannot work (before any training)."""
    if self.epochs <= 0:
      raise UsageError(f"--epochs must be > 0, got {self.epochs}")
    if self.warmup < 0:
      raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
    if self.batch_size <= 0:
      raise UsageError(f"--batch-size must be > 0, got {self.batch_size}")
    if num_train is not None and self.batch_size > num_train:
      raise UsageError(f"--batch-size {self.batch_size} is larger than the training set "
                       f"({num_train} examples); use a smaller batch or more data")
    if self.lr <= 0:
      raise UsageError(f"--lr must be > 0, got {self.lr}")
    if not 0 <= self.momentum < 1:
      raise UsageError(f"--momentum must be in [0, 1), got {self.momentum}")
    if self.lr_decay_epoch is not None and self.lr_decay_epoch <= 0:
      raise UsageError(f"--lr-decay-epoch must be > 0, got {self.lr_decay_epoch}")
    if self.feature_dtype not in ("float32", "bfloat16"):
      raise UsageError(f"--feature-dtype must be float32 or bfloat16, got {self.feature_dtype}")
    if self.feature_memory_gb < 0:
      raise UsageError(f"--feature-memory-gb must be >= 0, got {self.feature_memory_gb}")
    if self.eval_batch_size <= 0:
      raise UsageError(f"--eval-batch-size must be > 0, got {self.eval_batch_size}")
    if self.eval_every <= 0:
      raise UsageError(f"--eval-every must be > 0, got {self.eval_every}")

  def validate_strategies(self, strategies) -> None:
    for s in strategies:
      if s not in STRATEGIES:
        raise UsageError(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)} "
                         "(a comma list runs several)")
    if set(strategies) & {"freeze", "drop"} and self.warmup >= self.epochs:
      raise UsageError(f"--warmup ({self.warmup}) must be smaller than --epochs ({self.epochs}) "
                       "for freeze/drop to take any decision")


# The paper's protocol (Section 4.2): batch 256 everywhere.
PAPER_PRESETS = {
    "mnist": dict(lr=0.001, epochs=60, warmup=5),
    "cifar10": dict(lr=0.1, lr_decay_epoch=20, epochs=60, warmup=10),
    "imagenette": dict(lr=0.01, lr_decay_epoch=50, epochs=150, warmup=25),
}

# The no-argument run: a CPU-sized Fashion-MNIST subset shipped in the package,
# the MNIST protocol's lr and warm-up ratio, few epochs, a width-reduced model.
# Test batches of 250 evaluate 10-20 % faster than 1000 on a 2-core CPU.
EMBEDDED_PRESET = dict(model="resnet18", width=0.125, epochs=8, warmup=2, lr=0.01,
                       batch_size=128, eval_batch_size=250)


def preset_for(dataset: str) -> dict:
  """The preset for a dataset spec: MNIST's protocol for MNIST-like data."""
  name = dataset.split(":", 1)[0].split("/", 1)[0]
  if name == "embedded":
    return dict(EMBEDDED_PRESET)
  if name in ("mnist", "fashion_mnist", "idx", "npz"):
    return dict(PAPER_PRESETS["mnist"])
  if name in PAPER_PRESETS:
    return dict(PAPER_PRESETS[name])
  return {}
