"""The input-bandwidth model (ldjax.models.bandwidth): its formulas on literal numbers, the
presets, ResNet-18 on CIFAR on an H100, the summary's table and the Trainer's warning."""

import dataclasses
import json
import math

import jax
import pytest

from ldjax import summary
from ldjax.models import bandwidth, costs
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train.assembly import trainer_for
from ldjax.train.decisions import DropState

TOY = bandwidth.Device("toy", {"float32": 1000.0, "bfloat16": 2000.0}, memory_bw=100.0,
                       host_bw=20.0, memory_bytes=1e6, gather_bw=10.0, utilization=0.5)


def test_feed_formulas_on_literal_numbers():
  macs = [10, 20, 30]
  f = bandwidth.feed(macs, 100, 1, TOY, batch_size=4)
  assert f.flops_per_example == 2 * 3 * (20 + 30)           # trained stages, 3x forward
  assert f.intensity == 300 / 100
  assert f.compute_s == pytest.approx(4 * 300 / (1000 * 0.5))
  assert f.host_input_s == pytest.approx(4 * 100 / 10)      # the slower of gather and PCIe
  assert f.device_input_s == pytest.approx(2 * 4 * 100 / 100)   # read + write in HBM
  assert f.host_bound and f.device_bound
  # Frozen stages [store_cut, cut) add their forward.
  g = bandwidth.feed(macs, 100, 2, TOY, batch_size=4, store_cut=1)
  assert g.flops_per_example == 2 * (20 + 3 * 30)
  assert bandwidth.feed(macs, 1, 0, TOY, batch_size=1, precision="bfloat16").compute_s \
      == pytest.approx(2 * 3 * 60 / (2000 * 0.5))
  assert json.loads(json.dumps(f.to_json()))["host_bound"] is True


def test_device_kinds():
  assert bandwidth.device_for("NVIDIA H100 80GB HBM3") is bandwidth.DEVICES["h100"]
  assert bandwidth.device_for("NVIDIA H200") is bandwidth.DEVICES["h200"]
  assert bandwidth.device_for("cpu") is bandwidth.DEVICES["cpu2"]
  assert bandwidth.device_for("TPU v4") is None


@pytest.fixture(scope="module")
def resnet18_cifar():
  model = build_model("resnet18", (32, 32, 3), 10, width=1.0)
  return model, costs.stage_costs(model, (32, 32, 3))


def test_resnet18_cifar_on_an_h100(resnet18_cifar):
  """The issue's case: after layer1 a 256 KB map per example; from the host the head waits,
  from device memory it does not; images (cut 0) are never the bottleneck."""
  model, sc = resnet18_cifar
  h100 = bandwidth.DEVICES["h100"]
  fs = bandwidth.feeds(sc, (32, 32, 3), h100, batch_size=256, cuts=range(model.num_conv))
  assert [f.cut for f in fs] == list(range(model.num_conv))
  assert fs[0].bytes_per_example == 32 * 32 * 3 and not fs[0].host_bound
  layer1 = fs[model.stage_names.index("layer1.1") + 1]
  assert layer1.bytes_per_example == 32 * 32 * 64 * 4
  assert layer1.host_bound and not layer1.device_bound
  assert all(not f.device_bound for f in fs)
  half = bandwidth.feeds(sc, (32, 32, 3), h100, batch_size=256, itemsize=2)
  assert half[3].host_input_s == pytest.approx(layer1.host_input_s / 2)
  text = bandwidth.warning(layer1, h100)
  assert "input-bound on NVIDIA H100" in text and "67.1 MB per step" in text
  assert bandwidth.warning(fs[0], h100) is None


def test_summary_prints_the_model(capsys, resnet18_cifar):
  assert summary.main(["resnet18", "--input-shape", "32,32,3", "--num-classes", "10",
                       "--device", "h100", "--num-train", "50000"]) == 0
  out = capsys.readouterr().out
  assert "input bandwidth of the head's step, batch 256, on NVIDIA H100" in out
  assert "INPUT-BOUND" in out and "cut 3: 13.11 GB" in out
  assert summary.main(["resnet18", "--input-shape", "32,32,3", "--num-classes", "10",
                       "--device", "h100", "--feature-dtype", "bfloat16", "--json"]) == 0
  js = json.loads(capsys.readouterr().out)
  assert len(js["bandwidth"]["cuts"]) == resnet18_cifar[0].num_conv
  assert js["bandwidth"]["cuts"][3]["bytes_per_example"] == 32 * 32 * 64 * 2
  assert summary.main(["resnet18", "--input-shape", "32,32,3", "--num-classes", "10",
                       "--device", "h100", "--batch-size", "0"]) == 2
  assert capsys.readouterr().err.count("\n") == 1


def test_the_trainer_warns_once_per_store_when_input_bound(tiny_data, monkeypatch):
  model = build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  cfg = TrainConfig(model="vgg11", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.05)
  trainer = trainer_for(model, tiny_data, cfg, "drop",
                         model.init(jax.random.key(0), tiny_data.image_shape), None)
  trainer.drop = DropState(cut=2, store_cut=2)
  store = trainer.keeper.new(2)
  draws = trainer.draws(0)
  trainer._reader(draws, store)   # this CPU feeds itself: no warning
  fast = dataclasses.replace(TOY, flops={"float32": 1e18, "bfloat16": 1e18})
  monkeypatch.setattr(bandwidth, "device_for", lambda kind: fast)
  trainer._feeds_checked.clear()
  with pytest.warns(UserWarning, match="input-bound on toy"):
    trainer._reader(draws, store)
  trainer._reader(draws, store)   # once per store
  assert math.isfinite(bandwidth.DEVICES["h100"].host_feed_bw)
