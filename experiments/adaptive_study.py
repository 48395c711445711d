"""Effect of `--adaptive-batch` on dT and accuracy, on the CPU study protocol (issue 15, item 4).

The protocol of experiments/cpu_study.sh (real Fashion-MNIST, 8,000 / 2,000
images, 10 epochs, warm-up 1, batch 128, lr 0.01, momentum 0.9, no
compilation cache) for ResNet-18 at width 0.125. Per seed, two processes run
back to back, their order alternating from seed to seed:

- `plain`: `--strategy sgd,drop` (SGD and Drop at batch 128);
- `adaptive`: `--strategy drop --adaptive-batch [--adaptive-lr RULE]` (one
  strategy: its work directory is the run's).

SGD never grows its batch, so the plain process's SGD is the baseline of
both Drop runs; each dT is also given in CPU seconds (`train_cpu_s`), which
the two processes' different moments on a shared machine disturb less than
wall time. The report gives per run: T, CPU T, dT and dT CPU against that
seed's SGD, final test accuracy and its difference from SGD, the drops and
the batch size and lr scale per epoch (from metrics.jsonl).

  python experiments/adaptive_study.py [--seeds 0,1] [--adaptive-lr linear|sqrt]
                                       [--workdir DIR] [--out DIR]

`--out` (default experiments/results/adaptive) receives adaptive.md and
adaptive.json; the runs' work directories go to --workdir (default
runs/adaptive_study, which git ignores; a finished run found there is reused,
not rerun). The commands are recorded with paths in the repository written
relative to its root (experiments/repo_paths.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import repo_paths  # noqa: E402

DATA = "idx:/usr/share/datasets/fashion-mnist"
PROTOCOL = ["--dataset", DATA, "--train-size", "8000", "--test-size", "2000",
            "--model", "resnet18", "--width", "0.125", "--epochs", "10", "--warmup", "1",
            "--lr", "0.01", "--batch-size", "128", "--no-progress", "--compilation-cache", "off"]


def load() -> str:
  return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(argv: list[str], log: list[dict], reuse: bool) -> None:
  entry = {"command": repo_paths.command(["python", "-m", "ldjax.run", *argv]),
           "load_before": load()}
  if reuse:   # finished earlier: listed, not rerun
    log.append(entry | {"load_before": "reused", "load_after": "reused"})
    return
  print(entry["command"], flush=True)
  subprocess.run([sys.executable, "-m", "ldjax.run", *argv], check=True)
  entry["load_after"] = load()
  print(f"  load before {entry['load_before']}, after {entry['load_after']}", flush=True)
  log.append(entry)


def read_run(path: Path) -> dict:
  s = json.loads((path / "summary.json").read_text())
  metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
  return {"T_s": s["train_time_s"], "cpu_s": s["train_cpu_s"], "A": s["test_accuracy"],
          "drops": [(e["epoch"], e["cut"]) for e in s["drop_events"]],
          "batch": [m.get("batch_size") for m in metrics],
          "lr_scale": [m.get("lr_scale") for m in metrics]}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
  p.add_argument("--adaptive-lr", default="linear", choices=("linear", "sqrt"),
                 help="the lr rule of the adaptive runs (default linear)")
  p.add_argument("--workdir", default="runs/adaptive_study", help="where the runs go")
  p.add_argument("--out", default="experiments/results/adaptive", help="where the report goes")
  a = p.parse_args()
  seeds = [int(s) for s in a.seeds.split(",")]
  root, log, rows = Path(a.workdir), [], []
  for i, seed in enumerate(seeds):
    plain, adaptive = root / f"plain-s{seed}", root / f"adaptive-s{seed}"
    jobs = [(plain, ["--strategy", "sgd,drop"]),
            (adaptive, ["--strategy", "drop", "--adaptive-batch", "--adaptive-lr", a.adaptive_lr])]
    for path, extra in (jobs if i % 2 == 0 else jobs[::-1]):
      done = (path / "comparison.json").exists() or (path / "summary.json").exists()
      run([*PROTOCOL, "--seed", str(seed), *extra, "--workdir", str(path)], log, done)
    sgd = read_run(plain / "sgd")
    for name, path in (("sgd", plain / "sgd"), ("drop", plain / "drop"),
                       (f"drop adaptive ({a.adaptive_lr})", adaptive)):
      r = read_run(path)
      r |= {"seed": seed, "run": name,
            "dT": 100 * (sgd["T_s"] - r["T_s"]) / sgd["T_s"],
            "dT_cpu": 100 * (sgd["cpu_s"] - r["cpu_s"]) / sgd["cpu_s"],
            "dA": r["A"] - sgd["A"]}
      rows.append(r)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  lines = ["| seed | run | T (min) | CPU T (min) | dT (%) | dT CPU (%) | A (%) | dA (points) "
           "| drops (epoch, cut) | batch per epoch | lr scale per epoch |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['seed']} | {r['run']} | {r['T_s'] / 60:.2f} | {r['cpu_s'] / 60:.2f} "
                 f"| {r['dT']:.1f} | {r['dT_cpu']:.1f} | {r['A']:.2f} | {r['dA']:+.2f} "
                 f"| {r['drops']} | {r['batch']} | {r['lr_scale']} |")
  text = "\n".join(lines) + "\n\nCommands (load average before / after):\n\n" + "\n".join(
      f"- `{e['command']}` ({e['load_before']} / {e['load_after']})" for e in log) + "\n"
  (out / "adaptive.md").write_text(text)
  (out / "adaptive.json").write_text(json.dumps({"rows": rows, "runs": log}, indent=1) + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  sys.exit(main())
