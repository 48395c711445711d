"""Accuracy-versus-cost fronts at equal compute budgets (issue 28, item 5).

Every strategy trains to the same budget B (`--budget`, in reference epochs:
one reference epoch is one epoch of the whole model, costed in training MACs),
its learning-rate schedule compressed to that budget, as "No Train No Gain"
(Kaddour et al. 2023) compares. Budgets of about 1/3, 1/2, 2/3 and 1 times
SGD's full run, several seeds, the strong recipe with flip,crop:

- scratch: ResNet-18 (width 0.25) from scratch on real Fashion-MNIST
  (Debian's dataset-fashion-mnist), 3,500 training images of which 500 are
  held out for validation, 2,000 test images; full run = 12 epochs.
- finetune: the fine-tuning study's class split (pretrained with SGD for 4
  epochs on 3,000 images of classes 0-4, trained on 3,000 of classes 5-9,
  tested on 2,000); full run = 6 epochs.

  python experiments/fronts.py --out experiments/results/fronts [--seeds "0 1 2"]

Each run is one `python -m ldjax.run` process (printed before it runs, with the
load average); runs whose summary.json exists are skipped, so the script
resumes. Runs go in priority order (SGD and Drop of every seed and budget
first, then the fine-tuning case, then the store variants and Freeze), so a
partial study is usable. `--rule stable` adds the stable rule's Freeze and Drop
runs beside the paper rule's (SGD's are shared).
`python -m ldjax.report --fronts OUT/scratch` draws the figure and table.
OUT/commands.log records every command, with paths in the repository written
relative to its root (experiments/repo_paths.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import repo_paths  # noqa: E402
from finetune_study import split_by_class  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
# The strong recipe stores bfloat16 since this experiment measured it against float32
# (the store variants below): float32 stays pinned so that the recorded runs are what it reruns.
COMMON = ["--model", "resnet18", "--width", "0.25", "--batch-size", "128", "--recipe", "strong",
          "--feature-dtype", "float32",
          "--augment", "flip,crop", "--no-progress", "--compilation-cache", "off",
          "--eval-every", "1000"]   # validation and test after the last epoch only
SCRATCH = ["--dataset", f"idx:{FASHION}", "--train-size", "3500", "--val-size", "500",
           "--test-size", "2000", "--warmup", "2"]


def load() -> str:
  return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(argv: list[str], workdir: Path, log) -> None:
  if (workdir / "summary.json").exists():
    return
  flags = [*argv, "--workdir", str(workdir)]
  flags += ["--resume"] if workdir.exists() else []
  log(f"$ {repo_paths.command(['python', '-m', 'ldjax.run', *flags])}   # load {load()}")
  subprocess.run([sys.executable, "-m", "ldjax.run", *flags], check=True)


def jobs(out: Path, seeds: list[int], budgets: list[float], ft_budgets: list[float],
         rule: str):
  """(priority, argv, workdir) of every run: SGD and Drop at every budget first, then the
  fine-tuning case, then the store variants and Freeze at 2/3 of the full budget."""
  def name(b):
    return f"{b:g}"
  tag = "" if rule == "paper" else f"-{rule}"
  for seed in seeds:
    base = [*COMMON, *SCRATCH, "--seed", str(seed), "--decision-rule", rule]
    for b in budgets:
      for s in ("sgd", "drop"):
        if s == "sgd" and tag:   # SGD takes no decision: the paper rule's runs serve
          continue
        yield 0, [*base, "--strategy", s, "--budget", name(b)], \
            out / f"scratch/s{seed}/{s}{tag if s != 'sgd' else ''}-b{name(b)}"
      # A bfloat16 store (issue 31, item 3): half the store's bytes; paired with the
      # float32 Drop run of the same seed and budget. Only with --max-priority 3.
      yield 3, [*base, "--strategy", "drop", "--budget", name(b), "--feature-dtype",
                "bfloat16"], out / f"variants/s{seed}/drop{tag}-bf16-b{name(b)}"
  first, second = out / "finetune/first.npz", out / "finetune/second.npz"
  for seed in seeds[:1]:
    pre = out / f"finetune/s{seed}/pretrain"
    yield 1, [*COMMON, "--dataset", f"npz:{first}", "--strategy", "sgd", "--epochs", "4",
              "--seed", str(seed)], pre
    base = [*COMMON, "--dataset", f"npz:{second}", "--init-from", str(pre / "weights.safetensors"),
            "--warmup", "1", "--seed", str(seed), "--decision-rule", rule]
    for b in ft_budgets:
      for s in ("sgd", "drop"):
        if s == "sgd" and tag:
          continue
        yield 1, [*base, "--strategy", s, "--budget", name(b)], \
            out / f"finetune/s{seed}/{s}{tag if s != 'sgd' else ''}-b{name(b)}"
  # The store's crop designs at 2/3 of the budget (the window approximation and K = 2
  # views against the default K = 4), and Freeze there.
  b = budgets[-2]
  for seed in seeds:
    base = [*COMMON, *SCRATCH, "--seed", str(seed), "--decision-rule", rule, "--budget", name(b)]
    yield 2, [*base, "--strategy", "drop", "--crop-store", "window"], \
        out / f"variants/s{seed}/drop{tag}-window-b{name(b)}"
    yield 2, [*base, "--strategy", "drop", "--crop-views", "2"], \
        out / f"variants/s{seed}/drop{tag}-k2-b{name(b)}"
    yield 2, [*base, "--strategy", "freeze"], out / f"scratch/s{seed}/freeze{tag}-b{name(b)}"


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="experiments/results/fronts")
  p.add_argument("--seeds", default="0 1")
  p.add_argument("--budgets", default="4 6 8 12")
  p.add_argument("--finetune-budgets", default="3 6")
  p.add_argument("--rule", default="paper", help="--decision-rule of freeze and drop")
  p.add_argument("--max-priority", type=int, default=2)
  p.add_argument("--only", default=None, metavar="REGEX",
                 help="run only the jobs whose work directory (under OUT) matches, in this "
                      "order of patterns: a comma list of regexes")
  p.add_argument("--cost-table", default=None, metavar="FILE",
                 help="a cost table every run shares (e.g. measured once with --cost-table "
                      "measure); its runs go to OUT/measured/")
  args = p.parse_args()
  out = Path(args.out)
  (out / "finetune").mkdir(parents=True, exist_ok=True)
  if not (out / "finetune/second.npz").exists():
    split_by_class(out / "finetune", n_train=3000, n_test=2000)
  log_file = (out / "commands.log").open("a")

  def log(line: str) -> None:
    print(line, flush=True)
    log_file.write(line + "\n")
    log_file.flush()

  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} commit {commit}, {os.cpu_count()} CPUs, "
      f"load {load()}: {repo_paths.command(['python', *sys.argv])}")
  todo = sorted(jobs(out, [int(s) for s in args.seeds.split()],
                     [float(b) for b in args.budgets.split()],
                     [float(b) for b in args.finetune_budgets.split()], args.rule),
                key=lambda j: j[0])
  if args.cost_table:   # the same runs, charged by the given table, kept apart
    todo = [(pr, [*argv, "--cost-table", args.cost_table],
             out / "measured" / workdir.relative_to(out)) for pr, argv, workdir in todo]
  if args.only:
    patterns = [re.compile(x) for x in args.only.split(",")]
    todo = [j for pat in patterns for j in todo
            if pat.search(str(j[2].relative_to(out)))]
  for priority, argv, workdir in todo:
    if priority <= args.max_priority:
      run(argv, workdir, log)
  log(f"# done {time.strftime('%Y-%m-%d %H:%M:%S')}, load {load()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
