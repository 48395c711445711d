"""A tiny run of experiments/bench_drop.py: it must finish, drop, and account for its time.

The benchmark's numbers are timings (checked by running it, not here); this
checks its bookkeeping on a VGG-11 at width 1/16 that drops after epoch 2.

Not in the test suite (it was tests/test_bench_drop.py, about 20 s of the
suite's time): it checks an experiment script, not the library, whose drop,
extraction and timings tests/test_fit.py and tests/test_epoch.py cover. Run it
after changing bench_drop.py or the public names it uses:

  python -m pytest experiments/test_bench_drop.py
"""

import json
import os
import sys

import jax

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
sys.path.insert(0, EXPERIMENTS)

import bench_drop  # noqa: E402

ARGS = ["--model", "vgg11", "--width", "0.0625", "--epochs", "3", "--warmup", "1",
        "--lr", "0.05", "--batch-size", "64", "--train-size", "544", "--test-size", "256",
        "--eval-every", "2", "--timing-steps", "2", "--repeats", "1",
        "--epoch-timing-steps", "2", "--in-memory"]


def test_tiny_benchmark(tmp_path, capsys):
  before = jax.config.jax_compilation_cache_dir
  out = tmp_path / "bench.json"
  assert bench_drop.main(ARGS + ["--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert jax.config.jax_compilation_cache_dir == before   # the cache setting is put back
  r = json.loads(out.read_text())
  assert r["printed"] == printed.splitlines()
  assert r["config"]["width"] == 0.0625 and r["config"]["eval_every"] == 2   # flags beat defaults
  drop, spe = r["drop"], r["steps_per_epoch"]
  recs = r["records"]["drop"]
  assert r["summaries"]["drop"]["drop_events"], "the tiny run must drop"
  # One bare timing after every epoch of both runs; the ideal is built from them.
  assert [len(r["bare_step_s_per_epoch"][s]) for s in ("sgd", "drop")] == [3, 3]
  assert drop["ideal_s"] == spe * sum(r["bare_step_s_per_epoch"]["drop"])
  assert abs(drop["overhead_s"] - (drop["wall_s"] - drop["ideal_s"])) < 1e-9
  assert abs(sum(drop["overhead_categories_s"].values()) - drop["overhead_s"]) < 1e-6
  # The verdicts, recomputed from the raw timings (not from the reported percentages) against
  # the targets the benchmark states (10 % overhead, 5 % input pipeline), and as printed.
  pct = 100 * (drop["wall_s"] - spe * sum(r["bare_step_s_per_epoch"]["drop"])) / drop["wall_s"]
  assert abs(pct - drop["overhead_pct"]) < 1e-6
  assert drop["pass"] is (pct < 10)
  verdict = [line for line in r["printed"] if ": overhead " in line and "%" in line]
  assert verdict[0].strip().startswith("PASS" if pct < 10 else "FAIL"), verdict
  assert f"{pct:.1f} %" in verdict[0]
  sgd_in = r["sgd_input"]
  share = 100 * (sum(sgd_in["train_s_per_epoch"]) - spe * sum(r["bare_step_s_per_epoch"]["sgd"])) \
      / sum(sgd_in["train_s_per_epoch"])
  assert sgd_in["pass"] is (share < 5)
  assert any(line.strip().startswith("PASS" if share < 5 else "FAIL")
             and "input pipeline" in line for line in r["printed"])
  # The heads the drop run trained at were timed, the full model among them.
  pairs = {(h["store_cut"], h["cut"]) for h in r["heads"]}
  assert pairs == {(x["stored_stages"], x["dropped_stages"]) for x in recs}
  assert (0, 0) in pairs and len(pairs) == 2
  # Epoch 1 was not evaluated (--eval-every 2), so the every-epoch estimate is printed.
  assert [x["test_accuracy"] is None for x in recs] == [True, False, False]
  assert drop["overhead_pct_eval_every_epoch"] > drop["overhead_pct"]
  assert len(r["extractions"]) == 1 and r["extractions"][0]["measured_s"] > 0
