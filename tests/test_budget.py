"""ldjax.train.budget: training to a compute budget, with costs from a table.

A width-1/16 ResNet-18 on the embedded subset (544 images, batches of 64: 8
steps an epoch). Checked: the MAC table's entries; SGD spends its budget in
whole steps with the schedule ending at it, and a partial last epoch; Drop's
cheaper head buys it more steps than SGD for the same budget; a rerun with
the same table gives the same decisions and weights; a measured table has
every entry and loads back, and is measured from a run's programs without a
Trainer; bad tables and budgets are one-line errors before anything is written.
"""

import json

import jax
import numpy as np
import pytest

import ldjax
from ldjax import run
from ldjax.errors import Interrupted, UsageError
from ldjax.models.staged import StagedModel
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.data.augment import ViewSource
from ldjax.train import assembly, budget
from ldjax.train.assembly import trainer_for

WIDTH = 0.0625


@pytest.fixture(scope="module")
def model(tiny_data):
  return build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=WIDTH)


@pytest.fixture(scope="module")
def variables(model, tiny_data):
  return model.init(jax.random.key(0), tiny_data.image_shape)


def cfg(**kw):
  return TrainConfig(**{"model": "resnet18", "width": WIDTH, "batch_size": 64, "lr": 0.05,
                        "warmup": 1, "schedule": "cosine", **kw})


def test_mac_table_entries():
  macs, views = [10, 20, 30, 40], [12, 24, 36, 48]
  t = budget.CostTable.from_macs("m", "abcd", (8, 8, 1), (10, 10, 1), macs, views)
  assert t.train_cost(0, 0) == 3 * 100                    # everything trained
  assert t.train_cost(0, 2) == 30 + 3 * 70                # Freeze: prefix forward only
  assert t.train_cost(2, 2) == 3 * 70                     # Drop: prefix not run
  assert t.train_cost(1, 2) == 20 + 3 * 70                # frozen stage 1 on a store at 1
  assert t.extract_cost(1, 3) == 24 + 36                  # on the (padded) views
  back = budget.CostTable.from_json(json.loads(json.dumps(t.to_json())), "x")
  assert back == t


@pytest.fixture(scope="module")
def runs(model, variables, tiny_data):
  out = {}
  for name, strategy, c in (("sgd", "sgd", cfg(budget=3.5)),
                            ("drop", "drop", cfg(budget=3.5, drop_at="1:4")),
                            ("drop-again", "drop", cfg(budget=3.5, drop_at="1:4"))):
    records = []
    summary = ldjax.fit(model, tiny_data, c, strategy, start=ldjax.Start(variables),
                        hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                          progress=False))
    out[name] = summary, records
  return out


def test_sgd_spends_its_budget_in_whole_steps_and_the_schedule_ends_there(runs):
  summary, records = runs["sgd"]
  # 3.5 reference epochs of 544 examples at batch 64: 29.75 steps, so 29 whole steps,
  # in epochs of 8 (544 // 64) and a partial last epoch of 5.
  assert [r["steps"] for r in records] == [8, 8, 8, 5]
  assert summary["epochs"] == 4 and summary["steps"] == 29
  assert summary["budget"]["spent_reference_epochs"] == pytest.approx(29 * 64 / 544)
  assert summary["budget"]["spent_reference_epochs"] <= 3.5
  assert records[-1]["test_accuracy"] is not None
  # The cosine's position is the budget spent: its last step is within a step of the end.
  schedule_steps = round(3.5 * 544 / 64)   # 30 base steps
  lrs = [r["lr"] for r in records]
  assert lrs == sorted(lrs, reverse=True)
  # The last epoch starts at 24 of the schedule's 30 base steps: cos ends near 0 there.
  assert lrs[-1] == pytest.approx(0.05 * 0.5 * (1 + np.cos(np.pi * 24 / schedule_steps)),
                                  rel=1e-5)


def test_drop_buys_more_steps_for_the_same_budget(runs):
  (sgd, _), (drop, records) = runs["sgd"], runs["drop"]
  assert drop["drop_events"] == [{"epoch": 1, "stages_dropped": 4, "cut": 4}]
  assert drop["steps"] > sgd["steps"]
  assert drop["epochs"] > sgd["epochs"]
  spent = drop["budget"]["spent_reference_epochs"]
  assert 3.5 - 1 / 8 < spent <= 3.5 + 1e-9
  # The extraction pass was charged in the epoch after the decision.
  assert records[1]["store"] is not None


