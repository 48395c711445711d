"""The report of a set of runs: report.md, report.json and the paper's figures.

`write_report(runs, out_dir)` writes report.md (the runs, Tables 1/2 and 3,
the figures, each group's comparison table, what each step read and how long
the loop waited for it: `ldjax.reporting.feeding`), report.json (the tables) and
the figures of `ldjax.reporting.plots`. Runs are grouped by (network,
dataset, width, seed); over seeds of the same (network, dataset, width) the
tables give mean and standard deviation. `report_comparison` also (re)writes a
comparison directory's comparison.md / comparison.json from its run
directories, so that they carry each strategy's time to accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ldjax.strategy import display_name
from ldjax.errors import UsageError
from ldjax.jsonio import write_json_atomic
from ldjax.reporting import feeding, plots
from ldjax.reporting.comparison import comparison, comparison_markdown
from ldjax.reporting.runs import Run, load_runs
from ldjax.reporting.tables import md_row, tables, tables_markdown


def _rel(path: Path, start: Path) -> str:
  try:
    return str(path.resolve().relative_to(start.resolve()))
  except ValueError:
    return str(path)


def report_markdown(runs: Sequence[Run], t: dict, figures: Sequence[tuple[Path, str]],
                    out_dir: Path) -> str:
  lines = ["# Learn & Drop report", "", "| Run | Strategy | Network | Dataset | Width | Seed "
           "| Epochs | Drops (after epoch: stages) |", "|---|---|---|---|---:|---:|---:|---|"]
  for r in runs:
    drops = ", ".join(f"{e['epoch']}: {e['stages_dropped']}"
                      for e in r.summary.get("drop_events", [])) or "-"
    status = "" if r.complete else " (incomplete: no summary.json)"
    lines.append(md_row([f"`{_rel(r.path, out_dir)}`{status}", display_name(r.strategy),
                       r.network, r.dataset, r.width, r.seed, len(r.metrics), drops]))
  lines += ["", "## Tables", "", tables_markdown(t)]
  if figures:
    lines += ["## Figures", ""]
    for path, caption in figures:
      lines += [f"![{path.stem}]({_rel(path, out_dir)})", "", caption, ""]
  if t.get("input"):
    lines += ["## Input per step (what the loop read, and waited for)", "",
              feeding.input_markdown(t["input"]), ""]
  lines += ["## Per group (the comparison table)", ""]
  for table in t["comparisons"]:
    lines += [f"#### {table['network']} on {table['dataset']}, width {table['width']}, "
              f"seed {table['seed']}", "", comparison_markdown(table)]
  return "\n".join(lines)


def write_report(runs: Sequence[Run], out_dir: str | Path) -> list[Path]:
  """Writes report.md, report.json (the tables) and the figures; returns their paths."""
  out_dir = Path(out_dir)
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UsageError(f"cannot write the report to {str(out_dir)!r} ({e.strerror or e}); "
                     "choose another with --out") from None
  t = tables(runs) | {"input": feeding.input_rows(runs)}
  figures = plots.write_figures(runs, out_dir)
  md, js = out_dir / "report.md", out_dir / "report.json"
  md.write_text(report_markdown(runs, t, figures, out_dir))
  js.write_text(json.dumps(t, indent=1) + "\n")
  return [md, js, *(p for p, _ in figures)]


def write_comparison(runs: Sequence[Run], workdir: str | Path) -> dict:
  """comparison.json / comparison.md of runs made side by side, from their directories.

  The same table as `ldjax.train.compare` writes from the summaries, with the
  time to accuracy that needs each run's metrics.jsonl records.
  """
  workdir = Path(workdir)
  table = comparison({r.strategy: r.summary for r in runs}, network=runs[0].network,
                     dataset=runs[0].dataset, records={r.strategy: r.metrics for r in runs})
  write_json_atomic(workdir / "comparison.json", table)
  (workdir / "comparison.md").write_text(comparison_markdown(table))
  return table


def report_comparison(workdir: str | Path) -> list[Path]:
  """The comparison table and the report of a comparison run, written into its work directory."""
  runs = load_runs([workdir])
  if len({r.key for r in runs}) == 1 and len(runs) > 1:
    write_comparison(runs, workdir)
  return write_report(runs, workdir)
