"""Fine-tuning with Learn & Drop (issue 14, item 5): a pretrained start against a fresh one.

Real Fashion-MNIST (Debian's dataset-fashion-mnist), split by class: the model
is pretrained with SGD on classes 0-4 (T-shirt, trouser, pullover, dress,
coat), then trained on classes 5-9 (sandal, shirt, sneaker, bag, ankle boot,
relabelled 0-4) with SGD, Freeze and Drop, once from the pretrained weights
(`--init-from`) and once from scratch, same seed, data and order. A second
part continues the pretrained Drop run's dropped prefix on the new classes
(`--continue-from`): its stages dropped on the first classes stay dropped.

Reported per start and strategy: test accuracy, T, dT against that start's
SGD (wall and CPU), the epoch of the first drop and the final cut.

  python experiments/finetune_study.py --out experiments/results/finetune

Everything it runs is printed; the table, the commands and the machine's
load average before and after go to OUT/table.md, the rows to OUT/results.json.
The runs' work directories stay in OUT/runs. Commands are recorded with paths in
the repository written relative to its root (experiments/repo_paths.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import numpy as np  # noqa: E402

import repo_paths  # noqa: E402
from ldjax.data.idx import load_idx_split  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"


def split_by_class(out: Path, n_train: int, n_test: int, seed: int = 0) -> tuple[Path, Path]:
  """Two npz files: classes 0-4 and classes 5-9 (relabelled 0-4), deterministic subsets."""
  arrays = {}
  for split in ("train", "test"):
    arrays[f"x_{split}"], arrays[f"y_{split}"] = load_idx_split(FASHION, split)
  rng = np.random.default_rng(seed)
  paths = []
  for name, classes in (("first", range(0, 5)), ("second", range(5, 10))):
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
      x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
      keep = np.flatnonzero(np.isin(y, list(classes)))
      keep = np.sort(rng.choice(keep, size=min(n, len(keep)), replace=False))
      parts[f"x_{split}"], parts[f"y_{split}"] = x[keep], (y[keep] - classes[0]).astype(np.int64)
    paths.append(out / f"{name}.npz")
    np.savez(paths[-1], **parts)
  return paths[0], paths[1]


def run(argv: list[str], log) -> None:
  cmd = [sys.executable, "-m", "ldjax.run", *argv]
  log(f"$ {repo_paths.command(cmd)}")
  t0 = time.time()
  r = subprocess.run(cmd, capture_output=True, text=True)
  if r.returncode != 0:
    sys.exit(f"failed ({r.returncode}): {r.stderr[-2000:]}")
  log(f"  ({time.time() - t0:.0f} s)")


def row(start: str, strategy: str, path: Path, sgd: dict) -> dict:
  s = json.loads((path / "summary.json").read_text())
  events = s["drop_events"]
  return {"start": start, "strategy": strategy, "test_accuracy": s["test_accuracy"],
          "T_s": s["train_time_s"], "cpu_s": s["train_cpu_s"],
          "dT_pct": 100 * (1 - s["train_time_s"] / sgd["train_time_s"]),
          "dT_cpu_pct": 100 * (1 - s["train_cpu_s"] / sgd["train_cpu_s"]),
          "first_drop_epoch": events[0]["epoch"] if events else None,
          "drops": ", ".join(f"{e['epoch']}: {e['stages_dropped']}" for e in events) or "-",
          "final_cut": s["final_cut"]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="directory for the data, runs and results")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", default="0.125")
  p.add_argument("--pretrain-epochs", default="8")
  p.add_argument("--epochs", default="8", help="epochs of each fine-tuning run")
  p.add_argument("--warmup", default="1")
  p.add_argument("--n-pretrain", type=int, default=10000)
  p.add_argument("--n-train", type=int, default=3000, help="training images of classes 5-9")
  p.add_argument("--seed", default="0")
  args = p.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  lines = []

  def log(s):
    print(s, flush=True)
    lines.append(s)

  load_before = os.getloadavg()[0]
  first, _ = split_by_class(out, args.n_pretrain, 1000)
  _, second = split_by_class(out, args.n_train, 1000)
  common = ["--model", args.model, "--width", args.width, "--batch-size", "128", "--lr", "0.05",
            "--seed", args.seed, "--no-progress", "--overwrite"]
  pre = out / "runs" / "pretrain"
  run(["--dataset", f"npz:{first}", "--strategy", "sgd", "--epochs", args.pretrain_epochs,
       "--workdir", str(pre), *common], log)
  tune = ["--dataset", f"npz:{second}", "--strategy", "sgd,freeze,drop", "--epochs", args.epochs,
          "--warmup", args.warmup, *common]
  # Interleaved: the two starts one after the other, each strategy of a start side by side.
  run([*tune, "--init-from", str(pre / "weights.safetensors"),
       "--workdir", str(out / "runs" / "pretrained")], log)
  run([*tune, "--workdir", str(out / "runs" / "scratch")], log)
  pre_drop = out / "runs" / "pretrain-drop"
  run(["--dataset", f"npz:{first}", "--strategy", "drop", "--epochs", args.pretrain_epochs,
       "--warmup", args.warmup, "--workdir", str(pre_drop), *common], log)
  run(["--dataset", f"npz:{second}", "--strategy", "drop", "--epochs", args.epochs,
       "--warmup", args.warmup, "--continue-from", str(pre_drop), *common,
       "--workdir", str(out / "runs" / "continued")], log)

  rows = []
  for start in ("pretrained", "scratch"):
    d = out / "runs" / start
    sgd = json.loads((d / "sgd" / "summary.json").read_text())
    rows += [row(start, s, d / s, sgd) for s in ("sgd", "freeze", "drop")]
  sgd = json.loads((out / "runs" / "pretrained" / "sgd" / "summary.json").read_text())
  rows.append(row("continued drop run (vs pretrained SGD)", "drop", out / "runs" / "continued",
                  sgd))
  (out / "results.json").write_text(json.dumps({"rows": rows, "commands": lines}, indent=1))
  table = ["| start | strategy | test acc (%) | T (s) | CPU (s) | dT wall (%) | dT CPU (%) | "
           "first drop (after epoch) | drops (epoch: stages) | final cut |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
  for r in rows:
    table.append(f"| {r['start']} | {r['strategy']} | {r['test_accuracy']:.2f} | {r['T_s']:.1f} | "
                 f"{r['cpu_s']:.1f} | {r['dT_pct']:.1f} | {r['dT_cpu_pct']:.1f} | "
                 f"{r['first_drop_epoch'] or '-'} | {r['drops']} | {r['final_cut']} |")
  print("\n".join(table))
  machine = (f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and "
             f"{os.getloadavg()[0]:.1f} after; study command: "
             f"{repo_paths.command(['python', 'experiments/finetune_study.py', *sys.argv[1:]])}")
  (out / "table.md").write_text("\n".join(table) + f"\n\n{machine}\n\nCommands:\n\n" +
                                "\n".join(f"    {c}" for c in lines if c.startswith("$")) + "\n")


if __name__ == "__main__":
  main()
