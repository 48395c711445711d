"""Weights in and out: ldjax's own `.safetensors` files, torchvision's and timm's, no pickle.

A model's variables (one ``{"params", "batch_stats"}`` dict per stage) are
saved under ldjax's documented names, ``{stage}/{collection}/{path}``, with a
JSON metadata entry (model, width, batch_norm, image_shape, num_classes,
ldjax version; `ldjax.weights.names`). A run keeps its final weights as
``weights.safetensors`` plus an orbax copy ``weights/``
(`ldjax.weights.run_weights`). torchvision's and timm's ResNet and VGG state
dicts, saved as `.safetensors`, load into ldjax's ImageNet-design models with
their eval-mode logits unchanged (`ldjax.weights.torch_names`); `init_from`
starts a model from any of them, a classifier for another number of classes
initialised afresh (`ldjax.weights.finetune`). Pickle files (`.pt`, `.pth`,
`.bin`, `.ckpt`) are refused (`ldjax.weights.files`).

  save_safetensors(path, model, variables, meta)    -> path
  load_safetensors(path)                            -> (variables, meta)
  save_run_weights(run_dir, model, variables, meta) -> path of weights.safetensors
  load_weights(file_or_run_dir, strategy=None)      -> (variables, meta)
  init_from(file_or_run_dir, model, template, keep_classifier=False) -> (variables, InitInfo)
"""

from ldjax.weights.files import read_metadata, read_tensors
from ldjax.weights.finetune import InitInfo, init_from
from ldjax.weights.ldjax_format import load_safetensors, save_safetensors
from ldjax.weights.names import META_KEY, decode_meta
from ldjax.weights.run_weights import (ORBAX_DIR, WEIGHTS_FILE, load_orbax, load_weights,
                                       save_run_weights, weights_path)

__all__ = ["InitInfo", "init_from", "load_safetensors", "save_safetensors", "load_weights",
           "save_run_weights", "load_orbax", "weights_path", "read_tensors", "read_metadata",
           "decode_meta", "META_KEY", "WEIGHTS_FILE", "ORBAX_DIR"]
