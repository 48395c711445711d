"""Tests of ldjax.weights: ldjax's own files (exact round trip, orbax copy, run directories),
torchvision's and timm's state dicts (logits equal torch's), fine-tuning's rules, and
every bad file as a real file with a one-line UsageError.

Without torch, the committed fixtures (tests/fixtures/make_torch_fixtures.py says what
they prove) check the torch mapping against logits torch computed; with torch, full-width
torchvision models are built with random weights and randomized BatchNorm statistics and
compared at 224x224, and the deeper ones' names and shapes are mapped without computing.
"""

import importlib.util
import json
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from ldjax.errors import UsageError
from ldjax.models.staged import abstract_variables, apply_stages
from ldjax.models.zoo import build_model
from ldjax.weights import (WEIGHTS_FILE, init_from, load_orbax, load_safetensors, load_weights,
                           read_tensors, save_run_weights, save_safetensors)
from ldjax.weights.finetune import load_arrays
from ldjax.weights.names import META_KEY

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_torch_fixtures",
                                               FIXTURES / "make_torch_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

SHAPE = (32, 32, 3)


def randomized(variables, seed=1):
  """Variables with every leaf random (batch_stats positive), so a swap would show."""
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.abs(rng.standard_normal(x.shape)).astype(np.float32)
                                   + 0.1 for x in leaves])


@pytest.fixture(scope="module")
def tiny():
  model = build_model("resnet18", SHAPE, 10, width=0.0625)
  return model, randomized(randomized(abstract_variables(model, SHAPE), seed=0))


def meta(**extra):
  return {"width": 0.0625, "image_shape": SHAPE, **extra}


def assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def one_line_error(fn, *match):
  with pytest.raises(UsageError) as e:
    fn()
  text = str(e.value)
  assert "\n" not in text, text
  for m in match:
    assert m in text, text
  return text


# ldjax's own files

def test_round_trip_is_exact_with_names_and_metadata(tmp_path, tiny):
  model, variables = tiny
  path = save_safetensors(tmp_path / "w.safetensors", model, variables,
                          meta(input_mean=[0.5] * 3, input_std=[0.25] * 3))
  loaded, m = load_safetensors(path)
  assert_same(variables, loaded)
  assert m["model"] == "resnet18" and m["width"] == 0.0625 and m["num_classes"] == 10
  assert m["image_shape"] == [32, 32, 3] and m["batch_norm"] is True
  assert m["stage_names"] == list(model.stage_names) and m["input_mean"] == [0.5] * 3
  assert m["ldjax_version"] and m["format_version"] == 1
  tensors, header = read_tensors(path)
  assert json.loads(header[META_KEY])["model"] == "resnet18"
  assert "stem/params/Conv_0/kernel" in tensors
  assert "layer2.0/batch_stats/proj_bn/mean" in tensors
  assert "fc/params/Dense_0/kernel" in tensors


def test_vgg_without_batch_norm_round_trips(tmp_path):
  model = build_model("vgg11", SHAPE, 10, width=0.0625, batch_norm=False)
  variables = randomized(randomized(abstract_variables(model, SHAPE), seed=0))
  save_safetensors(tmp_path / "v.safetensors", model, variables, meta())
  loaded, m = load_safetensors(tmp_path / "v.safetensors")
  assert_same(variables, loaded)
  assert m["model"] == "vgg11" and m["batch_norm"] is False
  back, info = init_from(tmp_path / "v.safetensors", model, randomized(abstract_variables(model, SHAPE), seed=1))
  for x, y in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    np.testing.assert_array_equal(x, np.asarray(y))
  assert info.reinitialized == () and info.format == "ldjax"


