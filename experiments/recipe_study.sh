#!/usr/bin/env bash
# The CPU study with a competitive recipe (issue 13): real Fashion-MNIST (Debian's
# dataset-fashion-mnist), 9,000 training images of which 1,000 are held out for
# validation (--val-size), 2,000 test images, 28x28x1, width 0.25, 12 epochs with a
# Learn & Drop warm-up of 2, batch 128, --recipe strong (Nesterov, lr 0.05, weight
# decay 5e-4, cosine after a 1-epoch lr warm-up, label smoothing 0.1) and
# --augment flip,crop (pad 2). SGD, Freeze and Drop run one after the other in one
# process from the same seed and initial weights.
#
#   bash experiments/recipe_study.sh [OUT_DIR] [SEEDS] [MODELS]
# defaults: experiments/results/recipe_runs, "0 1 2", "resnet18:0.25 vgg11:0.25"
set -euo pipefail
out=${1:-experiments/results/recipe_runs}
seeds=${2:-"0 1 2"}
models=${3:-"resnet18:0.25 vgg11:0.25"}
data=idx:/usr/share/datasets/fashion-mnist
for seed in $seeds; do
  for mw in $models; do
    model=${mw%%:*}; width=${mw##*:}
    dir="$out/$model-w$width-s$seed"
    if [ -f "$dir/comparison.json" ]; then echo "skip $dir (done)"; continue; fi
    flags=(--dataset "$data" --train-size 9000 --val-size 1000 --test-size 2000
           --model "$model" --width "$width" --epochs 12 --warmup 2 --batch-size 128
           --recipe strong --feature-dtype float32 --augment flip,crop --seed "$seed"
           --strategy sgd,freeze,drop --workdir "$dir" --no-progress --compilation-cache off)
    if [ -d "$dir" ]; then flags+=(--resume); fi
    echo "python -m ldjax.run ${flags[*]}"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    python -m ldjax.run "${flags[@]}"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
