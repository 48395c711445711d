"""Models as explicit stage lists (`staged`), the stage modules (`layers`), the built-in
VGG / ResNet by name (`zoo`) and what each stage costs (`costs`).

Never imports data, train, store or runs.
"""

from ldjax.models.staged import StagedModel, apply_stages, count_params
from ldjax.models.zoo import MODEL_NAMES, build_model

__all__ = ["StagedModel", "apply_stages", "count_params", "MODEL_NAMES", "build_model"]
