"""Reports of finished runs: the paper's tables and figures from run directories.

  python -m ldjax.report /tmp/cmp                    # a comparison (sgd/, freeze/, drop/)
  python -m ldjax.report /tmp/seed0 /tmp/seed1 --out /tmp/report
  python -m ldjax.report --fronts runs/budgets --out /tmp/fronts   # runs with --budget

Reads only what `python -m ldjax.run` wrote and writes report.md,
report.json and the figures (see `ldjax.reporting`): Tables 1/2 and 3 of the
paper per (network, dataset, width, seed) and, over seeds, mean and standard
deviation; Figs. 1, 3, 5 and 6. With --fronts: the accuracy-versus-budget
fronts of runs trained with --budget (`ldjax.reporting.fronts`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldjax import cli
from ldjax.errors import UsageError
from ldjax.reporting.fronts import write_fronts
from ldjax.reporting.report import write_report
from ldjax.reporting.runs import default_out, load_runs


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m ldjax.report",
      description="Write report.md (Tables 1/2 and 3 of the paper) and figures (AAPD, scores P, "
                  "accuracy and time per epoch, parameters and MACs per epoch) from run "
                  "directories, without training.")
  p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                 help="a run directory written by python -m ldjax.run, or a comparison directory "
                      "(its strategy sub-directories are all read); several seeds or networks "
                      "may be given together")
  p.add_argument("--out", metavar="DIR",
                 help="directory for report.md, report.json and the PNG figures (default: the "
                      "first RUN_DIR, or the comparison directory it belongs to)")
  p.add_argument("--fronts", action="store_true",
                 help="instead: fronts.md/.json/.png, the accuracy of runs trained with --budget "
                      "against the budget they spent, seeds averaged, with each variant's test "
                      "accuracy minus SGD's on the same seed and budget (directories are "
                      "searched for runs)")
  return p


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.fronts:
      runs = load_runs(sorted({str(p.parent) for d in args.run_dirs
                               for p in Path(d).rglob("summary.json")}) or args.run_dirs)
      paths = write_fronts(runs, Path(args.out or args.run_dirs[0]))
      print(f"wrote {', '.join(str(p) for p in paths)} ({len(runs)} runs)")
      return 0
    runs = load_runs(args.run_dirs)
    paths = write_report(runs, Path(args.out) if args.out else default_out(args.run_dirs[0]))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {paths[0]} ({len(runs)} run{'s' * (len(runs) != 1)}) and {len(paths) - 2} figures: "
        + ", ".join(p.name for p in paths[2:]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
