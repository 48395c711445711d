"""Train on your own images, end to end, with a folder made from the real Fashion-MNIST files.

  python experiments/make_image_folder.py [--out runs/fm_folder] [--results experiments/results/folder]

1. Writes DIR/train/<class>/ (500 per class) and DIR/test/<class>/ (100 per class):
   6,000 images from Debian's Fashion-MNIST IDX files
   (/usr/share/datasets/fashion-mnist), each resized to a random size (24 to 84
   pixels a side, independently) and saved in a random mode and format: JPEG
   (L, RGB; some with an EXIF orientation tag and their pixels stored turned,
   so that the upright image is the original), PNG (L, RGB, RGBA, P, LA,
   16-bit grey), BMP, WebP, GIF; plus a few files that are no images.
2. Measures the decode throughput of `ldjax.data.folder.load_folder` into a fresh
   cache, on one core (taskset) and on all of them, for these small images and
   for 600 photo-sized JPEGs (480x360).
3. Runs `python -m ldjax.run --dataset folder:DIR --strategy sgd,drop ...`, then the
   same command again (it must start from the cache without decoding), then
   `python -m ldjax.predict --evaluate` on DIR/test.

Prints (and writes to RESULTS/output.txt) every command, the git commit, the
machine's load, and each command's output and peak memory (RSS, with its
anonymous and file-backed parts sampled from /proc). The commands run from the
repository root and name paths in it relative to the root (experiments/repo_paths.py),
so the output reads the same on any clone. DIR (default runs/fm_folder, which git
ignores) gets the siblings DIR_cache, DIR_cache_bench and DIR_runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]

import repo_paths  # noqa: E402
from ldjax.data import idx  # noqa: E402

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle_boot"]
FORMATS = [("RGB", ".jpg"), ("L", ".jpg"), ("RGB", ".png"), ("L", ".png"), ("RGBA", ".png"),
           ("P", ".png"), ("LA", ".png"), ("I;16", ".png"), ("RGB", ".bmp"), ("RGB", ".webp"),
           ("P", ".gif"), ("RGB", ".jpg"), ("L", ".jpg")]
TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 100


def write_image(pixels: np.ndarray, path: Path, mode: str, rng) -> None:
  """A grey [28, 28] image at a random size, in `mode`, saved by the suffix of `path`."""
  size = (int(rng.integers(24, 85)), int(rng.integers(24, 85)))
  im = PIL.Image.fromarray(pixels).resize(size, PIL.Image.Resampling.BICUBIC)
  if mode == "I;16":
    im = PIL.Image.fromarray(np.asarray(im).astype(np.uint16) * 257)
  elif mode == "RGB":   # a random tint: colour images whose channels differ
    tint = rng.uniform(0.6, 1.0, 3)
    im = PIL.Image.fromarray((np.asarray(im)[..., None] * tint).astype(np.uint8))
  else:
    im = im.convert(mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".jpg" and rng.random() < 0.2:   # stored turned, tagged to turn back
    exif = PIL.Image.Exif()
    exif[0x0112] = 6   # "rotate 90 CW to display": store it turned 90 CCW
    im.transpose(PIL.Image.Transpose.ROTATE_90).save(path, exif=exif, quality=90)
  elif path.suffix == ".jpg":
    im.save(path, quality=90)
  else:
    im.save(path)


def make_folder(out: Path, source: Path, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  shutil.rmtree(out, ignore_errors=True)
  counts = {}
  for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
    x, y = idx.load_idx_split(str(source), split)
    for c, name in enumerate(CLASSES):
      rows = np.flatnonzero(y == c)[:per_class]
      for i in rows:
        mode, suffix = FORMATS[int(rng.integers(len(FORMATS)))]
        write_image(x[i].reshape(28, 28), out / split / name / f"{split}{i:05d}{suffix}", mode, rng)
        counts[suffix] = counts.get(suffix, 0) + 1
    (out / split / CLASSES[0] / "README.txt").write_text("not an image: ignored\n")
    (out / split / CLASSES[1] / "labels.csv").write_text("file,label\n")
  return counts


class Memory:
  """Peak RssAnon / RssFile / VmHWM of a process, sampled from /proc every 0.2 s."""

  def __init__(self, pid: int):
    self.pid, self.peak = pid, {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    self.thread = threading.Thread(target=self.sample, daemon=True)
    self.thread.start()

  def sample(self):
    while True:
      try:
        text = Path(f"/proc/{self.pid}/status").read_text()
      except OSError:
        return
      for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in self.peak:
          self.peak[key] = max(self.peak[key], int(value.split()[0]))
      time.sleep(0.2)

  def __str__(self):
    return ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in self.peak.items())


def run(cmd: list[str], log, env=None) -> tuple[str, float]:
  log(f"\n$ {repo_paths.command(cmd)}")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
  memory = Memory(proc.pid)
  out = proc.communicate()[0]
  seconds = time.perf_counter() - t0
  log(out.rstrip())
  log(f"[exit {proc.returncode}, {seconds:.1f} s wall; peak memory: {memory}]")
  if proc.returncode:
    raise SystemExit(f"command failed: {repo_paths.command(cmd)}")
  return out, seconds


DECODE = """
import sys, time
from ldjax.data import folder, image_cache
t0 = time.perf_counter()
side = int(sys.argv[3])
got = folder.load_folder(sys.argv[1], folder.FolderOptions(image_size=(side, side),
                         cache_dir=sys.argv[2]), log=print)
