"""Whether a device can be fed: the input-bandwidth model of a head's training step.

After a drop the head trains on stored maps: a step reads, per example, one
stored row (the map of stages [0, cut), or the image itself at cut 0) and
computes the head's forward and backward pass. The head is small, its input
large: ResNet-18 at full width on CIFAR-10, cut after layer1, reads a
32x32x64 float32 map per example (256 KB) for 2.4 GFLOP of training, about
9,000 FLOP per byte, while an H100 computes some 150,000 GFLOP/s and gets
about 10 GB/s of gathered rows from the host: 15,000 FLOP per byte.
Whether the device waits for that input is a roofline question:

  compute   = FLOPs per step / (peak FLOP/s x utilization)
  input     = bytes read per step / the bandwidth they arrive at
  intensity = FLOPs per step / bytes read per step (FLOP per byte)

and a step is input-bound when input > compute, i.e. when its intensity is
below the device's ridge point, peak x utilization / bandwidth. The bytes
arrive from host memory over PCIe, gathered by host threads, when the store
lives on the host, and from device memory (HBM, read once and written once
by the gather) when it lives on the device.

FLOPs are 2 x `costs.training_macs` (multiply-accumulates; the backward pass
costs twice the forward) of the trained stages, plus the forward of stages
that run frozen. The devices' numbers (`DEVICES`) are vendor peaks and
typical achieved transfer rates, stated with each preset; `utilization` is
an assumption (small convolutions at batch 256 rarely reach half the peak),
so the model says which side of the ridge a step is on, not its time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from ldjax.errors import UsageError
from ldjax.models import costs


@dataclasses.dataclass(frozen=True)
class Device:
  """What feeds and computes a step: peak FLOP/s by precision, bandwidths in bytes/s."""
  name: str
  flops: dict                 # {"float32": FLOP/s, "bfloat16": FLOP/s}, dense
  memory_bw: float            # device memory (HBM)
  host_bw: float              # host -> device (PCIe); inf when the host is the device
  memory_bytes: float         # device memory
  gather_bw: float = 10e9     # a numpy gather of store rows on the host (two threads)
  utilization: float = 0.3    # of the peak FLOP/s a conv step reaches (an assumption)

  def step_flops_per_s(self, precision: str) -> float:
    return self.flops[precision] * self.utilization

  @property
  def host_feed_bw(self) -> float:
    """Bytes/s a host store reaches the device at: the slower of gather and transfer."""
    return min(self.gather_bw, self.host_bw)


# fp32 convolutions run as TF32 on the tensor cores (XLA's default precision on GPUs).
DEVICES = {
    "h100": Device("NVIDIA H100 SXM 80GB", {"float32": 495e12, "bfloat16": 989e12},
                   memory_bw=3.35e12, host_bw=50e9, memory_bytes=80e9),   # PCIe 5.0 x16
    "h200": Device("NVIDIA H200 141GB", {"float32": 495e12, "bfloat16": 989e12},
                   memory_bw=4.8e12, host_bw=50e9, memory_bytes=141e9),
    "a100": Device("NVIDIA A100 SXM 80GB", {"float32": 156e12, "bfloat16": 312e12},
                   memory_bw=2.0e12, host_bw=25e9, memory_bytes=80e9),    # PCIe 4.0 x16
    "l4": Device("NVIDIA L4 24GB", {"float32": 60e12, "bfloat16": 121e12},
                 memory_bw=0.3e12, host_bw=25e9, memory_bytes=24e9),
    # This project's 2-core x86 CPU: AVX2 FMA, 32 fp32 FLOP/cycle/core at ~2.5 GHz; the
    # host is the device, so only the gather moves the input.
    "cpu2": Device("2-core x86 CPU (XLA:CPU)", {"float32": 160e9, "bfloat16": 160e9},
                   memory_bw=10e9, host_bw=math.inf, memory_bytes=math.inf, gather_bw=5e9),
}


def device_for(kind: str) -> Device | None:
  """The preset of a JAX device kind (`jax.devices()[0].device_kind`), or None."""
  kind = kind.lower()
  for key in ("h200", "h100", "a100", "l4"):
    if key in kind:
      return DEVICES[key]
  return DEVICES["cpu2"] if kind == "cpu" else None


def lookup(name: str) -> Device:
  if name not in DEVICES:
    raise UsageError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
  return DEVICES[name]


@dataclasses.dataclass(frozen=True)
class Feed:
  """One head step at a cut: what it reads and computes, and how long each takes."""
  cut: int
  bytes_per_example: int      # one stored row (the image at cut 0)
  flops_per_example: int      # training FLOPs of the head (and frozen stages)
  batch_size: int
  compute_s: float            # at the device's peak x utilization
  host_input_s: float         # store on the host: gathered and sent over PCIe
  device_input_s: float       # store on the device: gathered in HBM (read + write)

  @property
  def intensity(self) -> float:
    """FLOPs per byte of input."""
    return self.flops_per_example / self.bytes_per_example

  @property
  def host_bound(self) -> bool:
    return self.host_input_s > self.compute_s

  @property
  def device_bound(self) -> bool:
    return self.device_input_s > self.compute_s

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), intensity=self.intensity, host_bound=self.host_bound,
                device_bound=self.device_bound)


def feed(macs: Sequence[int], row_bytes: int, cut: int, device: Device, *, batch_size: int,
         precision: str = "float32", store_cut: int | None = None) -> Feed:
  """The step of stages [cut, L) trained, [store_cut, cut) frozen (default: none),
  reading rows of `row_bytes` bytes."""
  store_cut = cut if store_cut is None else store_cut
  flops = 2 * (sum(int(m) for m in macs[store_cut:cut]) + costs.training_macs(macs, cut, "drop"))
  nbytes = batch_size * row_bytes
  return Feed(cut=cut, bytes_per_example=int(row_bytes), flops_per_example=int(flops),
              batch_size=batch_size,
              compute_s=batch_size * flops / device.step_flops_per_s(precision),
              host_input_s=nbytes / device.host_feed_bw,
              device_input_s=2 * nbytes / device.memory_bw)


def row_bytes(stage_costs: Sequence[costs.StageCost], image_shape: Sequence[int], cut: int,
              itemsize: int) -> int:
  """Bytes of one stored row at `cut`: the uint8 image at 0, else the map of stage cut-1."""
  if cut == 0:
    return math.prod(image_shape)
  return math.prod(stage_costs[cut - 1].output_shape) * itemsize


def feeds(stage_costs: Sequence[costs.StageCost], image_shape: Sequence[int], device: Device, *,
          batch_size: int, itemsize: int = 4, precision: str = "float32",
          cuts: Sequence[int] | None = None) -> list[Feed]:
  """`feed` at every cut (default: 0 to the last conv-free stage's index)."""
  macs = [c.macs for c in stage_costs]
  cuts = range(len(stage_costs)) if cuts is None else cuts
  return [feed(macs, row_bytes(stage_costs, image_shape, c, itemsize), c, device,
               batch_size=batch_size, precision=precision) for c in cuts]


def warning(f: Feed, device: Device, where: str = "host") -> str | None:
  """One line when the step at `f.cut` will wait for its input, else None."""
  bound = f.host_bound if where == "host" else f.device_bound
  if not bound:
    return None
  seconds = f.host_input_s if where == "host" else f.device_input_s
  return (f"the head's steps at cut {f.cut} will be input-bound on {device.name}: "
          f"{f.batch_size * f.bytes_per_example / 1e6:.1f} MB per step from a store in "
          f"{where} memory take ~{1e3 * seconds:.2f} ms against ~{1e3 * f.compute_s:.2f} ms "
          f"of compute ({f.intensity:.0f} FLOP/byte); a bfloat16 store (store.dtype) "
          f"halves the bytes")


def format_feeds(model_name: str, stage_costs: Sequence[costs.StageCost], fs: Sequence[Feed],
                 device: Device, precision: str, num_train: int | None = None,
                 views: int = 1) -> str:
  """The summary's table: per cut, bytes and FLOPs per step, intensity, times, verdicts."""
  ridge_host = device.step_flops_per_s(precision) / device.host_feed_bw
  ridge_dev = device.step_flops_per_s(precision) * 2 / device.memory_bw
  out = [f"input bandwidth of the head's step, batch {fs[0].batch_size}, on {device.name} "
         f"(assumed: {device.flops[precision] / 1e12:g} TFLOP/s {precision} x "
         f"{device.utilization:g} utilization, HBM {device.memory_bw / 1e12:g} TB/s, "
         f"host feed {device.host_feed_bw / 1e9:g} GB/s = min(PCIe "
         f"{device.host_bw / 1e9:g}, host gather {device.gather_bw / 1e9:g}); ridge "
         f"{ridge_host:,.0f} FLOP/byte from the host, {ridge_dev:,.0f} on the device)"]
  header = ("cut", "after stage", "row bytes", "MB/step", "GFLOP/step", "FLOP/byte",
            "compute ms", "host ms", "device ms", "host store", "device store")
  rows = []
  for f in fs:
    after = "(images)" if f.cut == 0 else stage_costs[f.cut - 1].name
    rows.append((str(f.cut), after, f"{f.bytes_per_example:,}",
                 f"{f.batch_size * f.bytes_per_example / 1e6:.1f}",
                 f"{f.batch_size * f.flops_per_example / 1e9:.2f}", f"{f.intensity:,.0f}",
                 f"{1e3 * f.compute_s:.3f}", f"{1e3 * f.host_input_s:.3f}",
                 f"{1e3 * f.device_input_s:.3f}",
                 "INPUT-BOUND" if f.host_bound else "fed",
                 "INPUT-BOUND" if f.device_bound else "fed"))
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"   # noqa: E731
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  out += [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]
  if num_train is not None:
    sizes = ", ".join(f"cut {f.cut}: {views * num_train * f.bytes_per_example / 1e9:.2f} GB"
                      for f in fs if f.cut > 0)
    out.append(f"store of {num_train:,} examples x {views} view(s) ({device.memory_bytes / 1e9:g}"
               f" GB on the device): {sizes}")
  return "\n".join(out)
