#!/usr/bin/env bash
# CPU-scale study (issue "Reproduce the paper's tables"): real Fashion-MNIST from Debian's
# dataset-fashion-mnist, 8,000 training / 2,000 test images (deterministic subsets),
# 28x28x1, width-reduced models, SGD / Freeze / Drop from the same seed and initial weights.
#
# The paper's MNIST protocol (60 epochs, warm-up 5, batch 256, lr 0.001) scaled to
# this 2-core CPU: 10 epochs with warm-up 1 (5/60 of 10, rounded up), batch 128 and
# lr 0.01 (the smaller set and fewer epochs give 6x fewer steps than the paper's).
#
#   bash experiments/cpu_study.sh [OUT_DIR] [SEEDS] [MODELS]
# defaults: experiments/results/runs, "0", "resnet18:0.125 vgg11:0.25 vgg16:0.25 resnet50:0.125"
# Without the compilation cache, as the committed runs were made: every run compiles
# its programs, so a later seed's T does not shrink by what an earlier one compiled.
set -euo pipefail
out=${1:-experiments/results/runs}
seeds=${2:-0}
models=${3:-"resnet18:0.125 vgg11:0.25 vgg16:0.25 resnet50:0.125"}
data=idx:/usr/share/datasets/fashion-mnist
for seed in $seeds; do
  for mw in $models; do
    model=${mw%%:*}; width=${mw##*:}
    dir="$out/$model-w$width-s$seed"
    if [ -f "$dir/comparison.json" ]; then echo "skip $dir (done)"; continue; fi
    flags=(--dataset "$data" --train-size 8000 --test-size 2000 --model "$model" --width "$width"
           --epochs 10 --warmup 1 --lr 0.01 --batch-size 128 --seed "$seed"
           --strategy sgd,freeze,drop --workdir "$dir" --no-progress --compilation-cache off)
    if [ -d "$dir" ]; then flags+=(--resume); fi
    echo "python -m ldjax.run ${flags[*]}"
    python -m ldjax.run "${flags[@]}"
  done
done
