#!/usr/bin/env bash
# Which Learn & Drop decisions does --precision bfloat16 change? The same run (same seed,
# data, initial weights and data order) in float32 and in bfloat16 compute, side by side;
# prints both runs' drop events, final cuts and accuracies.
#
#   bash experiments/precision_study.sh OUT_DIR [SEEDS] [EXTRA FLAGS...]
#   bash experiments/precision_study.sh runs/prec "0 1 2"            # the embedded default job
#   bash experiments/precision_study.sh runs/prec_fm 0 --dataset idx:/usr/share/datasets/fashion-mnist \
#     --train-size 8000 --test-size 2000 --width 0.125 --epochs 10 --warmup 1 --lr 0.01 --batch-size 128
set -euo pipefail
out=${1:?usage: precision_study.sh OUT_DIR [SEEDS] [EXTRA FLAGS...]}
seeds=${2:-0}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
for seed in $seeds; do
  for precision in float32 bfloat16; do   # interleaved: both precisions of a seed in a row
    dir="$out/s$seed-$precision"
    [ -f "$dir/comparison.json" ] && continue
    python -m ldjax.run --strategy sgd,freeze,drop --precision "$precision" --seed "$seed" \
      --no-progress --workdir "$dir" --overwrite "$@" > "$dir.log" 2>&1 \
      || { echo "run failed: $dir (see $dir.log)"; exit 1; }
  done
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| seed | precision | strategy | drops (after epoch: stages) | final cut | test acc (%) | T (s) | CPU (s) |")
print("|---|---|---|---|---:|---:|---:|---:|")
for d in sorted(p for p in out.iterdir() if p.is_dir()):
  seed, precision = d.name.split("-", 1)
  for strategy in ("sgd", "freeze", "drop"):
    s = json.loads((d / strategy / "summary.json").read_text())
    drops = ", ".join(f"{e['epoch']}: {e['stages_dropped']}" for e in s["drop_events"]) or "-"
    print(f"| {seed[1:]} | {precision} | {strategy} | {drops} | {s['final_cut']} | "
          f"{s['test_accuracy']:.2f} | {s['train_time_s']:.1f} | {s.get('train_cpu_s', float('nan')):.1f} |")
PY
