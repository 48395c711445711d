"""A bfloat16 feature store against a float32 one at equal budgets (issue 31, item 3).

Reads the Drop runs of `experiments/fronts.py` (float32 store: OUT/measured/scratch/sS/drop-bB;
bfloat16 store: OUT/measured/variants/sS/drop-bf16-bB, made with `--max-priority 3`) and
prints, per seed and budget, both runs' test and validation accuracy, their drops, their
largest store and their CPU seconds, then the paired differences (bfloat16 - float32),
and, where budget-matched SGD runs exist (OUT/measured/scratch/sS/sgd-bB), each Drop
run's test accuracy minus SGD's.

  python experiments/store_dtype.py OUT > experiments/results/store_dtype/table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def run(path: Path) -> dict | None:
  if not (path / "summary.json").exists():
    return None
  s = json.loads((path / "summary.json").read_text())
  stores = [json.loads(line)["store"] for line in (path / "metrics.jsonl").read_text().splitlines()]
  stores = [x for x in stores if x]
  return {"test": s["test_accuracy"], "val": s["val_accuracy"], "cpu": s["train_cpu_s"],
          "cuts": [e["cut"] for e in s["drop_events"]],
          "bytes": max((x["bytes"] for x in stores), default=0)}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("out", type=Path, help="experiments/fronts.py's --out")
  args = p.parse_args()
  pairs = []
  print("| budget | seed | float32 test / val | bfloat16 test / val | test diff | cuts f32 | "
        "cuts bf16 | largest store f32 / bf16 (MB) | CPU s f32 / bf16 |")
  print("|---:|---:|---:|---:|---:|---|---|---:|---:|")
  for run32 in sorted(args.out.glob("measured/scratch/s*/drop-b*")):
    seed, budget = run32.parent.name[1:], run32.name.split("-b")[1]
    a, b = run(run32), run(args.out / f"measured/variants/s{seed}/drop-bf16-b{budget}")
    if a is None or b is None:
      continue
    pairs.append((budget, b["test"] - a["test"]))
    print(f"| {budget} | {seed} | {a['test']:.2f} / {a['val']:.2f} | {b['test']:.2f} / "
          f"{b['val']:.2f} | {b['test'] - a['test']:+.2f} | {a['cuts']} | {b['cuts']} | "
          f"{a['bytes'] / 1e6:.0f} / {b['bytes'] / 1e6:.0f} | {a['cpu']:.0f} / {b['cpu']:.0f} |")
  print()
  for budget in sorted({b for b, _ in pairs}, key=float):
    d = [x for b, x in pairs if b == budget]
    print(f"- budget {budget}: {len(d)} pairs, mean test diff (bf16 - f32) {statistics.mean(d):+.2f}"
          f" points, range {min(d):+.2f} .. {max(d):+.2f}")
  if pairs:
    d = [x for _, x in pairs]
    print(f"- all: {len(d)} pairs, mean {statistics.mean(d):+.2f}, "
          f"stdev {statistics.stdev(d) if len(d) > 1 else 0:.2f}")
  sgd_gaps(args.out)
  return 0


def sgd_gaps(out: Path) -> None:
  """Each Drop run's test accuracy minus budget-matched SGD's (same seed and budget,
  OUT/measured/scratch/sS/sgd-bB), where those runs exist: issue 28's paired goal."""
  rows = []
  for sgd in sorted(out.glob("measured/scratch/s*/sgd-b*")):
    seed, budget = sgd.parent.name[1:], sgd.name.split("-b")[1]
    base = run(sgd)
    f32 = run(out / f"measured/scratch/s{seed}/drop-b{budget}")
    bf16 = run(out / f"measured/variants/s{seed}/drop-bf16-b{budget}")
    if base is None or f32 is None or bf16 is None:
      continue
    rows.append((budget, seed, base["test"], f32["test"] - base["test"],
                 bf16["test"] - base["test"]))
  if not rows:
    return
  print("\n| budget | seed | SGD test | Drop f32 - SGD | Drop bf16 - SGD |")
  print("|---:|---:|---:|---:|---:|")
  for budget, seed, acc, a, b in rows:
    print(f"| {budget} | {seed} | {acc:.2f} | {a:+.2f} | {b:+.2f} |")
  print()
  for budget in sorted({r[0] for r in rows}, key=float):
    mine = [r for r in rows if r[0] == budget]
    for name, i in (("float32", 3), ("bfloat16", 4)):
      gaps = [r[i] for r in mine]
      print(f"- budget {budget}, Drop ({name} store) - SGD: mean {statistics.mean(gaps):+.2f}, "
            f"{sum(g >= 0 for g in gaps)} of {len(gaps)} seeds at or above SGD")


if __name__ == "__main__":
  sys.exit(main())
