"""`folder:DIR` datasets: the image policy (`ldjax.data.images`), the layouts and split
(`ldjax.data.folder`), the decode cache (`ldjax.data.image_cache`), every bad input as one
line with exit status 2 and nothing written, and a decode killed by SIGKILL or Ctrl-C.

The images are real files (JPEG, PNG, BMP, WebP, GIF) of mixed sizes and modes, made
from the embedded Fashion-MNIST subset in module-scoped fixtures.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from ldjax import run
from ldjax.data import folder, image_cache, images
from ldjax.data.datasets import load_dataset
from ldjax.data.stats import channel_stats
from ldjax.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = 16   # images per class of the fixture folders (10 classes)
FORMATS = [("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".gif"), ("I;16", ".png"),
           ("LA", ".png"), ("RGB", ".bmp"), ("RGB", ".webp"), ("L", ".jpg")]


def save_image(pixels: np.ndarray, path: Path, mode: str, size: tuple[int, int]) -> None:
  """A grey uint8 [H, W] image resized to `size` (W, H) and saved in `mode` by suffix."""
  im = PIL.Image.fromarray(pixels).resize(size, PIL.Image.Resampling.BILINEAR)
  if mode == "I;16":
    im = PIL.Image.fromarray(np.asarray(im).astype(np.uint16) * 257)
  elif mode == "RGB":   # tinted, so that the channels differ
    a = np.asarray(im).astype(np.int16)
    im = PIL.Image.fromarray(np.stack([a, a * 3 // 4, a // 2], -1).astype(np.uint8))
  else:
    im = im.convert(mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  im.save(path)


def make_folder(root: Path, x: np.ndarray, y: np.ndarray, seed: int, split: str = "") -> None:
  """Images of random sizes (22..48 px a side) and the FORMATS' modes, one subfolder per
  class (named after the Fashion-MNIST class), and a few files that are no images."""
  rng = np.random.default_rng(seed)
  for i, (pixels, label) in enumerate(zip(x[..., 0], y)):
    mode, suffix = FORMATS[i % len(FORMATS)]
    size = (int(rng.integers(22, 49)), int(rng.integers(22, 49)))
    save_image(pixels, root / split / f"class_{label}" / f"img{i:04d}{suffix}", mode, size)
  (root / split / "class_0" / "notes.txt").write_text("not an image")
  (root / split / "class_1" / ".DS_Store").write_bytes(b"\0\0")


def balanced(x, y, per_class, offset=0):
  keep = np.concatenate([np.flatnonzero(y == c)[offset:offset + per_class] for c in range(10)])
  keep.sort()
  return x[keep], y[keep]


@pytest.fixture(scope="module")
def embedded():
  return load_dataset("embedded")


@pytest.fixture(scope="module")
def one_tree(tmp_path_factory, embedded):
  """DIR/<class>/...: 10 classes of PER_CLASS images."""
  root = tmp_path_factory.mktemp("one_tree") / "photos"
  make_folder(root, *balanced(embedded.x_train, embedded.y_train, PER_CLASS), seed=0)
  return root


@pytest.fixture(scope="module")
def splits(tmp_path_factory, embedded):
  """DIR/train/<class>/... and DIR/test/<class>/..."""
  root = tmp_path_factory.mktemp("splits") / "photos"
  make_folder(root, *balanced(embedded.x_train, embedded.y_train, PER_CLASS), 1, "train")
  make_folder(root, *balanced(embedded.x_test, embedded.y_test, 4), 2, "test")
  return root


def options(tmp_path, **kw):
  return folder.FolderOptions(cache_dir=str(tmp_path / "cache"), **kw)


# --- the image policy ---------------------------------------------------------------------

def test_modes_become_l_or_rgb(tmp_path):
  grey = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) % 256
  for mode, suffix in FORMATS:
    path = tmp_path / f"{mode.replace(';', '')}{suffix}"
    save_image(grey.astype(np.uint8), path, mode, (40, 40))
    for channels in (1, 3):
      a = images.load_image(path, (40, 40), channels)
      assert a.shape == (40, 40, channels) and a.dtype == np.uint8, (mode, suffix)
      if suffix in (".png", ".bmp", ".gif") and mode != "RGB":   # lossless grey
        assert np.array_equal(a[..., 0], grey), (mode, suffix)
  # 16-bit grey is scaled to 8 bits, not clipped.
  PIL.Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
  assert images.read_header(tmp_path / "deep.png").grey
  assert images.load_image(tmp_path / "deep.png", (8, 8), 1).max() == round(40000 / 257)


def test_exif_orientation_is_applied(tmp_path):
  # Stored 40 wide x 20 high, left half black; orientation 6: shown turned 90 deg clockwise.
  a = np.full((20, 40), 255, np.uint8)
  a[:, :20] = 0
  exif = PIL.Image.Exif()
  exif[0x0112] = 6
  PIL.Image.fromarray(a).save(tmp_path / "turned.jpg", exif=exif, quality=95)
  header = images.read_header(tmp_path / "turned.jpg")
  assert (header.width, header.height) == (20, 40)
  out = images.load_image(tmp_path / "turned.jpg", (40, 20), 1)[..., 0]
  assert out.shape == (40, 20)
  assert out[:15].mean() < 30 and out[25:].mean() > 225   # the black half is now on top


def test_shorter_side_then_centre_crop(tmp_path):
  wide = np.zeros((30, 90, 3), np.uint8)
  wide[:, 30:60] = 255   # the central square
  PIL.Image.fromarray(wide).save(tmp_path / "wide.png")
  out = images.load_image(tmp_path / "wide.png", (15, 15), 3)
  # torchvision's Resize(15) + CenterCrop(15): shorter side to 15 (90x30 -> 45x15), centre.
  want = np.asarray(PIL.Image.fromarray(wide).resize((45, 15), PIL.Image.Resampling.BILINEAR))
  assert np.array_equal(out, want[:, 15:30])
  assert out[:, 1:-1].min() == 255
  # Enlarging up to 2x is allowed; more is "too small".
  assert images.load_image(tmp_path / "wide.png", (60, 60), 3).shape == (60, 60, 3)
  with pytest.raises(images.TooSmall, match="30 \\(W x H\\)|90x30"):
    images.load_image(tmp_path / "wide.png", (61, 61), 3)


def test_gif_first_frame(tmp_path):
  frames = [PIL.Image.fromarray(np.full((16, 16), v, np.uint8)).convert("P") for v in (10, 200)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  assert abs(int(images.load_image(tmp_path / "anim.gif", (16, 16), 1).mean()) - 10) <= 1


# --- layouts and the split ----------------------------------------------------------------

def test_one_tree_split_is_stratified_and_stable(one_tree, tmp_path):
  listing = folder.scan(one_tree)
  assert listing.classes == tuple(f"class_{c}" for c in range(10))
  test_counts = np.bincount(listing.labels["test"], minlength=10)
  assert (test_counts == round(0.2 * PER_CLASS)).all()
  assert (np.bincount(listing.labels["train"], minlength=10) == PER_CLASS - test_counts).all()
  assert listing.ignored == 2   # notes.txt and .DS_Store
  assert not set(listing.files["train"]) & set(listing.files["test"])
  # The same split every time; a file added moves no other file between the splits.
  assert folder.scan(one_tree).files == listing.files
  half = folder.scan(one_tree, test_fraction=0.5)
  assert (np.bincount(half.labels["test"]) == PER_CLASS // 2).all()
  copy = tmp_path / "copy"
  os.system(f"cp -r {one_tree} {copy}")
  PIL.Image.new("L", (30, 30)).save(copy / "class_3" / "zzz_new.png")
  grown = folder.scan(copy)
  old_test = set(listing.files["test"])
  assert old_test - set(grown.files["test"]) <= {f for f in old_test if f.startswith("class_3")}
  assert len(old_test ^ set(grown.files["test"])) <= 2
  # The training rows mix the classes (contiguous blocks of --data-shards hold all classes).
  assert len(set(listing.labels["train"][:40].tolist())) >= 8


def test_train_test_and_val_layouts(splits, tmp_path):
  listing = folder.scan(splits)
  assert set(listing.files) == {"train", "test"} and listing.test_from == "test/"
  assert len(listing.files["test"]) == 40
  with pytest.raises(UsageError, match="drop folder.test_fraction"):
    folder.scan(splits, test_fraction=0.3)
  val = tmp_path / "val_layout"
  os.system(f"cp -r {splits} {val} && cp -r {val}/test {val}/val")
  listing = folder.scan(val)
  assert set(listing.files) == {"train", "test", "val"}
  data = load_dataset(f"folder:{val}", folder=options(tmp_path))
  assert data.x_val is not None and len(data.x_val) == len(data.x_test) == 40


# --- decoding once, the cache ---------------------------------------------------------------

def test_decode_once_then_read_the_cache(one_tree, tmp_path, monkeypatch):
  lines = []
  data = load_dataset(f"folder:{one_tree}", folder=options(tmp_path), log=lines.append)
  assert "decoding them once to 32x32x3" in lines[0] and "2 other files ignored" in lines[0]
  assert isinstance(data.x_train, np.memmap) and isinstance(data.x_test, np.memmap)
  assert data.class_names == tuple(f"class_{c}" for c in range(10)) and data.num_classes == 10
  assert data.image_shape == (32, 32, 3)   # the median side (22..48), at most 2 x 22
  (entry,) = [p for p in (tmp_path / "cache").iterdir()]
  files = json.loads((entry / "files.json").read_text())
  for split, x in (("train", data.x_train), ("test", data.x_test)):
    for row in (0, len(x) // 2, len(x) - 1):
      want = images.load_image(one_tree / files[split][row], (32, 32), 3)
      assert np.array_equal(x[row], want), (split, row)
  assert np.allclose(data.mean, channel_stats(np.asarray(data.x_train))[0])
  assert np.allclose(data.std, channel_stats(np.asarray(data.x_train))[1])
  # A second load decodes nothing.
  def no_decode(*args, **kwargs):
    raise AssertionError("decoded again")
  monkeypatch.setattr(images, "load_image", no_decode)
  monkeypatch.setattr(images, "read_header", no_decode)
  lines.clear()
  again = load_dataset(f"folder:{one_tree}", folder=options(tmp_path), log=lines.append)
  assert "read from the cache" in lines[0]
  assert np.array_equal(again.x_train, data.x_train) and again.mean == data.mean
  monkeypatch.undo()
  # Other settings: another entry; a changed file: decoded again, the old entry removed.
  grey = load_dataset(f"folder:{one_tree}", folder=options(tmp_path, channels=1,
                                                           image_size=(20, 24)))
  assert grey.image_shape == (20, 24, 1)
  assert len(list((tmp_path / "cache").iterdir())) == 2
  changed = one_tree / files["train"][0]
  os.utime(changed, ns=(time.time_ns(), time.time_ns()))
  lines.clear()
  load_dataset(f"folder:{one_tree}", folder=options(tmp_path), log=lines.append)
  assert "decoding them once" in lines[0]
  assert entry.name not in [p.name for p in (tmp_path / "cache").iterdir()]
  assert len(list((tmp_path / "cache").iterdir())) == 2


def test_default_channels_grey_folder(tmp_path, embedded):
  root = tmp_path / "grey"
  for i in range(12):
    save_image(embedded.x_train[i, ..., 0], root / f"c{i % 2}" / f"{i}.png", "L", (28, 28))
  data = load_dataset(f"folder:{root}", folder=options(tmp_path))
  assert data.image_shape == (28, 28, 1)


def test_skip_bad_images_counts_them(one_tree, tmp_path):
  bad = tmp_path / "bad"
  os.system(f"cp -r {one_tree} {bad}")
  victim = next((bad / "class_2").glob("*.jpg"))
  truncate_jpeg(victim)
  (bad / "class_4" / "garbage.png").write_bytes(b"\x89PNG not really")
  PIL.Image.new("RGB", (10, 10)).save(bad / "class_5" / "tiny.png")
  lines = []
  data = load_dataset(f"folder:{bad}", folder=options(tmp_path, skip_bad_images=True,
                                                      image_size=(32, 32)), log=lines.append)
  assert "3 bad images skipped" in lines[-1]
  assert len(data.x_train) + len(data.x_test) == 10 * PER_CLASS + 2 - 3
  meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
  assert {Path(f).name for f, _ in meta["skipped"]} == {"garbage.png", "tiny.png", victim.name}


def truncate_jpeg(path: Path) -> None:
  """Cuts a real JPEG in the middle of its pixel data (after the start of scan marker):
  its header reads, its pixels do not."""
  raw = path.read_bytes()
  scan = raw.index(b"\xff\xda")
  path.write_bytes(raw[:(scan + len(raw)) // 2])
  images.read_header(path)   # still identifiable: only the decode finds it truncated


# --- bad input: one line, exit status 2, nothing written --------------------------------------

SMALL = ["--model", "resnet18", "--width", "0.0625", "--epochs", "2", "--warmup", "1",
         "--batch-size", "16", "--no-progress"]


def cli_error(capsys, tmp_path, dataset, *extra):
  workdir, cache = tmp_path / "wd", tmp_path / "cli_cache"
  code = run.main(SMALL + ["--dataset", f"folder:{dataset}", "--workdir", str(workdir),
                           "--image-cache", str(cache), *extra])
  out, err = capsys.readouterr()
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2, (out, err)
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
  assert not workdir.exists()
  assert not cache.exists() or not [p for p in cache.iterdir()], list(cache.iterdir())
  return lines[0]


def copy_of(src: Path, tmp_path: Path, name: str) -> Path:
  dst = tmp_path / name
  os.system(f"cp -r {src} {dst}")
  return dst


def test_bad_folders(capsys, tmp_path, one_tree, splits):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "holds no class folders" in cli_error(capsys, tmp_path, empty)
  assert "does not exist" in cli_error(capsys, tmp_path, tmp_path / "nowhere")
  no_images = copy_of(one_tree, tmp_path, "no_images")
  (no_images / "zebra").mkdir()
  (no_images / "zebra" / "readme.txt").write_text("x")
  line = cli_error(capsys, tmp_path, no_images)
  assert f"class folder {no_images / 'zebra'} holds no images (1 other files)" in line
  single = tmp_path / "single"
  os.system(f"mkdir -p {single} && cp -r {one_tree}/class_3 {single}/")
  assert "has one class (class_3)" in cli_error(capsys, tmp_path, single)
  mismatch = copy_of(splits, tmp_path, "mismatch")
  os.rename(mismatch / "test" / "class_9", mismatch / "test" / "class_nine")
  line = cli_error(capsys, tmp_path, mismatch)
  assert "train and test have different classes" in line and "class_9" in line


def test_bad_images(capsys, tmp_path, one_tree):
  truncated = copy_of(one_tree, tmp_path, "truncated")
  victim = sorted((truncated / "class_6").glob("*.jpg"))[0]
  truncate_jpeg(victim)
  line = cli_error(capsys, tmp_path, truncated)
  assert f"image {victim} cannot be read" in line and "--skip-bad-images" in line
  corrupt = copy_of(one_tree, tmp_path, "corrupt")
  garbage = corrupt / "class_1" / "broken.jpg"
  garbage.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
  assert f"image {garbage} cannot be read" in cli_error(capsys, tmp_path, corrupt)
  line = cli_error(capsys, tmp_path, one_tree, "--image-size", "128")
  assert "is too small for 128x128" not in line and "too small for 128x128 (H x W)" in line
  assert "give a smaller --image-size" in line


def test_unwritable_cache(capsys, tmp_path, one_tree):
  # Root ignores permission bits: the cache lies under a regular file instead.
  blocker = tmp_path / "afile"
  blocker.write_text("x")
  workdir = tmp_path / "wd"
  code = run.main(SMALL + ["--dataset", f"folder:{one_tree}", "--workdir", str(workdir),
                           "--image-cache", str(blocker / "cache")])
  out, err = capsys.readouterr()
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith(f"error: cannot write the image cache '{blocker / 'cache'}'")
  assert not workdir.exists() and blocker.read_text() == "x"


def test_folder_flags_need_a_folder(capsys, tmp_path):
  code = run.main(SMALL + ["--image-size", "32", "--workdir", str(tmp_path / "wd")])
  _, err = capsys.readouterr()
  assert code == 2 and "--image-size applies to --dataset folder:DIR only" in err


# --- a decode interrupted for real ------------------------------------------------------------

SLOW_DECODE = """
import signal, sys, time
# Ctrl-C as in a terminal, even where pytest runs with SIGINT ignored (started with `&`
# by a script), which this process would inherit.
signal.signal(signal.SIGINT, signal.default_int_handler)
from ldjax.data import images
real = images.load_image
def slow(*args, **kwargs):
  time.sleep(0.02)
  return real(*args, **kwargs)
