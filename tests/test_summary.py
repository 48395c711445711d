"""Tests of the `python -m ldjax.summary` command line: table, JSON, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldjax.summary import main, parse_input_shape

REPO = Path(__file__).resolve().parents[1]


def run_main(argv):
  """main(argv)'s exit status, whether it returns it or argparse raises SystemExit."""
  try:
    return main(argv)
  except SystemExit as e:
    return e.code


def test_table(capsys):
  assert run_main(["resnet18", "--input-shape", "224,224,3", "--num-classes", "1000"]) == 0
  out, err = capsys.readouterr()
  assert err == ""
  lines = out.rstrip("\n").split("\n")
  assert lines[0].startswith("resnet18 on 224x224x3 inputs: 10 stages")
  header, rule, *rows = lines[1:-2]
  assert header.split() == ["#", "stage", "output", "shape", "params", "MACs"]
  assert set(rule.replace(" ", "")) == {"-"}
  assert [r.split()[1] for r in rows] == ["stem"] + [f"layer{l}.{b}" for l in range(1, 5)
                                                     for b in range(2)] + ["fc"]
  assert rows[0].split() == ["0", "stem", "56x56x64", "9,536", "118,013,952"]
  assert rows[-1].split() == ["9", "fc", "1000", "513,000", "512,000"]
  # Aligned: numbers are right-aligned in the last column, so every line ends at the same place.
  assert len({len(line) for line in [header, rule, *rows]}) == 1
  assert lines[-2] == "total params: 11,689,512 (11.69M)"
  assert lines[-1].startswith("total MACs:   1,814,073,344 (1.81G)")


def test_json(capsys):
  argv = ["vgg11", "--input-shape", "28,28,1", "--num-classes", "10", "--width", "0.5",
          "--no-batch-norm", "--json"]
  assert run_main(argv) == 0
  out, err = capsys.readouterr()
  assert err == ""
  data = json.loads(out)  # exactly one JSON document, nothing else on stdout
  assert out.count("\n") == 1
  assert set(data) == {"model", "input_shape", "num_classes", "width", "total_params",
                       "total_macs", "stages"}
  assert data["model"] == "vgg11"
  assert data["input_shape"] == [28, 28, 1]
  assert data["num_classes"] == 10
  assert data["width"] == 0.5
  stages = data["stages"]
  assert [s["name"] for s in stages] == [f"conv{i}" for i in range(1, 9)] + ["fc1", "fc2", "fc3"]
  assert all(set(s) == {"index", "name", "output_shape", "params", "macs"} for s in stages)
  assert [s["index"] for s in stages] == list(range(11))
  assert stages[0] == {"index": 0, "name": "conv1", "output_shape": [14, 14, 32],
                       "params": 3 * 3 * 1 * 32 + 32, "macs": 28 * 28 * 32 * 9}
  assert stages[-1]["output_shape"] == [10]
  assert data["total_params"] == sum(s["params"] for s in stages)
  assert data["total_macs"] == sum(s["macs"] for s in stages)


def test_json_totals_at_imagenet_size(capsys):
  assert run_main(["vgg16_bn", "--input-shape", "224,224,3", "--num-classes", "1000",
                   "--json"]) == 0
  data = json.loads(capsys.readouterr().out)
  assert data["model"] == "vgg16_bn"
  assert data["total_params"] == 138_365_992
  assert data["total_macs"] == pytest.approx(15.47e9, rel=0.01)


BAD_INPUTS = {
    "unknown model": ["alexnet", "--input-shape", "28,28,1", "--num-classes", "10"],
    "two sizes": ["vgg11", "--input-shape", "28,28", "--num-classes", "10"],
    "four sizes": ["vgg11", "--input-shape", "28,28,1,1", "--num-classes", "10"],
    "not numbers": ["vgg11", "--input-shape", "a,b,c", "--num-classes", "10"],
    "zero size": ["vgg11", "--input-shape", "28,0,1", "--num-classes", "10"],
    "too small": ["resnet18", "--input-shape", "4,4,3", "--num-classes", "10"],
    "zero width": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "10", "--width", "0"],
    "negative width": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "10",
                       "--width", "-1"],
    "nan width": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "10", "--width", "nan"],
    "one class": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "1"],
    "non-integer classes": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "ten"],
    "resnet without bn": ["resnet18", "--input-shape", "32,32,3", "--num-classes", "10",
                          "--no-batch-norm"],
    "missing shape": ["vgg11", "--num-classes", "10"],
    "unknown flag": ["vgg11", "--input-shape", "28,28,1", "--num-classes", "10", "--depth", "3"],
}


@pytest.mark.parametrize("argv", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input(argv, capsys):
  assert run_main(argv) == 2
  out, err = capsys.readouterr()
  assert out == ""
  assert err.startswith("error: ")
  assert err.count("\n") == 1 and err.endswith("\n")
  assert "Traceback" not in err


def test_parse_input_shape():
  assert parse_input_shape("32,32,3") == (32, 32, 3)
  assert parse_input_shape(" 28, 28 ,1") == (28, 28, 1)


def test_module_entry_point():
  # The real `python -m` path, including the exit status and a clean stderr on error.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
  ok = subprocess.run([sys.executable, "-m", "ldjax.summary", "resnet18", "--input-shape",
                       "32,32,3", "--num-classes", "10", "--json"],
                      capture_output=True, text=True, cwd=REPO, env=env)
  assert ok.returncode == 0, ok.stderr
  assert json.loads(ok.stdout)["total_params"] == 11_173_962
  bad = subprocess.run([sys.executable, "-m", "ldjax.summary", "resnet18", "--input-shape",
                        "32,32", "--num-classes", "10"],
                       capture_output=True, text=True, cwd=REPO, env=env)
  assert bad.returncode == 2
  assert bad.stdout == ""
  assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
