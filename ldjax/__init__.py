"""ldjax: Learn & Drop for JAX/Flax.

Layers that have stopped learning are dropped from the front of a CNN while it
trains; their outputs are computed once and cached, and only the remaining
head is trained on them. At test time the whole model is used.

The notebook API:
  ldjax.scoring          pure score and decision functions (Eqs. 1-4)
  ldjax.build_model      VGG / ResNet as explicit stage lists
  ldjax.StagedModel      build one from your own Flax stage modules
  ldjax.load_dataset     embedded, tfds, idx:DIR, npz:FILE
  ldjax.TrainConfig      every setting of a run
  ldjax.fit              train one strategy: "sgd", "freeze" or "drop"
  ldjax.run_strategies   several strategies side by side, with a comparison table
  ldjax.compile_cache    JAX's persistent compilation cache (the command line's default)
"""

from ldjax import compile_cache, scoring
from ldjax.compare import run_strategies
from ldjax.config import STRATEGIES, TrainConfig
from ldjax.data import Dataset, load_dataset
from ldjax.errors import UsageError
from ldjax.train import fit
from ldjax.models import StagedModel, apply_stages, build_model

__all__ = ["compile_cache", "scoring", "run_strategies", "STRATEGIES", "TrainConfig", "Dataset",
           "load_dataset", "UsageError", "fit", "StagedModel", "apply_stages", "build_model"]
__version__ = "0.1.0"