images.load_image = slow
from ldjax import run
sys.exit(run.main(sys.argv[1:]))
"""


def start_slow_run(tmp_path, dataset, cache):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  argv = [sys.executable, "-c", SLOW_DECODE, *SMALL, "--dataset", f"folder:{dataset}",
          "--image-cache", str(cache), "--workdir", str(tmp_path / "wd")]
  proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while time.time() < deadline:   # until rows are being written into a partial entry
    partial = [p for p in cache.glob(".partial-*/x_train.npy")] if cache.is_dir() else []
    if partial:
      time.sleep(0.3)
      return proc, partial[0].parent
    time.sleep(0.05)
  proc.kill()
  pytest.fail("the decode never started")


def test_sigkill_mid_decode_leaves_nothing_trusted(tmp_path, one_tree):
  cache = tmp_path / "cache"
  proc, partial = start_slow_run(tmp_path, one_tree, cache)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert partial.is_dir()   # left behind, under a name no run opens
  assert [p.name for p in cache.iterdir()] == [partial.name]
  lines = []
  data = load_dataset(f"folder:{one_tree}", folder=folder.FolderOptions(cache_dir=str(cache)),
                      log=lines.append)
  assert "decoding them once" in lines[0]
  assert not partial.exists()   # a dead process's partial entry is removed
  (entry,) = cache.iterdir()
  files = json.loads((entry / "files.json").read_text())
  last = len(data.x_train) - 1
  assert np.array_equal(data.x_train[last], images.load_image(
      one_tree / files["train"][last], data.image_shape[:2], 3))


def test_ctrl_c_mid_decode_removes_the_partial_entry(tmp_path, one_tree):
  cache = tmp_path / "cache"
  proc, partial = start_slow_run(tmp_path, one_tree, cache)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert "interrupted" in err.decode() and b"Traceback" not in err
  assert list(cache.iterdir()) == [] and not (tmp_path / "wd").exists()


# --- from the command line: train, a second start, predict ---------------------------------------

def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: independent of the writer's own implementation."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of a TensorBoard event file, its record checksums verified."""
  from tensorboardX.proto import event_pb2
  raw, pos, out = path.read_bytes(), 0, {}
  while pos < len(raw):
    header = raw[pos:pos + 8]
    assert int.from_bytes(raw[pos + 8:pos + 12], "little") == masked(crc32c(header))
    n = int.from_bytes(header, "little")
    data = raw[pos + 12:pos + 12 + n]
    assert int.from_bytes(raw[pos + 12 + n:pos + 16 + n], "little") == masked(crc32c(data))
    pos += 16 + n
    event = event_pb2.Event.FromString(data)
    for value in event.summary.value:
      out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
  """Drop (a forced drop after epoch 1: the store is extracted from the memory-mapped
  images) on the train/test folder from the command line, with --tensorboard."""
  tmp = tmp_path_factory.mktemp("trained")
  argv = [*SMALL, "--model", "vgg11", "--dataset", f"folder:{splits}", "--strategy", "drop",
          "--drop-at", "1:2", "--image-size", "28", "--image-cache", str(tmp / "cache"),
          "--workdir", str(tmp / "wd"), "--tensorboard", "--lr", "0.05"]
  out, err = io.StringIO(), io.StringIO()
  import contextlib
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = run.main(argv)
  return code, out.getvalue(), err.getvalue(), tmp, argv