print(f"load_folder: {time.perf_counter() - t0:.2f} s including the listing and header pass")
"""


def make_photos(out: Path, source: Path, n: int = 600, seed: int = 1) -> None:
  """`n` tinted 480x360 JPEGs (quality 90) in 10 class folders: photo-sized files."""
  rng = np.random.default_rng(seed)
  shutil.rmtree(out, ignore_errors=True)
  x, y = idx.load_idx_split(str(source), "test")
  for i in range(n):
    a = np.asarray(PIL.Image.fromarray(x[i].reshape(28, 28)).resize((480, 360),
                                                             PIL.Image.Resampling.BICUBIC))
    rgb = (a[..., None] * rng.uniform(0.6, 1.0, 3)).astype(np.uint8)
    (out / CLASSES[y[i]]).mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(rgb).save(out / CLASSES[y[i]] / f"{i:04d}.jpg", quality=90)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
  p.add_argument("--out", default=str(ROOT / "runs" / "fm_folder"))
  p.add_argument("--results", default=str(ROOT / "experiments" / "results" / "folder"))
  p.add_argument("--epochs", default="4")
  args = p.parse_args()
  # From here on the working directory is the repository root (the commands' too), and
  # paths in the repository are relative to it: what the output shows runs on any clone.
  out_dir, results = (Path(repo_paths.rel(Path(d).resolve(), home=False))
                      for d in (args.out, args.results))
  source = Path(args.source).resolve()
  os.chdir(ROOT)
  results.mkdir(parents=True, exist_ok=True)
  lines = []

  def log(text=""):
    print(text, flush=True)
    lines.append(text)

  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  log(f"# experiments/make_image_folder.py, commit {commit}")
  log(f"# machine: {os.cpu_count()} CPUs, load average {os.getloadavg()} at the start")
  out, cache, work = out_dir, Path(f"{out_dir}_cache"), Path(f"{out_dir}_runs")
  for d in (cache, work):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.perf_counter()
  counts = make_folder(out / "photos", source)
  log(f"wrote {sum(counts.values())} images ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}"
      f") to {out / 'photos'} in {time.perf_counter() - t0:.1f} s")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  make_photos(out / "large_jpegs", source)
  log("\n## decode throughput (a fresh cache each time): the 6,000 small images at 28x28, "
      "then 600 480x360 JPEGs at 64x64; on 1 core, then on all")
  for folder_name, side in (("photos", "28"), ("large_jpegs", "64")):
    for cpus in ("0", f"0-{os.cpu_count() - 1}"):
      shutil.rmtree(str(cache) + "_bench", ignore_errors=True)
      run(["taskset", "-c", cpus, sys.executable, "-c", DECODE, str(out / folder_name),
           str(cache) + "_bench", side], log, env)
  shutil.rmtree(str(cache) + "_bench", ignore_errors=True)

  train = [sys.executable, "-m", "ldjax.run", "--dataset", f"folder:{out / 'photos'}",
           "--strategy", "sgd,drop", "--model", "resnet18", "--width", "0.125",
           "--image-size", "28", "--epochs", args.epochs, "--warmup", "1", "--lr", "0.03",
           "--batch-size", "64", "--image-cache", str(cache), "--workdir", str(work),
           "--tensorboard", "--no-progress"]
  log("\n## train (first run: decodes)")
  run(train, log, env)
  (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
  x = np.load(entry / "x_train.npy", mmap_mode="r")
  grid = np.concatenate([np.concatenate(list(x[r * 16:(r + 1) * 16]), 1) for r in range(4)], 0)
  PIL.Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), 0).save(
      results / "train_images.png")
  log(f"the first 64 decoded training images (28x28x3, as the model sees them before "
      f"normalization): {results / 'train_images.png'}")
  log("\n## the same command again (second run: reads the cache)")
  second, _ = run(train + ["--overwrite"], log, env)
  assert "decoded images read from the cache" in second and "decoding them" not in second
  log("\n## predict --evaluate on the test folder")
  run([sys.executable, "-m", "ldjax.predict", "--weights", str(work / "drop"), "--input",
       str(out / "photos" / "test"), "--output", str(work / "test_logits.npy"), "--evaluate",
       "--no-progress"], log, env)
  head = (work / "predictions.csv").read_text().splitlines()[:4]
  log("\n## head of predictions.csv\n" + "\n".join(head))
  log(f"\n# load average {os.getloadavg()} at the end")
  (results / "output.txt").write_text("\n".join(lines) + "\n")
  for name in ("comparison.md",):
    shutil.copy(work / name, results / name)
  shutil.copy(work / "drop" / "metrics.csv", results / "drop_metrics.csv")
  print(f"wrote {results}")


if __name__ == "__main__":
  main()
