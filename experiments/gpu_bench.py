"""GPU benchmark of the head's input (issue 31, item 5): PREPARED, NOT YET RUN ON A GPU.

Measures, for full-width ResNet-18 on CIFAR-shaped 32x32x3 data (synthetic
images, so no network is needed), the images per second of

- SGD's step (cut 0: the images, augmented with flip and crop on the host),
- the head's step at several cuts (after the stem, layer1, layer2, layer3),

each fed four ways: `bare` (the same batch every step: the step alone),
`host_sync` (the store's rows gathered with numpy and put on the device in
the loop's thread, as before `ldjax.train.reader`), `host_reader` (ldjax's
loop with its background reader) and `device` (ldjax's loop reading through
`ldjax.train.device_input`: the store, or for SGD the images, held in device
memory and gathered, cropped and flipped there by its jitted reader, the
default on an accelerator). For the loop's ways it records the input-wait
fraction (seconds the loop waited for input / seconds of the epoch), and
next to every cut the input-bandwidth
model's verdict for the device (`ldjax.models.bandwidth`). Then a short SGD
vs Drop run on the synthetic CIFAR-shaped data (flip; the drop forced, after
epoch 2, of the stem and layer1: a 10.7 GB store, in host memory and, by default,
device memory) compares the training time saved with the
training MACs saved, and one on the real Fashion-MNIST subset carried in the
package (`--dataset embedded`, the paper's decision rule) adds accuracy.

Sized to finish in under 8 minutes on one H100 (most of it compiles); each
section is skipped, and says so, once `--limit-s` seconds have passed.

On the GPU machine (no network), from the repository root:

  pip install --no-index --find-links wheels/ 'jax[cuda12]'   # wheels carried along
  python experiments/gpu_bench.py --out experiments/results/gpu_bench/h100.json

and on this CPU, to check the script's logic in a minute (tiny settings):

  python experiments/gpu_bench.py --smoke --out /tmp/gpu_bench_smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ldjax.data.augment import Augment  # noqa: E402
from ldjax.data.datasets import Dataset, load_dataset  # noqa: E402
from ldjax.models import bandwidth, costs  # noqa: E402
from ldjax.models.zoo import build_model  # noqa: E402
from ldjax.runs.config import TrainConfig  # noqa: E402
from ldjax.store.features import FeatureStore  # noqa: E402
from ldjax.train import compare, device_input, scoring  # noqa: E402
from ldjax.train.assembly import trainer_for  # noqa: E402
from ldjax.train.decisions import DropState  # noqa: E402
from ldjax.train.epoch import Trainer  # noqa: E402

# Cuts measured: 0 (SGD), after the stem, layer1, layer2, layer3 (stage indices + 1).
CUT_AFTER = ("(images)", "stem", "layer1.1", "layer2.1", "layer3.1")


@dataclasses.dataclass(frozen=True)
class Size:
  width: float
  batch: int
  n_train: int        # rows of the throughput measurements' stores
  fit_train: int      # SGD vs Drop on synthetic data
  fit_test: int
  fit_epochs: int
  fit_drop_at: str
  fm_train: int       # SGD vs Drop on the embedded Fashion-MNIST
  fm_epochs: int
  fm_warmup: int


FULL = Size(width=1.0, batch=256, n_train=8192, fit_train=20480, fit_test=2048, fit_epochs=6,
            fit_drop_at="2:3", fm_train=6000, fm_epochs=8, fm_warmup=2)
SMOKE = Size(width=0.0625, batch=32, n_train=256, fit_train=256, fit_test=64, fit_epochs=3,
             fit_drop_at="1:3", fm_train=256, fm_epochs=3, fm_warmup=1)


class Bar:
  def set_postfix_str(self, text):
    pass

  def update(self, n):
    pass


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> Dataset:
  """CIFAR-shaped uint8 images and 10 classes; labels follow the mean brightness of one
  channel, so the run has something to learn."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
  y = np.digitize(x[..., 0].mean(axis=(1, 2)), np.linspace(124.5, 130.5, 9)).astype(np.int32)
  return Dataset("synthetic-cifar", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10,
                 mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29))


