#!/usr/bin/env bash
# Copies the JSON of finished study runs (not checkpoints or feature stores) into
# experiments/results/runs/ and writes the report (tables + figures) next to them.
#   bash experiments/collect_results.sh [RUNS_DIR]   (default: experiments/results/runs)
set -euo pipefail
src=${1:-experiments/results/runs}
dst=experiments/results/runs
mkdir -p "$dst"
for run in "$src"/*/; do
  name=$(basename "$run")
  [ -f "$run/comparison.json" ] || [ -f "$run/summary.json" ] || { echo "skip $name (unfinished)"; continue; }
  if [ "$(realpath "$run")" != "$(realpath -m "$dst/$name")" ]; then
    (cd "$run" && find . -name '*.json' -o -name '*.jsonl' -o -name '*.md' | grep -v -e checkpoints -e features \
      | while read -r f; do mkdir -p "$OLDPWD/$dst/$name/$(dirname "$f")"; cp "$f" "$OLDPWD/$dst/$name/$f"; done)
  fi
done
# The report groups runs by (model, dataset, width, seed): only the side-by-side comparisons.
python -m ldjax.report $(ls -d "$dst"/*/ | while read -r d; do [ -f "$d/comparison.json" ] && echo "$d"; done) \
  --out experiments/results
