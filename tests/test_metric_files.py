"""metrics.csv and TensorBoard event files (`ldjax.runs.metric_files`) from epoch records;
a resumed run's CSV follows metrics.jsonl cut back, and its event file purges the epochs
it repeats."""

import csv
import json

from ldjax.runs.metric_files import EventFiles, flatten, scalars, write_csv
from ldjax.runs.workdir import RunDir

RECORDS = [{"epoch": e, "loss": 2.0 / e, "test_accuracy": None if e == 2 else 10.0 * e,
            "time": {"train_s": 1.5, "eval_s": 0.25}, "P": [0.1, 0.2], "dropped_stages": e - 1}
           for e in (1, 2, 3)]


def test_flatten_and_scalars():
  row = flatten(RECORDS[0])
  assert row == {"epoch": 1, "loss": 2.0, "test_accuracy": 10.0, "time_train_s": 1.5,
                 "time_eval_s": 0.25, "P": "[0.1, 0.2]", "dropped_stages": 0}
  tb = scalars(RECORDS[1])
  assert tb == {"loss/train": 1.0, "drop/dropped_stages": 1.0, "time/train_s": 1.5,
                "time/eval_s": 0.25}   # None (not evaluated) and lists left out


def test_csv_follows_jsonl_through_a_resume(tmp_path):
  run_dir = RunDir(tmp_path, writes=True)
  run_dir.start_metrics()
  for r in RECORDS:
    run_dir.append_metrics(r)
  rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
  assert [r["epoch"] for r in rows] == ["1", "2", "3"]
  assert rows[1]["test_accuracy"] == "" and json.loads(rows[0]["P"]) == [0.1, 0.2]
  run_dir.truncate_metrics(1)   # a resume from epoch 1's checkpoint
  assert [r["epoch"] for r in csv.DictReader((tmp_path / "metrics.csv").open())] == ["1"]
  write_csv(tmp_path / "empty.csv", [])
  assert (tmp_path / "empty.csv").read_text() == "\n"


def test_resumed_event_file_purges_repeated_epochs(tmp_path):
  from tensorboardX.proto import event_pb2
  events = EventFiles(tmp_path)
  for r in RECORDS:
    events.add(r)
  events.purge_from(2)   # resumed after epoch 1: epochs 2 and 3 are written again
  events.add(RECORDS[1])
  events.close()
  files = sorted(tmp_path.glob("events.out.tfevents.*"))
  assert len(files) == 2
  raw, pos, purges = files[-1].read_bytes(), 0, []
  while pos < len(raw):
    n = int.from_bytes(raw[pos:pos + 8], "little")
    event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
    pos += 16 + n
    if event.HasField("session_log"):
      purges.append((event.session_log.status, event.step))
  assert purges == [(event_pb2.SessionLog.START, 2)]