def test_same_table_same_run(runs):
  (a, ra), (b, rb) = runs["drop"], runs["drop-again"]
  assert a["drop_events"] == b["drop_events"] and a["steps"] == b["steps"]
  for x, y in zip(jax.tree.leaves(a["variables"]), jax.tree.leaves(b["variables"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert [r["lr"] for r in ra] == [r["lr"] for r in rb]


@pytest.fixture(scope="module")
def short_resnet(model):
  """ResNet-18's stem, layer1.0, layer2.0 (stride 2, projection) and classifier: every
  kind of stage with 3 conv stages, so that a measured table compiles 7 programs, not
  ResNet-18's 25."""
  keep = [model.stage_names.index(n) for n in ("stem", "layer1.0", "layer2.0", "fc")]
  return StagedModel("resnet18_short", tuple(model.stages[i] for i in keep),
                     tuple(model.stage_names[i] for i in keep))


def test_measured_table_has_every_entry_and_loads_back(short_resnet, tiny_data, tmp_path):
  model = short_resnet
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  trainer = trainer_for(model, tiny_data, cfg(budget=2, cost_table="measure"), "drop",
                        variables, None)
  table = trainer.costs
  assert table.source == "measure" and table.unit == "seconds per example"
  n = model.num_conv
  assert n == 3
  assert (0, 0) in table.train and all((c, c) in table.train and (0, c) in table.train
                                       for c in range(1, n))
  assert all(v > 0 for v in table.train.values()) and len(table.extract) == n - 1
  # The trainer's variables were not donated to the timed steps.
  for a, b in zip(jax.tree.leaves(trainer.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  path = tmp_path / budget.TABLE_FILE
  path.write_text(json.dumps(table.to_json()))
  again = budget.load_table(str(tmp_path))
  assert again == table
  again.check_for(model.name, model.stage_names, model.num_conv, tiny_data.image_shape,
                  tiny_data.image_shape, str(path))
  with pytest.raises(UsageError, match="lacks entries"):
    budget.CostTable.from_json(table.to_json() | {"train": {"0,0": 1.0}}, "t").check_for(
        model.name, model.stage_names, model.num_conv, tiny_data.image_shape,
        tiny_data.image_shape, "t")


def test_measure_needs_only_the_programs_and_a_start_state(short_resnet, tiny_data):
  # No Trainer: the programs of the run (`assembly`), the state to copy, the images.
  model, c = short_resnet, cfg(budget=2, cost_table="measure")
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  programs = assembly.programs_for(model, tiny_data, c, variables)
  macs, run_budget, programs = assembly.costs_for(model, c, programs)
  assert macs.source == "macs" and programs.budget_steps == run_budget.total_steps
  start, opt_states = assembly.start_state(programs, variables)
  source = ViewSource(tiny_data.x_train, c.augment.for_images(tiny_data.image_shape))
  table = budget.measure(model, programs, start, opt_states, source, seed=0, local_batch=64,
                         repeats=1)
  cuts = range(1, model.num_conv)
  assert table.source == "measure" and set(table.train) == {(0, 0)} | {
      (0, cut) for cut in cuts} | {(cut, cut) for cut in cuts}
  assert set(table.extract) == {(0, cut) for cut in cuts}
  assert all(v > 0 for v in table.train.values())
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # not donated
  # A Trainer given a measured table charges it and measures nothing itself.
  trainer = trainer_for(model, tiny_data, c, "drop", variables, None, cost_table=table)
  assert trainer.costs is table and trainer.programs.budget_steps == trainer.budget.total_steps


def test_table_for_another_model_or_malformed_is_refused(model, tiny_data, tmp_path):
  t = budget.CostTable.from_macs("vgg11", ("a", "b"), (28, 28, 1), (28, 28, 1), [1, 2], [1, 2])
  with pytest.raises(UsageError, match="was made for vgg11"):
    t.check_for(model.name, model.stage_names, model.num_conv, tiny_data.image_shape,
                tiny_data.image_shape, "t.json")
  with pytest.raises(UsageError, match="no such file"):
    budget.load_table(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  for text, match in (("{", "not readable JSON"), ("[1, 2]", "not a cost table"),
                      ('{"source": "macs"}', "not a cost table"),
                      (json.dumps(t.to_json() | {"train": {"0,0": -1}}), "costs >= 0")):
    bad.write_text(text)
    with pytest.raises(UsageError, match=match):
      budget.load_table(str(bad))


@pytest.mark.parametrize("extra,match", [
    (["--budget", "0.5"], "--budget must be"),
    (["--budget", "inf"], "--budget must be"),
    (["--budget", "4", "--cost-table", "/nonexistent/cost_table.json"], "no such file"),
    (["--budget", "4", "--cost-table", "BAD"], "not readable JSON"),
    (["--budget", "4", "--cost-table", "OTHER"], "was made for vgg11"),
])
def test_cli_refuses_bad_budgets_and_tables_before_writing(extra, match, tmp_path, capsys):
  (tmp_path / "bad.json").write_text("{not json")
  other = budget.CostTable.from_macs("vgg11", ("a", "b"), (28, 28, 1), (28, 28, 1), [1, 2],
                                     [1, 2])
  (tmp_path / "other.json").write_text(json.dumps(other.to_json()))
  extra = [{"BAD": str(tmp_path / "bad.json"), "OTHER": str(tmp_path / "other.json")}.get(a, a)
           for a in extra]
  workdir = tmp_path / "wd"
  code = run.main([*extra, "--workdir", str(workdir), "--no-progress",
                   "--compilation-cache", "off"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and match in err[0], err
  assert not workdir.exists()


def test_a_resumed_budget_run_ends_like_the_uninterrupted_one(model, variables, tiny_data,
                                                              tmp_path, runs):
  """Stopped after 2 epochs (its drop's store written), resumed: the budget spent comes
  back from the checkpoint, so the same steps, decisions and weights follow."""
  c = cfg(budget=3.5, drop_at="1:4")
  run_dir = RunDir(tmp_path / "run")
  done = []
  with pytest.raises(Interrupted):
    ldjax.fit(model, tiny_data, c, "drop", start=ldjax.Start(variables), run_dir=run_dir,
              hooks=ldjax.Hooks(on_epoch=done.append, should_stop=lambda: len(done) >= 2,
                                progress=False))
  resumed = ldjax.fit(model, tiny_data, c, "drop", start=ldjax.Start(variables),
                      run_dir=run_dir, resume=True, hooks=ldjax.Hooks(progress=False))
  ref, _ = runs["drop"]
  assert resumed["drop_events"] == ref["drop_events"] and resumed["steps"] == ref["steps"]
  assert resumed["budget"] == ref["budget"] and resumed["epochs"] == ref["epochs"]
  for a, b in zip(jax.tree.leaves(resumed["variables"]), jax.tree.leaves(ref["variables"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  table = json.loads((tmp_path / "run" / budget.TABLE_FILE).read_text())
  assert table["source"] == "macs" and table["model"] == "resnet18"
