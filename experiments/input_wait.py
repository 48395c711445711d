"""How long Drop's training loop waits for its input, with and without the background reader.

Runs one strategy (default Drop) with ldjax's command-line settings twice from
the same initial weights: once reading every batch in the loop's thread
(`reader_threads=0`, the code before `ldjax.train.reader`), once with the
reader's worker threads, and prints per epoch the seconds the loop waited for
its input (metrics.jsonl "time.input_wait_s") against the epoch's training
time. Both runs must end with the same weights (checked leaf by leaf).

  python experiments/input_wait.py --out experiments/results/input_wait/cpu.json -- \
      --dataset idx:/usr/share/datasets/fashion-mnist --train-size 5000 --model resnet18 \
      --width 0.25 --epochs 6 --warmup 2 --augment flip,crop --strategy drop

With `--device-memory-gb GB` the two runs are instead the host path
(`device_memory_gb=0`, with the reader's threads) and the input on the devices
(`ldjax.train.device_input`: the store's rows, or the images, held there within
GB per device and gathered, cropped and flipped by a jitted reader); both must
end with the same weights too.

"Head epochs" are those whose steps read a store (Drop after its first drop,
the epoch that fills it included: its `train_s` excludes the filling); their
wait share is the issue's goal (under 5 % of the epoch). With `--workdir` the
runs write there (a store over --feature-memory-gb is a memory-mapped file).
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
sys.path[:0] = [str(HERE.parent), str(HERE)]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import repo_paths  # noqa: E402

from ldjax import run as run_cli  # noqa: E402
from ldjax.runs.workdir import RunDir  # noqa: E402
from ldjax.train import compare, reader  # noqa: E402
from ldjax.train.continuation import Start  # noqa: E402
from ldjax.train.fit import Hooks, fit  # noqa: E402


def one_run(model, data, cfg, strategy: str, variables, threads: int,
            workdir: Path | None, device_gb: float = 0.0) -> dict:
  records = []
  name = f"threads{threads}" + (f"_device{device_gb:g}" if device_gb else "")
  run_dir = None if workdir is None else RunDir(workdir / name)
  t0 = time.perf_counter()
  summary = fit(model, data, cfg.replace(reader_threads=threads, device_memory_gb=device_gb),
                strategy,
                start=Start(variables), run_dir=run_dir,
                hooks=Hooks(on_epoch=lambda r: records.append(r.to_json()), progress=False))
  wall = time.perf_counter() - t0
  epochs = [{"epoch": r["epoch"], "stored_stages": r["stored_stages"],
             "extracted": r["store"] is not None,
             "store": None if r["store"] is None else r["store"]["backing"],
             "train_s": r["time"]["train_s"],
             "epoch_s": r["time"]["epoch_s"], "input_wait_s": r["time"]["input_wait_s"]}
            for r in records]
  head = [e for e in epochs if e["stored_stages"] > 0]
  share = lambda es, key: (100 * sum(e["input_wait_s"] for e in es)   # noqa: E731
                           / max(sum(e[key] for e in es), 1e-9)) if es else None
  return {"reader_threads": threads, "device_memory_gb": device_gb, "wall_s": wall, "epochs": epochs,
          "head_epochs": [e["epoch"] for e in head],
          "head_wait_pct_of_train": share(head, "train_s"),
          "head_wait_pct_of_epoch": share(head, "epoch_s"),
          "all_wait_pct_of_train": share(epochs, "train_s"),
          "test_accuracy": summary["test_accuracy"], "param_l2": summary["param_l2"],
          "drop_events": summary["drop_events"], "variables": summary.pop("variables")}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=reader.DEFAULT_THREADS,
                      help="the reader's worker threads in the second run")
  parser.add_argument("--out", type=Path, help="JSON file to write")
  parser.add_argument("--workdir", type=Path, help="where the runs write (default: nothing)")
  parser.add_argument("--device-memory-gb", type=float, default=None, metavar="GB",
                      help="compare the host path (device_memory_gb 0) with the input held on "
                      "the devices within GB per device, instead of 0 threads with --threads")
  parser.add_argument("ldjax_args", nargs="*", help="after --: python -m ldjax.run's flags")
  args = parser.parse_args(argv)
  run_args = run_cli.build_parser().parse_args(args.ldjax_args)
  cfg = run_cli.config_from_args(run_args).resolved()
  strategies = run_cli.strategy_from_args(run_args).split(",")
  if len(strategies) != 1:
    parser.error("give one --strategy")
  data, model = compare.prepare(cfg, strategies)
  variables = model.init(jax.random.key(cfg.run.seed), data.image_shape)
  pair = ([(0, 0.0), (args.threads, 0.0)] if args.device_memory_gb is None
          else [(args.threads, 0.0), (args.threads, args.device_memory_gb)])
  runs = [one_run(model, data, cfg, strategies[0], variables, t, args.workdir, gb)
          for t, gb in pair]
  same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(runs[0].pop("variables")), jax.tree.leaves(runs[1].pop("variables"))))
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()
  out = {"command": repo_paths.command(["python", "experiments/input_wait.py",
                                        *(sys.argv[1:] if argv is None else argv)]),
         "commit": commit, "device": jax.devices()[0].device_kind,
         "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
         "same_weights": same, "runs": runs}
  for r in runs:
    print(f"reader threads {r['reader_threads']}, device_memory_gb {r['device_memory_gb']:g}: "
          f"head epochs {r['head_epochs']}, input wait "
          f"{r['head_wait_pct_of_train']:.1f} % of their training time "
          f"({r['head_wait_pct_of_epoch']:.1f} % of the epoch); all epochs "
          f"{r['all_wait_pct_of_train']:.1f} %; wall {r['wall_s']:.0f} s")
    for e in r["epochs"]:
      print(f"  epoch {e['epoch']}: stored {e['stored_stages']}, train {e['train_s']:.2f} s, "
            f"wait {e['input_wait_s']:.2f} s")
  print(f"same weights in both runs: {same}; load average {os.getloadavg()}")
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
