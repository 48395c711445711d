"""The paper's 21 runs (Tables 1 and 2) as runnable ldjax configurations.

Each row of `ROWS` is one network x dataset of "Learn & Drop" (Tables 1-2):
VGG-11/16/19 with BatchNorm and ResNet-18/50/101/152, each on MNIST, CIFAR-10
and Imagenette 160px, with the protocol of Section 4.2 (batch 256, width 1,
BatchNorm on, strategies sgd, freeze and drop from the same initial weights):

  MNIST       60 epochs, warm-up 5,  lr 0.001 fixed
  CIFAR-10    60 epochs, warm-up 10, lr 0.1,  divided by 10 after epoch 20
  Imagenette 150 epochs, warm-up 25, lr 0.01, divided by 10 after epoch 50

Every row also carries the paper's reported numbers (T in minutes and A in %
for SGD, Freezing and Dropping, dT in % of the two, and Table 3's forward
cost of the network), so that a report can put paper and measured side by
side. They are copied as printed, including two freezing dT values that do
not follow from the printed T values (see `PAPER_NOTES`).

  python experiments/paper_configs.py list
  python experiments/paper_configs.py command vgg16-cifar10 [--data-dir D] [--workdir W]
  python experiments/paper_configs.py run vgg16-cifar10 [--data-dir D] [--workdir W]

`command` prints the exact `python -m ldjax.run ...` line of a row; `run`
executes it (it needs an accelerator and the dataset prepared with
`python -m ldjax.prepare`; a full-size row takes days on a CPU, so `run`
refuses to start on one unless given --allow-cpu). Arguments after `--` are
appended to the ldjax command (e.g. `-- --resume --no-progress`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRATEGIES = ("sgd", "freeze", "drop")
BATCH_SIZE = 256
WIDTH = 1.0

# Section 4.2. `tfds` is the name `ldjax.data.load_dataset` reads; the
# image shape is what it returns (Imagenette is center-cropped to 160x160).
DATASETS = {
    "mnist": dict(label="MNIST", tfds="mnist", image_shape=(28, 28, 1), num_classes=10,
                  epochs=60, warmup=5, lr=0.001, lr_decay_epoch=None),
    "cifar10": dict(label="CIFAR-10", tfds="cifar10", image_shape=(32, 32, 3), num_classes=10,
                    epochs=60, warmup=10, lr=0.1, lr_decay_epoch=20),
    "imagenette": dict(label="Imagenette", tfds="imagenette/160px-v2",
                       image_shape=(160, 160, 3), num_classes=10,
                       epochs=150, warmup=25, lr=0.01, lr_decay_epoch=50),
}

# ldjax model name -> (the paper's name, its table). VGGs have BatchNorm
# ("All models include batch normalization", Section 4.3).
MODELS = {
    "vgg11": ("VGG-11", 1), "vgg16": ("VGG-16", 1), "vgg19": ("VGG-19", 1),
    "resnet18": ("ResNet-18", 2), "resnet50": ("ResNet-50", 2),
    "resnet101": ("ResNet-101", 2), "resnet152": ("ResNet-152", 2),
}

# Tables 1 and 2 as printed: SGD T, A; Freezing T, A, dT; Dropping T, A, dT
# (T in minutes on an RTX 3090, A test accuracy in %, dT = (T_sgd - T) / T_sgd in %).
PAPER_TABLES = {
    ("vgg11", "mnist"): (20.83, 98.64, 19.58, 98.25, 6.00, 8.74, 98.25, 58.04),
    ("vgg11", "cifar10"): (23.83, 92.02, 23.54, 91.72, 1.21, 8.21, 91.72, 65.54),
    ("vgg11", "imagenette"): (61.01, 75.33, 59.33, 74.08, 2.75, 18.32, 74.08, 69.97),
    ("vgg16", "mnist"): (22.54, 98.85, 21.45, 98.26, 4.24, 9.01, 98.26, 60.03),
    ("vgg16", "cifar10"): (26.54, 93.12, 24.94, 92.84, 6.03, 9.56, 92.84, 63.98),
    ("vgg16", "imagenette"): (74.73, 78.76, 71.21, 77.83, 4.71, 25.23, 77.83, 66.24),
    ("vgg19", "mnist"): (23.02, 98.52, 22.68, 96.22, 1.48, 9.45, 96.22, 58.95),
    ("vgg19", "cifar10"): (27.02, 93.10, 25.78, 91.71, 4.59, 11.53, 91.71, 57.33),
    ("vgg19", "imagenette"): (110.35, 80.32, 105.34, 78.13, 4.54, 37.76, 78.13, 65.78),
    ("resnet18", "mnist"): (23.67, 98.2, 23.10, 97.78, 2.41, 8.64, 97.78, 63.50),
    ("resnet18", "cifar10"): (27.67, 92.25, 25.97, 91.82, 6.14, 11.90, 91.82, 56.99),
    ("resnet18", "imagenette"): (253.07, 80.12, 242.32, 79.07, 4.25, 83.78, 79.07, 66.89),
    ("resnet50", "mnist"): (35.43, 98.75, 35.02, 96.85, 1.16, 11.23, 96.85, 68.30),
    ("resnet50", "cifar10"): (38.43, 94.40, 35.40, 92.05, 7.88, 13.05, 92.05, 66.04),
    ("resnet50", "imagenette"): (336.00, 82.78, 315.34, 80.34, 6.15, 86.28, 80.34, 74.32),
    ("resnet101", "mnist"): (53.12, 97.81, 51.64, 95.45, 2.79, 18.56, 95.45, 65.06),
    ("resnet101", "cifar10"): (56.12, 93.98, 52.03, 91.26, 7.29, 19.53, 91.26, 65.20),
    ("resnet101", "imagenette"): (402.34, 82.23, 380.23, 80.75, 5.29, 120.44, 80.75, 70.06),
    ("resnet152", "mnist"): (70.76, 97.43, 65.30, 95.12, 7.72, 23.34, 95.12, 67.01),
    ("resnet152", "cifar10"): (74.76, 93.45, 68.93, 91.03, 7.80, 25.75, 91.03, 65.56),
    ("resnet152", "imagenette"): (540.76, 82.65, 504.72, 79.45, 6.66, 180.34, 79.45, 66.65),
}

# Table 3, per network (the paper does not say for which dataset or input
# size): forward cost of SGD and of Dropping, and their difference in %.
# The header says FLOPs, the text says MMac (millions of multiply-accumulates).
PAPER_TABLE3 = {
    "vgg11": (31203.60, 25847.02, 17.17),
    "vgg16": (50311.19, 33049.44, 34.31),
    "vgg19": (66000.00, 44079.31, 33.21),
    "resnet18": (1987.80, 640.53, 67.78),
    "resnet50": (4704.59, 2193.45, 53.38),
    "resnet101": (9262.2, 1667.27, 82.00),
    "resnet152": (13823.39, 2247.46, 83.74),
}

# Where the printed tables contradict themselves; the values are kept as printed.
PAPER_NOTES = {
    "vgg16-mnist": "Freezing dT is printed as 4.24 %, but its T values give 4.84 % "
                   "(and Section 4.3's text says 0.40 %).",
    "resnet101-imagenette": "Freezing dT is printed as 5.29 %, but its T values give 5.50 %.",
}
COMMON_NOTE = ("The paper prints the same accuracy for Freezing and Dropping in every row.")


def _row(model: str, dataset: str) -> dict:
  network, table = MODELS[model]
  d = DATASETS[dataset]
  t = PAPER_TABLES[(model, dataset)]
  f3 = PAPER_TABLE3[model]
  row_id = f"{model}-{dataset}"
  return {
      "id": row_id, "table": table, "network": network, "dataset_label": d["label"],
      "model": model, "dataset": dataset, "tfds": d["tfds"],
      "image_shape": d["image_shape"], "num_classes": d["num_classes"],
      "settings": {"model": model, "width": WIDTH, "batch_norm": True,
                   "dataset": d["tfds"], "batch_size": BATCH_SIZE, "epochs": d["epochs"],
                   "warmup": d["warmup"], "lr": d["lr"], "lr_decay_epoch": d["lr_decay_epoch"],
                   "lr_decay_factor": 0.1},
      "strategies": list(STRATEGIES),
      "paper": {
          "sgd": {"T_min": t[0], "A_pct": t[1]},
          "freeze": {"T_min": t[2], "A_pct": t[3], "dT_pct": t[4]},
          "drop": {"T_min": t[5], "A_pct": t[6], "dT_pct": t[7]},
          "table3_forward_mmac": {"sgd": f3[0], "drop": f3[1], "dFLOPs_pct": f3[2]},
          "note": PAPER_NOTES.get(row_id),
      },
  }


# Table 1 then Table 2, each network's datasets in the tables' order.
ROWS = [_row(m, d) for m in MODELS for d in DATASETS]
ROWS_BY_ID = {r["id"]: r for r in ROWS}


def get_row(row_id: str) -> dict:
  try:
    return ROWS_BY_ID[row_id]
  except KeyError:
    raise KeyError(f"unknown row {row_id!r}; choose one of: {', '.join(ROWS_BY_ID)}") from None


def default_workdir(row: dict) -> str:
  # A fixed directory per row (not ldjax's timestamped default), so that an
  # interrupted run is continued with `-- --resume`.
  return os.path.join("runs", "paper", row["id"])


def ldjax_args(row: dict, *, data_dir: str | None = None, workdir: str | None = None,
               extra: list[str] | tuple[str, ...] = ()) -> list[str]:
  """The `python -m ldjax.run` arguments of a row.

  Every hyper-parameter is spelled out, even where it equals ldjax's preset,
  so that the command documents the run and does not change if a preset does.
  """
  s = row["settings"]
  args = ["--dataset", s["dataset"], "--model", s["model"], "--width", repr(s["width"]),
          "--batch-size", str(s["batch_size"]), "--epochs", str(s["epochs"]),
          "--warmup", str(s["warmup"]), "--lr", repr(s["lr"])]
  if s["lr_decay_epoch"] is not None:
    args += ["--lr-decay-epoch", str(s["lr_decay_epoch"])]
  args += ["--strategy", ",".join(row["strategies"])]
  if data_dir:
    args += ["--data-dir", data_dir]
  args += ["--workdir", workdir or default_workdir(row)]
  return args + list(extra)


def command(row: dict, **kwargs) -> list[str]:
  """The full command line (argv) of a row."""
  return ["python", "-m", "ldjax.run", *ldjax_args(row, **kwargs)]


def _fmt_lr(s: dict) -> str:
  if s["lr_decay_epoch"] is None:
    return f"{s['lr']:g} fixed"
  return f"{s['lr']:g}, /10 after {s['lr_decay_epoch']}"


def list_rows() -> str:
  head = (f"{'row id':<22} {'table':>5} {'network':<11} {'dataset':<10} {'input':<11} "
          f"{'epochs':>6} {'warm-up':>7} {'lr':<18} | paper T (min) sgd/freeze/drop, "
          "A (%) sgd/freeze/drop")
  lines = [head, "-" * len(head)]
  for r in ROWS:
    s, p = r["settings"], r["paper"]
    lines.append(
        f"{r['id']:<22} {r['table']:>5} {r['network']:<11} {r['dataset_label']:<10} "
        f"{'x'.join(map(str, r['image_shape'])):<11} {s['epochs']:>6} {s['warmup']:>7} "
        f"{_fmt_lr(s):<18} | {p['sgd']['T_min']:.2f}/{p['freeze']['T_min']:.2f}/"
        f"{p['drop']['T_min']:.2f}, {p['sgd']['A_pct']:.2f}/{p['freeze']['A_pct']:.2f}/"
        f"{p['drop']['A_pct']:.2f}")
  lines.append(f"{len(ROWS)} rows; all batch {BATCH_SIZE}, width {WIDTH:g}, BatchNorm on, "
               f"strategies {','.join(STRATEGIES)}.")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python experiments/paper_configs.py", description=__doc__.split("\n\n")[0],
      epilog="Arguments after `--` are passed on to python -m ldjax.run.")
  sub = p.add_subparsers(dest="action", required=True)
  sub.add_parser("list", help="print the 21 rows with their settings and the paper's numbers")
  for name, what in (("command", "print the ldjax command of a row"),
                     ("run", "run a row (needs an accelerator and the prepared dataset)")):
    q = sub.add_parser(name, help=what)
    q.add_argument("row_id", help="e.g. vgg16-cifar10 (see `list`)")
    q.add_argument("--data-dir", default=None, help="TFDS data directory of the prepared data")
    q.add_argument("--workdir", default=None, help="run directory (default runs/paper/ROW_ID)")
    if name == "run":
      q.add_argument("--allow-cpu", action="store_true",
                     help="start even if JAX finds no accelerator (a full-size row takes days)")
  return p


def _has_accelerator() -> bool:
  import jax  # Lazy: `list` and `command` stay instant.
  return jax.default_backend() != "cpu"


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  args = build_parser().parse_args(argv)
  if args.action == "list":
    print(list_rows())
    return 0
  try:
    row = get_row(args.row_id)
  except KeyError as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  cmd = command(row, data_dir=args.data_dir, workdir=args.workdir, extra=extra)
  if args.action == "command":
    print(shlex.join(cmd))
    return 0
  if not args.allow_cpu and not _has_accelerator():
    print(f"error: JAX finds no GPU/TPU; {row['id']} at full size would take days on a CPU. "
          "Pass --allow-cpu to start anyway, or use experiments/dry_run.py to check it.",
          file=sys.stderr)
    return 2
  print(shlex.join(cmd), flush=True)
  # Same interpreter; the repository on PYTHONPATH so that ldjax need not be
  # installed, and the caller's directory kept so relative paths mean the same.
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  return subprocess.run([sys.executable, *cmd[1:]], env=env, check=False).returncode


if __name__ == "__main__":
  sys.exit(main())
