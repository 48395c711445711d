"""ldjax: Learn & Drop for JAX/Flax.

Layers that have stopped learning are dropped from the front of a CNN while it
trains; their outputs are computed once and cached, and only the remaining
head is trained on them. At test time the whole model is used.

The notebook API:
  ldjax.scoring          pure score and decision functions (Eqs. 1-4; ldjax.train.scoring)
  ldjax.build_model      VGG / ResNet as explicit stage lists
  ldjax.StagedModel      build one from your own Flax stage modules
  ldjax.load_dataset     embedded, tfds, idx:DIR, npz:FILE
  ldjax.Config           every setting of a run, in groups (ldjax.runs.config);
                         Config.from_file / TrainConfig(**flat) make one
  ldjax.fit              train one strategy: "sgd", "freeze" or "drop"; ldjax.Start what
                         it starts from, ldjax.Hooks its callbacks, ldjax.EpochRecord
                         what each epoch records (ldjax.train.records)
  ldjax.run_strategies   several strategies side by side, with a comparison table
  ldjax.compile_cache    JAX's persistent compilation cache (the command line's default)
  ldjax.Strategy         the three strategies, defined once

The package layout, and the import rules it keeps, are in docs/architecture.md.
"""

from ldjax.data.datasets import Dataset, load_dataset
from ldjax.errors import Interrupted, TrainingDiverged, UsageError
from ldjax.models.staged import StagedModel, apply_stages
from ldjax.models.zoo import build_model
from ldjax.runs import compile_cache
from ldjax.runs.config import Config, TrainConfig
from ldjax.strategy import NAMES as STRATEGIES, Strategy
from ldjax.train import scoring
from ldjax.train.compare import run_strategies
from ldjax.train.continuation import Start
from ldjax.train.fit import Hooks, fit
from ldjax.train.records import EpochRecord, RunSummary

__all__ = ["compile_cache", "scoring", "run_strategies", "STRATEGIES", "Strategy", "Config",
           "TrainConfig",
           "Dataset", "load_dataset", "UsageError", "TrainingDiverged", "Interrupted", "fit",
           "Start", "Hooks", "EpochRecord", "RunSummary",
           "StagedModel", "apply_stages", "build_model"]
__version__ = "0.1.0"