def test_cli_trains_on_a_folder(trained):
  code, out, err, tmp, _ = trained
  assert code == 0, err
  assert "decoding them once to 28x28x3" in out and "10 classes, 160 train, 40 test" in out
  names = [f"class_{c}" for c in range(10)]
  from ldjax.weights import load_weights
  run_dir = tmp / "wd"
  assert json.loads((run_dir / "config.json").read_text())["class_names"] == names
  _, meta = load_weights(run_dir)
  assert meta["class_names"] == names and meta["resize"] == images.POLICY
  assert meta["image_shape"] == [28, 28, 3]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["drop_events"]   # the forced drop happened


def test_metrics_csv_and_tensorboard_agree_with_jsonl(trained):
  import csv
  code, out, err, tmp, _ = trained
  assert code == 0, err
  run_dir = tmp / "wd"
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
  assert [int(r["epoch"]) for r in rows] == [1, 2]
  for rec, row in zip(records, rows):
    assert float(row["test_accuracy"]) == rec["test_accuracy"]
    assert float(row["loss"]) == rec["loss"] and float(row["time_train_s"]) == rec["time"]["train_s"]
    assert row["val_accuracy"] == "" and int(row["dropped_stages"]) == rec["dropped_stages"]
  (events,) = run_dir.glob("events.out.tfevents.*")
  scalars = read_events(events)
  assert scalars["accuracy/test"] == pytest.approx({r["epoch"]: r["test_accuracy"]
                                                    for r in records})
  assert scalars["loss/train"] == pytest.approx({r["epoch"]: r["loss"] for r in records})
  assert scalars["drop/dropped_stages"] == {1: 0.0, 2: 2.0}
  assert "time/epoch_s" in scalars