def test_run_weights_and_orbax_copy(tmp_path, tiny):
  model, variables = tiny
  run = tmp_path / "run"
  run.mkdir()
  path = save_run_weights(run, model, variables, meta(strategy="drop"))
  assert path == run / WEIGHTS_FILE and (run / "weights").is_dir()
  assert not [p for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
  loaded, m = load_weights(run)
  assert_same(variables, loaded)
  assert m["strategy"] == "drop"
  template = randomized(abstract_variables(model, SHAPE), seed=3)
  restored = load_orbax(run, template)
  for x, y in zip(jax.tree.leaves(variables), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(x, np.asarray(y))
  save_run_weights(run, model, template, meta())   # replaces both copies
  for x, y in zip(jax.tree.leaves(template), jax.tree.leaves(load_orbax(run, template))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert_same(jax.tree.map(np.asarray, template), load_weights(run)[0])


def test_save_needs_width_and_image_shape(tmp_path, tiny):
  model, variables = tiny
  with pytest.raises(ValueError, match="image_shape"):
    save_run_weights(tmp_path, model, variables, {"width": 1.0})
  assert not (tmp_path / WEIGHTS_FILE).exists() and not (tmp_path / "weights").exists()


def test_comparison_directory_needs_a_strategy(tmp_path, tiny):
  model, variables = tiny
  for s in ("sgd", "drop"):
    (tmp_path / s).mkdir()
    save_run_weights(tmp_path / s, model, variables, meta(strategy=s))
  one_line_error(lambda: load_weights(tmp_path), "comparison of sgd, drop", "pick one",
                 str(tmp_path / "drop"))
  assert load_weights(tmp_path, strategy="drop")[1]["strategy"] == "drop"
  assert load_weights(tmp_path / "sgd")[1]["strategy"] == "sgd"
  one_line_error(lambda: load_weights(tmp_path, strategy="freeze"), "no weights of strategy")
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text("{}")
  one_line_error(lambda: load_weights(unfinished), "has not finished")


# Fine-tuning rules

def test_init_from_loads_everything_and_reinitialises_another_classifier(tmp_path, tiny):
  model, variables = tiny
  save_safetensors(tmp_path / "w.safetensors", model, variables, meta())
  fresh = randomized(abstract_variables(model, SHAPE), seed=5)
  same, info = init_from(tmp_path / "w.safetensors", model, fresh, keep_classifier=True)
  for x, y in zip(jax.tree.leaves(variables), jax.tree.leaves(same)):
    np.testing.assert_array_equal(x, np.asarray(y))
  other = build_model("resnet18", SHAPE, 7, width=0.0625)
  template = randomized(abstract_variables(other, SHAPE), seed=5)
  tuned, info = init_from(tmp_path / "w.safetensors", other, template)
  assert info.reinitialized == ("fc",) and info.file_classes == 10 and info.model_classes == 7
  assert "initialised afresh for 7 classes" in str(info)
  for x, y in zip(jax.tree.leaves(template[-1]), jax.tree.leaves(tuned[-1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(variables[:-1]), jax.tree.leaves(tuned[:-1])):
    np.testing.assert_array_equal(x, np.asarray(y))
  one_line_error(lambda: init_from(tmp_path / "w.safetensors", other, template,
                                   keep_classifier=True), "10 classes", "the model 7")


def test_init_from_refuses_other_models_widths_and_shapes(tmp_path, tiny):
  model, variables = tiny
  file = tmp_path / "w.safetensors"
  save_safetensors(file, model, variables, meta())
  wide = build_model("resnet18", SHAPE, 10, width=0.125)
  one_line_error(lambda: init_from(file, wide, abstract_variables(wide, SHAPE)),
                 "tensor stem/params/Conv_0/kernel has shape (3, 3, 3, 4)",
                 "the model's is (3, 3, 3, 8)")
  one_line_error(lambda: init_from(file, wide, abstract_variables(wide, SHAPE), width=0.125),
                 "width 0.0625", "model.width 0.0625")
  r50 = build_model("resnet50", SHAPE, 10, width=0.0625)
  one_line_error(lambda: init_from(file, r50, abstract_variables(r50, SHAPE)),
                 "holds resnet18 weights", "model.name resnet18")
  one_line_error(lambda: init_from(file, model, abstract_variables(model, SHAPE),
                                   image_shape=(28, 28, 3)), "32x32x3", "28x28x3")
  # A VGG's first dense layer depends on the input size.
  vgg = build_model("vgg11_bn", SHAPE, 10, width=0.0625)
  save_safetensors(tmp_path / "v.safetensors", vgg, randomized(abstract_variables(vgg, SHAPE), seed=0), meta())
  big = build_model("vgg11_bn", (48, 48, 3), 10, width=0.0625)
  one_line_error(lambda: init_from(tmp_path / "v.safetensors", big,
                                   abstract_variables(big, (48, 48, 3))),
                 "fc1/params/Dense_0/kernel", "another width or input size")


# Bad files, each a real file

def test_missing_and_pickled_files_are_refused(tmp_path, tiny):
  model, _ = tiny
  template = abstract_variables(model, SHAPE)
  one_line_error(lambda: init_from(tmp_path / "nope.safetensors", model, template),
                 "do not exist")
  for name in ("m.pth", "m.pt", "m.bin", "m.ckpt"):
    (tmp_path / name).write_bytes(b"\x80\x02}q\x00.")   # the bytes of a pickled {}
    one_line_error(lambda: init_from(tmp_path / name, model, template), "pickle",
                   'safetensors.torch.save_file(model.state_dict(), "x.safetensors")')
  with zipfile.ZipFile(tmp_path / "zipped.safetensors", "w") as z:   # torch.save's format
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
  one_line_error(lambda: load_weights(tmp_path / "zipped.safetensors"), "pickle file")
  (tmp_path / "pickled.safetensors").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
  one_line_error(lambda: load_weights(tmp_path / "pickled.safetensors"), "pickle file")


def test_corrupt_files_are_refused(tmp_path, tiny):
  model, variables = tiny
  good = save_safetensors(tmp_path / "good.safetensors", model, variables, meta())
  data = good.read_bytes()
  n = int.from_bytes(data[:8], "little")
  cases = {"truncated": data[:len(data) // 2], "header_cut": data[:8 + n // 2],
           "empty": b"", "garbage": b"this is not a safetensors file at all",
           "bad_json": data[:8] + b"{" + b"x" * (n - 1) + data[8 + n:]}
  for name, content in cases.items():
    (tmp_path / f"{name}.safetensors").write_bytes(content)
    one_line_error(lambda: load_weights(tmp_path / f"{name}.safetensors"),
                   "not a readable .safetensors file")
    one_line_error(lambda: init_from(tmp_path / f"{name}.safetensors", model,
                                     abstract_variables(model, SHAPE)), "not a readable")


def test_unknown_names_and_wrong_architectures_are_refused(tmp_path):
  from safetensors.numpy import save_file
  save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "u.safetensors"))
  shape = (128, 128, 3)
  r18 = build_model("resnet18", shape, 10, width=1 / 32)
  one_line_error(lambda: init_from(tmp_path / "u.safetensors", r18,
                                   abstract_variables(r18, shape)),
                 "neither ldjax's, torchvision's nor timm's", "encoder.weight")
  one_line_error(lambda: load_weights(FIXTURES / "resnet18_w32.safetensors"),
                 "torchvision/timm ResNet", "init_from")
  r50 = FIXTURES / "resnet50_w64.safetensors"
  one_line_error(lambda: init_from(r50, r18, abstract_variables(r18, shape)),
                 "does not fit resnet18", "looks like resnet50")
  vgg = build_model("vgg11_bn", (224, 224, 3), 10, width=1 / 128)
  one_line_error(lambda: init_from(r50, vgg, abstract_variables(vgg, (224, 224, 3))),
                 "ResNet weights (resnet50)", "the model is vgg11_bn")
  plain = build_model("vgg11", (224, 224, 3), 10, width=1 / 128, batch_norm=False)
  one_line_error(lambda: init_from(FIXTURES / "vgg11_bn_w128.safetensors", plain,
                                   abstract_variables(plain, (224, 224, 3))),
                 "does not fit vgg11", "looks like vgg11_bn")
  one_line_error(lambda: init_from(FIXTURES / "timm_vgg11_w128.safetensors", vgg,
                                   abstract_variables(vgg, (224, 224, 3))),
                 "lacks", "features.1.running_mean", "--no-batch-norm")
  wide = build_model("resnet18", shape, 10, width=1 / 16)
  one_line_error(lambda: init_from(FIXTURES / "resnet18_w32.safetensors", wide,
                                   abstract_variables(wide, shape)),
                 "tensor conv1.weight has shape (2, 3, 7, 7)", "needs (4, 3, 7, 7)")
  small = build_model("resnet18", SHAPE, 10, width=1 / 32)
  one_line_error(lambda: init_from(FIXTURES / "resnet18_w32.safetensors", small,
                                   abstract_variables(small, SHAPE)), "ImageNet design")


# torch's models: committed fixtures (no torch needed)

@pytest.mark.parametrize("stem", list(fx.FIXTURES))
def test_torch_fixture_logits(stem):
  name, width, shape = fx.FIXTURES[stem]
  model = build_model(name, shape, fx.NUM_CLASSES, width=width, batch_norm=name != "vgg11")
  variables, info = init_from(FIXTURES / f"{stem}.safetensors", model,
                              abstract_variables(model, shape), keep_classifier=True)
  logits = np.asarray(apply_stages(model.stages, variables, fx.fixture_input(shape))[0])
  expected = read_tensors(FIXTURES / fx.LOGITS_FILE)[0][stem]
  assert np.abs(expected).max() > 0.05 and np.ptp(expected) > 0.05
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  assert ("timm" in info.format) == stem.startswith("timm") or "ResNet" in info.format


def test_vgg_fixture_sees_the_flatten_order():
  """Loading torchvision's first classifier layer without the (C,H,W) -> (H,W,C) reorder
  changes the logits: the fixture checks the reorder."""
  stem = "vgg11_bn_w128"
  name, width, shape = fx.FIXTURES[stem]
  model = build_model(name, shape, fx.NUM_CLASSES, width=width)
  tensors, header = read_tensors(FIXTURES / f"{stem}.safetensors")
  template = abstract_variables(model, shape)
  arrays, _ = load_arrays(Path(stem), tensors, header, model, template, keep_classifier=True)
  fc1 = model.stage_names.index("fc1")
  key = (fc1, "params", ("Dense_0", "kernel"))
  arrays[key] = tensors["classifier.0.weight"].T   # torch's order, unconverted
  from ldjax.weights.finetune import rebuild
  logits = np.asarray(apply_stages(model.stages, rebuild(template, arrays),
                                   fx.fixture_input(shape))[0])
  expected = read_tensors(FIXTURES / fx.LOGITS_FILE)[0][stem]
  assert np.abs(logits - expected).max() > 1e-3


# torch's models: full width, with torch installed

@pytest.fixture(scope="module")
def torchvision():
  pytest.importorskip("torch")
  pytest.importorskip("safetensors.torch")
  tv = fx.import_torchvision()
  if tv is None:
    pytest.skip("torchvision is not installed")
  return tv


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn", "vgg16"])
def test_torchvision_logits_at_224(tmp_path, torchvision, name):
  import torch
  from safetensors.torch import save_file
  torch.manual_seed(0)
  tm = fx.randomize_batch_norm(getattr(torchvision.models, name)(weights=None))
  save_file(tm.state_dict(), str(tmp_path / "w.safetensors"))
  x = fx.fixture_input((224, 224, 3), batch=1)
  with torch.no_grad():
    expected = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  del tm
  bn = not name.startswith("vgg") or name.endswith("_bn")
  model = build_model(name, (224, 224, 3), 1000, batch_norm=bn)
  variables, info = init_from(tmp_path / "w.safetensors", model,
                              abstract_variables(model, (224, 224, 3)), keep_classifier=True)
  logits = np.asarray(apply_stages(model.stages, variables, x)[0])
  scale = np.abs(expected).max()
  assert scale > 0.05
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * scale)


def meta_state_dict(module_fn):
  """{name: zero array of the tensor's shape} of a torch model built on the meta device
  (no memory, no init), for name and shape checks."""
  import torch
  with torch.device("meta"):
    m = module_fn()
  return {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape))
          for k, v in m.state_dict().items()}


def check_mapping(tensors, name, bn=True):
  model = build_model(name, (224, 224, 3), 1000, batch_norm=bn)
  template = abstract_variables(model, (224, 224, 3))
  arrays, info = load_arrays(Path(name), tensors, {}, model, template, keep_classifier=True)
  n_leaves = len(jax.tree.leaves(template))
  assert len(arrays) == n_leaves == info.loaded
  return info


@pytest.mark.parametrize("name", ["resnet101", "resnet152", "vgg19", "vgg19_bn", "vgg11"])
def test_torchvision_names_and_shapes_map(torchvision, name):
  tensors = meta_state_dict(lambda: getattr(torchvision.models, name)(weights=None))
  check_mapping(tensors, name, bn=not name.startswith("vgg") or name.endswith("_bn"))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11", "vgg16_bn"])
def test_timm_names_and_shapes_map(torchvision, name):
  timm = pytest.importorskip("timm")
  tensors = meta_state_dict(lambda: timm.create_model(name, pretrained=False))
  info = check_mapping(tensors, name, bn=not name.startswith("vgg") or name.endswith("_bn"))
  assert info.format == ("timm VGG" if name.startswith("vgg") else "torchvision/timm ResNet")