def host_store(shape, n: int, seed: int = 0) -> np.ndarray:
  """n rows of random float32 maps (a tiled random block: quick to make)."""
  rng = np.random.default_rng(seed)
  block = rng.standard_normal((min(n, 64), *shape), dtype=np.float32)
  return np.concatenate([block] * -(-n // len(block)))[:n]


def memory_store(rows: np.ndarray, cut: int) -> FeatureStore:
  """`rows` as a complete in-memory feature store of stages [0, cut)."""
  store = FeatureStore(len(rows), rows.shape[1:], "float32", (0, cut))
  store.write(np.arange(len(rows)), rows)
  store.finalize()
  return store


def host_epoch(trainer: Trainer, read, threads: int, epoch: int) -> dict:
  """One epoch of ldjax's own loop (`Trainer.train_steps`) reading with `read`."""
  trainer.reader_threads = threads
  t0 = time.perf_counter()
  _, metrics, wait_s = trainer.train_steps(epoch, read, Bar())
  seconds = time.perf_counter() - t0
  n = len(metrics) * trainer.batch_size
  return {"images_per_s": n / seconds, "seconds": seconds, "input_wait_s": wait_s,
          "input_wait_fraction": wait_s / seconds}


def device_reader(trainer: Trainer, cut: int, draws, store: FeatureStore | None):
  """ldjax's jitted reader (`ldjax.train.device_input`) of the images (cut 0, augmented
  there) or of `store`, within the default budget (1 GiB on a CPU, whose default is 0)."""
  p = trainer.placement
  budget = device_input.budget_bytes(None, p) or (1 << 30)
  size = None if store is None else trainer.shapes[cut - 1][:2]
  read = device_input.DeviceInput(p, budget).reader(
      draws, trainer.batch_size, trainer.x_train, store, size, trainer.data.image_shape[:2])
  if read is None:
    raise SystemExit(f"the input of cut {cut} does not fit {budget / 1e9:.1f} GB per device")
  return read


def bare_epoch(trainer: Trainer, cut: int, read, epoch: int) -> dict:
  """The steps alone: the device reader's first batch for every step."""
  p = trainer.placement
  state = trainer.head_state(cut)
  scores = p.replicate(scoring.init(state.params))
  batches = trainer.blocks.batches(trainer.seed, epoch, trainer.batch_size)
  y, x = p.put_batch(trainer.y_train[batches[0]]), read(batches[0])
  jax.block_until_ready(x)
  metrics, t0 = [], time.perf_counter()
  for s in range(len(batches)):
    state, scores, m = trainer.step_fn.fn(state, scores, [], x, y, trainer.key,
                                          np.int32(s), np.float32(0.0))
    metrics.append(m)
    if s >= 2:
      metrics[s - 2]["loss"].block_until_ready()
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  trainer.merge_head(state)
  return {"images_per_s": len(batches) * trainer.batch_size / seconds, "seconds": seconds}


def throughput(size: Size, device: bandwidth.Device | None, log) -> list[dict]:
  data = synthetic_cifar(size.n_train, size.batch)
  model = build_model("resnet18", data.image_shape, 10, width=size.width)
  cfg = TrainConfig(model="resnet18", width=size.width, epochs=4, warmup=1,
                    batch_size=size.batch, lr=0.05, augment="flip,crop").resolved()
  trainer = trainer_for(model, data, cfg, "drop",
                        model.init(jax.random.key(0), data.image_shape), None)
  names = ["(images)", *model.stage_names]
  sc = costs.stage_costs(model, data.image_shape)
  rows = []
  for after in CUT_AFTER:
    cut = names.index(after) if after == "(images)" else model.stage_names.index(after) + 1
    t0 = time.perf_counter()
    trainer.drop = DropState(cut=cut, store_cut=cut)
    trainer.compile_current_step()   # --adaptive-batch is off: batch B
    compile_s = time.perf_counter() - t0
    if cut == 0:   # SGD: the images, flipped and cropped on the host as the loop reads them
      draws, store, source = trainer.draws(0), None, data.x_train
      read = functools.partial(draws.images, trainer.x_train)
    else:          # one stored view per image: the store's rows as they are
      draws = Augment().draws(0, 0, size.n_train)
      store = memory_store(host_store(trainer.shapes[cut - 1], size.n_train), cut)
      source, read = store.read(slice(None)), store.read
    row = {"cut": cut, "after": after, "compile_s": compile_s,
           "row_bytes": int(source[0].nbytes)}
    host_epoch(trainer, read, 2, 0)   # warm-up: first-run allocations
    row["host_sync"] = host_epoch(trainer, read, 0, 1)
    row["host_reader"] = host_epoch(trainer, read, 2, 2)
    on_device = device_reader(trainer, cut, draws, store)
    row["device"] = host_epoch(trainer, on_device, 2, 3)
    row["bare"] = bare_epoch(trainer, cut, on_device, 4)
    del on_device
    if device is not None:
      f = bandwidth.feeds(sc, data.image_shape, device, batch_size=size.batch, cuts=[cut])[0]
      row["model"] = f.to_json()
    rows.append(row)
    log(f"cut {cut} (after {after}): bare {row['bare']['images_per_s']:,.0f} img/s, "
        f"device store {row['device']['images_per_s']:,.0f} (wait "
        f"{100 * row['device']['input_wait_fraction']:.1f} %), host+reader "
        f"{row['host_reader']['images_per_s']:,.0f} (wait "
        f"{100 * row['host_reader']['input_wait_fraction']:.1f} %), host sync "
        f"{row['host_sync']['images_per_s']:,.0f} (wait "
        f"{100 * row['host_sync']['input_wait_fraction']:.1f} %); compile {compile_s:.1f} s")
  return rows


def sgd_vs_drop(cfg: TrainConfig, data: Dataset, model, workdir: Path, log) -> dict:
  summaries = compare.run_strategies(cfg, ["sgd", "drop"], workdir, data=data, model=model,
                                     progress=False, log=log)
  sgd, drop = summaries["sgd"], summaries["drop"]
  out = {s: {k: summaries[s][k] for k in ("test_accuracy", "train_time_s", "compile_time_s",
                                          "train_macs_total", "drop_events")}
         for s in summaries}
  waits, t = {}, {}
  for s in ("sgd", "drop"):
    lines = (workdir / s / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    waits[s] = [{"epoch": r["epoch"], "stored_stages": r["stored_stages"],
                 "train_s": r["time"]["train_s"], "input_wait_s": r["time"]["input_wait_s"]}
                for r in recs]
    # T without compiles (a one-off per cut): the steps and the extraction.
    t[s] = sum(r["time"]["train_s"] + r["time"]["extract_store_s"] for r in recs)
  out["input_wait_per_epoch"] = waits
  out["T_no_compile_s"] = t
  out["dT_percent"] = 100 * (1 - drop["train_time_s"] / sgd["train_time_s"])
  out["dT_no_compile_percent"] = 100 * (1 - t["drop"] / t["sgd"])
  out["dTrainMACs_percent"] = 100 * (1 - drop["train_macs_total"] / sgd["train_macs_total"])
  out["saves_its_macs_share"] = out["dT_no_compile_percent"] >= out["dTrainMACs_percent"]
  log(f"SGD vs Drop on {data.name}: dT {out['dT_percent']:.1f} % "
      f"({out['dT_no_compile_percent']:.1f} % without compiles), train MACs "
      f"-{out['dTrainMACs_percent']:.1f} %; accuracy SGD {sgd['test_accuracy']:.2f} %, "
      f"Drop {drop['test_accuracy']:.2f} %")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny settings that check the script's logic on a CPU")
  parser.add_argument("--limit-s", type=float, default=420.0,
                      help="skip the sections still to come after this many seconds")
  parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
  args = parser.parse_args(argv)
  size = SMOKE if args.smoke else FULL
  start, lines = time.perf_counter(), []

  def log(text: str) -> None:
    line = f"[{time.perf_counter() - start:6.1f} s] {text}"
    print(line, flush=True)
    lines.append(line)

  kind = jax.devices()[0].device_kind
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()
  out = {"device": kind, "platform": jax.devices()[0].platform,
         "devices": jax.device_count(), "jax": jax.__version__, "commit": commit,
         "smoke": args.smoke, "size": dataclasses.asdict(size), "cpu_count": os.cpu_count()}
  if not args.smoke and jax.devices()[0].platform != "gpu":
    log(f"warning: running on {kind}, not a GPU: the numbers are not the GPU's")
  log(f"device: {kind} x {jax.device_count()}, jax {jax.__version__}, commit {commit}")
  device = bandwidth.device_for(kind)
  sections = {}

  def section(name: str, fn) -> None:
    if time.perf_counter() - start > args.limit_s:
      sections[name] = {"skipped": f"over --limit-s {args.limit_s:g} s"}
      log(f"{name}: skipped (over --limit-s)")
      return
    t0 = time.perf_counter()
    sections[name] = fn()
    log(f"{name}: done in {time.perf_counter() - t0:.1f} s")

  section("throughput", lambda: throughput(size, device, log))
  with tempfile.TemporaryDirectory() as tmp:
    synth = synthetic_cifar(size.fit_train, size.fit_test, seed=1)
    model = build_model("resnet18", synth.image_shape, 10, width=size.width)
    # flip: a store of 2 views per image (flip and crop would keep 4, 21 GB at cut 3).
    cfg = TrainConfig(model="resnet18", width=size.width, epochs=size.fit_epochs, warmup=1,
                      batch_size=size.batch, lr=0.05, augment="flip", feature_memory_gb=32.0,
                      drop_at=size.fit_drop_at, eval_every=size.fit_epochs)
    section("sgd_vs_drop_synthetic_cifar",
            lambda: sgd_vs_drop(cfg, synth, model, Path(tmp) / "synthetic", log))
    fm = load_dataset("embedded", train_size=size.fm_train)
    fm_model = build_model("resnet18", fm.image_shape, fm.num_classes, width=size.width)
    fm_cfg = TrainConfig(model="resnet18", width=size.width, epochs=size.fm_epochs,
                         warmup=size.fm_warmup, batch_size=size.batch, lr=0.05,
                         eval_every=size.fm_epochs)
    section("sgd_vs_drop_fashion_mnist",
            lambda: sgd_vs_drop(fm_cfg, fm, fm_model, Path(tmp) / "fashion", log))
  out |= {"sections": sections, "total_s": time.perf_counter() - start, "log": lines}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out, indent=1) + "\n")
  log(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
