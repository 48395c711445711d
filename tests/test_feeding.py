"""The report's input table (ldjax.reporting.feeding) from literal metrics.jsonl records."""

from pathlib import Path

from ldjax.reporting.feeding import input_markdown, input_rows
from ldjax.reporting.runs import Run


def record(epoch, stored, wait, train, store=None, nbytes=784, macs=1000):
  return {"epoch": epoch, "stored_stages": stored, "store": store, "train_macs": macs,
          "input_bytes_per_example": nbytes, "time": {"train_s": train, "input_wait_s": wait}}


def test_rows_per_store_without_filling_epochs():
  metrics = [record(1, 0, 1.0, 10.0), record(2, 0, 1.0, 10.0),
             record(3, 2, 5.0, 5.0, store={"bytes": 1}, nbytes=4096, macs=400),   # fills
             record(4, 2, 0.5, 4.0, nbytes=4096, macs=300),
             record(5, 2, 0.5, 6.0, nbytes=4096, macs=300)]
  old = [{"epoch": 1, "stored_stages": 0, "store": None, "train_macs": 1,
          "time": {"train_s": 1.0}}]   # written before the fields existed
  runs = [Run(Path("w/drop"), {"strategy": "drop", "model_name": "resnet18"}, metrics, {}),
          Run(Path("w/sgd"), {"strategy": "sgd", "model_name": "resnet18"}, old, {})]
  rows = input_rows(runs)
  assert [(r["stored_stages"], r["epochs"]) for r in rows] == [(0, [1, 2]), (2, [4, 5])]
  assert rows[0]["input_wait_pct"] == 10.0 and rows[1]["input_wait_pct"] == 10.0
  assert rows[1]["flops_per_example"] == 600 and rows[1]["flop_per_byte"] == 600 / 4096
  text = input_markdown(rows)
  assert text.count("\n") == 3 and "| `drop` | drop | 2 | 4,5 | 4,096 | 600 | 0 | 10.0 |" in text
