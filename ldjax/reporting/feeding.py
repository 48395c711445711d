"""The input side of a set of runs: per run and per store it trained on, what a step read
and computed per example, and how long the loop waited for its input.

From metrics.jsonl: "input_bytes_per_example" (a stored row, or the uint8
image), "train_macs" (FLOPs = 2 x MACs) and "time.input_wait_s" against
"time.train_s". Epochs that filled a store are left out (their train_macs
include the extraction); runs written before these fields existed have no rows.
The intensity (FLOP per byte) is the number `ldjax.models.bandwidth` compares
with a device's ridge point (`python -m ldjax.summary MODEL ... --device NAME`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ldjax.reporting.runs import Run
from ldjax.reporting.tables import md_row


def input_rows(runs: Sequence[Run]) -> list[dict]:
  """One row per (run, stored stages) over the epochs that trained without filling a store."""
  rows = []
  for r in runs:
    by_store: dict[int, list[dict]] = {}
    for m in r.metrics:
      if "input_bytes_per_example" in m and "input_wait_s" in m.get("time", {}) \
          and not m.get("store"):
        by_store.setdefault(m["stored_stages"], []).append(m)
    for stored, ms in sorted(by_store.items()):
      nbytes, flops = ms[0]["input_bytes_per_example"], 2 * ms[0]["train_macs"]
      train_s = sum(m["time"]["train_s"] for m in ms)
      rows.append({"run": r.path.name, "strategy": r.strategy, "network": r.network,
                   "stored_stages": stored, "epochs": [m["epoch"] for m in ms],
                   "bytes_per_example": nbytes, "flops_per_example": flops,
                   "flop_per_byte": flops / nbytes,
                   "input_wait_pct": 100 * sum(m["time"]["input_wait_s"] for m in ms)
                   / max(train_s, 1e-12)})
  return rows


def input_markdown(rows: Sequence[dict]) -> str:
  lines = ["| Run | Strategy | Stored stages | Epochs | Bytes read / example | "
           "Train FLOPs / example | FLOP / byte | Input wait (% of train time) |",
           "|---|---|---:|---|---:|---:|---:|---:|"]
  for row in rows:
    lines.append(md_row([f"`{row['run']}`", row["strategy"], row["stored_stages"],
                         ",".join(map(str, row["epochs"])), f"{row['bytes_per_example']:,}",
                         f"{row['flops_per_example']:,}", f"{row['flop_per_byte']:,.0f}",
                         f"{row['input_wait_pct']:.1f}"]))
  return "\n".join(lines)
