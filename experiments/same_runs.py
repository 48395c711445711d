"""Do two checkouts of ldjax train the same? Runs the same command lines in both and compares.

For a refactoring that must not change behaviour (issue 29): each configuration runs
as `python -m ldjax.run ARGS --workdir OUT/<checkout>/<name>` in each checkout (its
own process, the checkout first on PYTHONPATH), then compares per strategy:

- weights.safetensors: every tensor bitwise equal;
- metrics.jsonl: every line equal, apart from what a clock measures ("time", "cpu_s");
- summary.json: equal apart from times ("train_time_s", "train_cpu_s", "compile_time_s")
  and the store's measured bandwidth entries;
- config.json: equal apart from "git_revision" (and keys only the newer checkout
  writes, listed).

  python experiments/same_runs.py --old /path/to/old/checkout --new . --out OUT

Prints one line per configuration and strategy, and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

TINY = ["--train-size", "544", "--test-size", "256", "--width", "0.0625", "--batch-size", "64",
        "--no-progress", "--compilation-cache", "off"]
CONFIGS = {
    "default-sgd-drop": ["--epochs", "3", "--warmup", "1"],
    "strong-flip-crop-val": ["--recipe", "strong", "--augment", "flip,crop", "--val-size", "64",
                             "--epochs", "4", "--warmup", "1",
                             "--strategy", "sgd,freeze,drop", "--drop-at", "2:2"],
    "budget-vgg": ["--model", "vgg11", "--budget", "3", "--warmup", "1", "--lr", "0.02",
                   "--strategy", "sgd,drop", "--drop-at", "1:3"],
    "adaptive-stable": ["--epochs", "4", "--warmup", "1", "--adaptive-batch",
                        "--decision-rule", "stable", "--strategy", "drop"],
}
CLOCKS = {"time", "cpu_s"}
SUMMARY_CLOCKS = {"train_time_s", "train_cpu_s", "compile_time_s"}


def run(checkout: Path, args: list[str], workdir: Path) -> None:
  env = dict(os.environ, PYTHONPATH=str(checkout))
  proc = subprocess.run([sys.executable, "-m", "ldjax.run", *args, "--workdir", str(workdir)],
                        cwd=checkout, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{checkout}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def runs_in(workdir: Path) -> dict[str, Path]:
  return {p.parent.name if p.parent != workdir else "run": p.parent
          for p in workdir.rglob("summary.json")}


def differences(a: Path, b: Path) -> list[str]:
  out = []
  wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
  if wa.keys() != wb.keys() or any(not np.array_equal(wa[k], wb[k]) for k in wa):
    out.append("weights differ")
  la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
  lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
  strip = lambda rec: {k: v for k, v in rec.items() if k not in CLOCKS}
  if [strip(r) for r in la] != [strip(r) for r in lb]:
    out.append("metrics.jsonl differs")
  sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
  if {k: v for k, v in sa.items() if k not in SUMMARY_CLOCKS} != {
      k: v for k, v in sb.items() if k not in SUMMARY_CLOCKS}:
    out.append("summary.json differs")
  ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
  ca.pop("git_revision"), cb.pop("git_revision")
  new_keys = sorted(set(cb) - set(ca))
  if {k: v for k, v in cb.items() if k in ca} != ca:
    out.append("config.json differs")
  if new_keys:
    out.append(f"(config.json keys only in the new checkout: {', '.join(new_keys)})")
  return out


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
  p.add_argument("--new", type=Path, default=Path("."), help="the checkout under test")
  p.add_argument("--out", type=Path, required=True, help="where the runs go")
  p.add_argument("--only", default=None, help="comma list of configuration names")
  args = p.parse_args()
  names = list(CONFIGS) if args.only is None else args.only.split(",")
  bad = 0
  for name in names:
    dirs = {}
    for side in ("old", "new"):
      dirs[side] = args.out / side / name
      run(getattr(args, side).resolve(), TINY + CONFIGS[name], dirs[side])
    old, new = runs_in(dirs["old"]), runs_in(dirs["new"])
    for strategy in sorted(old):
      diff = differences(old[strategy], new[strategy])
      bad += any(not d.startswith("(") for d in diff)
      print(f"{name} {strategy}: " + ("; ".join(diff) if diff else "same"), flush=True)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
