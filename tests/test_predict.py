"""Tests of `python -m ldjax.predict`: logits of a saved run equal the model's, for float
arrays (fed as is), uint8 arrays and PNG folders (normalized as training does), torch
fixtures; every bad input is one line, exit status 2, and nothing written."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ldjax import predict
from ldjax.models.staged import abstract_variables, apply_stages
from ldjax.models.zoo import build_model
from ldjax.weights import read_tensors, save_run_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHAPE = (16, 16, 3)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A comparison directory with one run (`drop`) whose config.json records mean/std."""
  root = tmp_path_factory.mktemp("cmp")
  model = build_model("resnet18", SHAPE, 5, width=0.0625)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: (np.abs(rng.standard_normal(a.shape)) * 0.5 + 0.1
                                      ).astype(np.float32), abstract_variables(model, SHAPE))
  for s in ("sgd", "drop"):
    (root / s).mkdir()
    save_run_weights(root / s, model, variables, {"width": 0.0625, "image_shape": SHAPE})
  (root / "drop" / "config.json").write_text(json.dumps({"input_mean": MEAN,
                                                         "input_std": STD}))
  return root, model, variables


def images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def expected(model, variables, x):
  return np.asarray(apply_stages(model.stages, variables, x)[0])


def call(capsys, *argv):
  rc = predict.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def test_float_input_is_fed_as_is(tmp_path, run, capsys):
  root, model, variables = run
  x = np.random.default_rng(1).standard_normal((5, *SHAPE)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  rc, out, err = call(capsys, "--weights", root, "--strategy", "drop", "--input",
                      tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--batch-size", 2)
  assert rc == 0, err
  assert "wrote logits 5 x 5" in out and "resnet18" in out
  y = np.load(tmp_path / "y.npy")
  assert y.dtype == np.float32 and y.shape == (5, 5)
  np.testing.assert_allclose(y, expected(model, variables, x), rtol=1e-5, atol=1e-5)


def test_uint8_and_images_are_normalized_as_in_training(tmp_path, run, capsys):
  from PIL import Image
  root, model, variables = run
  raw = images()
  want = expected(model, variables, (raw / 255.0 - np.array(MEAN)) / np.array(STD))
  np.save(tmp_path / "raw.npy", raw)
  rc, _, err = call(capsys, "--weights", root / "drop", "--input", tmp_path / "raw.npy",
                    "--output", tmp_path / "y.npy")
  assert rc == 0, err
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-4)
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i, im in enumerate(raw):
    Image.fromarray(im).save(folder / f"{i:02d}.png")
  rc, _, err = call(capsys, "--weights", root / "drop", "--input", folder,
                    "--output", tmp_path / "z.npy")
  assert rc == 0, err
  np.testing.assert_allclose(np.load(tmp_path / "z.npy"), want, rtol=1e-4, atol=1e-4)
  # --mean / --std override what the run recorded.
  rc, _, err = call(capsys, "--weights", root / "drop", "--input", folder / "01.png",
                    "--output", tmp_path / "one.npy", "--mean", "0.5", "--std", "0.5")
  assert rc == 0, err
  np.testing.assert_allclose(np.load(tmp_path / "one.npy"),
                             expected(model, variables, raw[1:2] / 255.0 * 2 - 1),
                             rtol=1e-4, atol=1e-4)


def test_torch_fixture_with_model_flag(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("fx", FIXTURES / "make_torch_fixtures.py")
  fx = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fx)
  x = fx.fixture_input((128, 128, 3))
  np.save(tmp_path / "x.npy", x)
  rc, _, err = call(capsys, "--model", "resnet18", "--width", 1 / 32, "--weights",
                    FIXTURES / "resnet18_w32.safetensors", "--input", tmp_path / "x.npy",
                    "--output", tmp_path / "y.npy")
  assert rc == 0, err
  want = read_tensors(FIXTURES / fx.LOGITS_FILE)[0]["resnet18_w32"]
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, run, capsys):
  root, _, _ = run
  good = tmp_path / "x.npy"
  np.save(good, np.zeros((2, *SHAPE), np.float32))
  np.save(tmp_path / "shape.npy", np.zeros((2, 8, 8, 3), np.float32))
  np.save(tmp_path / "int.npy", np.zeros((2, *SHAPE), np.int64))
  np.save(tmp_path / "three.npy", np.zeros(SHAPE, np.float32))
  np.save(tmp_path / "raw.npy", images())
  (tmp_path / "garbage.npy").write_bytes(b"not an npy file")
  (tmp_path / "m.pth").write_bytes(b"\x80\x02}q\x00.")
  (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
  drop = root / "drop"
  cases = {
      "comparison of sgd, drop": ["--weights", root, "--input", good],
      "do not exist": ["--weights", tmp_path / "none", "--input", good],
      "pickle file": ["--weights", tmp_path / "m.pth", "--input", good],
      "not a readable .safetensors": ["--weights", tmp_path / "w.safetensors", "--input", good],
      "the model takes 16x16x3": ["--weights", drop, "--input", tmp_path / "shape.npy"],
      "int64": ["--weights", drop, "--input", tmp_path / "int.npy"],
      "one image: x[None]": ["--weights", drop, "--input", tmp_path / "three.npy"],
      "not a readable .npy": ["--weights", drop, "--input", tmp_path / "garbage.npy"],
      "--input '": ["--weights", drop, "--input", tmp_path / "missing.npy"],
      "record no input normalization": ["--weights", root / "sgd", "--input",
                                        tmp_path / "raw.npy"],
      "--std has 2 values": ["--weights", drop, "--input", tmp_path / "raw.npy", "--std",
                             "0.1,0.2"],
      "holds resnet18 weights, the model is resnet50":
          ["--weights", drop, "--input", good, "--model", "resnet50"],
      "width 0.0625": ["--weights", drop, "--input", good, "--width", "0.125"],
      "--image-size": ["--weights", drop, "--input", good, "--image-size", "16,16"],
      "--batch-size must be > 0": ["--weights", drop, "--input", good, "--batch-size", "0"],
      "--output directory": ["--weights", drop, "--input", good, "--output",
                             tmp_path / "no" / "y.npy"],
      "give the architecture with --model":
          ["--weights", FIXTURES / "resnet18_w32.safetensors", "--input", good],
  }
  for message, argv in cases.items():
    if "--output" not in argv:
      argv = [*argv, "--output", tmp_path / "y.npy"]
    rc, out, err = call(capsys, *argv)
    assert rc == 2, (message, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, (message, err)
    assert not (tmp_path / "y.npy").exists()
  rc, _, err = call(capsys, "--weights", drop, "--input", good)   # argparse: --output missing
  assert rc == 2 and err.count("\n") == 1 and "--output" in err


def test_help_explains_every_flag_and_module_runs(tmp_path, run):
  root, model, variables = run
  text = predict.build_parser().format_help()
  for flag in ("--weights", "--strategy", "--input", "--output", "--model", "--width",
               "--no-batch-norm", "--num-classes", "--image-size", "--mean", "--std",
               "--batch-size"):
    assert flag in text
  assert "(x / 255 - mean) / std" in text
  x = np.random.default_rng(2).standard_normal((2, *SHAPE)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  done = subprocess.run([sys.executable, "-m", "ldjax.predict", "--weights", root / "sgd",
                         "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(model, variables, x),
                             rtol=1e-5, atol=1e-5)