def test_second_start_reads_the_cache(trained, capsys):
  code, out, err, tmp, argv = trained
  assert code == 0, err
  # The same command again (with --overwrite): its data load reads the cache; stop it right
  # after, with a setting only the loaded data refutes.
  code = run.main([*argv, "--overwrite", "--batch-size", "1000"])
  out, err = capsys.readouterr()
  assert code == 2 and "--batch-size 1000 is larger than the training set" in err
  assert "decoded images read from the cache" in out and "decoding" not in out


def test_predict_evaluates_the_test_folder(trained, splits, tmp_path, capsys):
  import csv
  from ldjax import predict
  code, out, err, tmp, _ = trained
  assert code == 0, err
  summary = json.loads((tmp / "wd" / "summary.json").read_text())
  code = predict.main(["--weights", str(tmp / "wd"), "--input", str(splits / "test"),
                       "--output", str(tmp_path / "logits.npy"), "--evaluate", "--top-k", "3",
                       "--no-progress"])
  out, err = capsys.readouterr()
  assert code == 0, err
  # The same images, decoded by the same policy, as the run's test set: the same accuracy.
  assert f"accuracy {summary['test_accuracy']:.2f}% (" in out
  assert "confusion matrix" in out and "class_9" in out
  assert "; 2 files that are no images ignored" in out   # notes.txt, .DS_Store
  rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
  assert len(rows) == 40 and np.load(tmp_path / "logits.npy").shape == (40, 10)
  assert set(rows[0]) == {"file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3",
                          "true_class", "correct"}
  for row in rows:
    assert row["true_class"] == row["file"].split("/")[0]
    assert row["class_1"].startswith("class_")
    probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    assert row["correct"] == str(int(row["class_1"] == row["true_class"]))
  correct = sum(int(r["correct"]) for r in rows)
  assert 100 * correct / 40 == pytest.approx(summary["test_accuracy"])


def test_predict_bad_folder_input(trained, splits, tmp_path, capsys):
  from ldjax import predict
  code, out, err, tmp, _ = trained
  weights = str(tmp / "wd")
  truncated = copy_of(splits / "test", tmp_path, "t")
  victim = sorted((truncated / "class_6").glob("*.jpg"))[0]
  truncate_jpeg(victim)
  cases = {f"--input image {victim} cannot be read": ["--input", str(truncated)],
           "is not a class of the model": ["--input", str(splits), "--evaluate"],
           "too small for 28x28 (H x W)": ["--input", str(tmp_path / "tiny.png")]}
  PIL.Image.new("RGB", (13, 40)).save(tmp_path / "tiny.png")
  for message, extra in cases.items():
    code = predict.main(["--weights", weights, "--output", str(tmp_path / "y.npy"),
                         "--no-progress", *extra])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "predictions.csv").exists()
