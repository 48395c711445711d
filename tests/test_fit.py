"""Tests of the training loop (Algorithm 1) on tiny models and a small data subset.

Training runs are expensive on a CPU (each compilation takes seconds), so a
few module-scoped runs are shared by many tests:

- a width-1/16 ResNet-18 trained with sgd, freeze and drop from the same
  initial weights (drop with a memory budget of 0, so its feature stores are
  memory-mapped .npy files, and with the compiled step functions counted);
- a width-1/16 VGG-11 (which has dropout) with freeze and drop for 3 epochs,
  stores in memory.

The ResNet's two drops are forced (`drop_at`, after epochs 2 and 4): its
natural decisions on 544 images move with the CPU's rounding (on one machine
it dropped twice, on another once), and the tests here are of what follows a
drop: stores, exactness, costs. The VGG (warm-up 1, lr 0.05) drops once by
the paper's rule, whose recorded decisions the replay test re-derives. The
tests assert the drops happened, so they cannot pass vacuously.
"""

import collections
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ldjax
from ldjax.models import costs
from ldjax.models.staged import StagedModel, count_params, stage_output_shapes
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.runs.workdir import RunDir
from ldjax.train.assembly import trainer_for
from ldjax.train import scoring, steps

WIDTH = 0.0625
EPOCHS = 5
SETTINGS = dict(width=WIDTH, epochs=EPOCHS, warmup=1, batch_size=64, lr=0.05)
RESNET_DROPS = "2:2,4:4"   # forced: after epoch 2 stages 0-1, after epoch 4 stages 2-3
TIME_KEYS = ("train_s", "extract_store_s", "eval_s", "compile_s")
RECORD_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy", "time", "dropped_stages",
               "trainable_params", "forward_macs", "train_macs", "xla_step_flops", "scores",
               "decision")
SUMMARY_KEYS = ("test_accuracy", "train_time_s", "epochs", "strategy", "drop_events",
                "param_l2")


def counting(fn, counts, name):
  """`fn`, counting how often its Python body runs (once per trace under jit)."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    counts[name] += 1
    return fn(*args, **kwargs)
  return wrapper


def train(model, data, cfg, strategy, variables, run_dir=None):
  """`fit` with the step functions counted; returns (summary, records, trace counts)."""
  counts, records = collections.Counter(), []
  with pytest.MonkeyPatch.context() as mp:
    for name in ("scored_train_step", "extract_features", "eval_step"):
      mp.setattr(steps, name, counting(getattr(steps, name), counts, name))
    summary = ldjax.fit(model, data, cfg, strategy, start=ldjax.Start(variables),
                        run_dir=run_dir, hooks=ldjax.Hooks(
                            on_epoch=lambda r: records.append(r.to_json()), progress=False))
  return summary, records, dict(counts)


class Runs:
  def __init__(self, model, variables, cfg):
    self.model, self.variables, self.cfg = model, variables, cfg
    self.summary, self.records, self.traces, self.run_dir = {}, {}, {}, {}


@pytest.fixture(scope="module")
def resnet(tiny_data, tmp_path_factory):
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=WIDTH)
  cfg = TrainConfig(model="resnet18", feature_memory_gb=0.0, drop_at=RESNET_DROPS,
                    **(SETTINGS | dict(lr=0.02)))
  runs = Runs(model, model.init(jax.random.key(0), tiny_data.image_shape), cfg)
  for strategy in ("drop", "freeze", "sgd"):
    run_dir = RunDir(tmp_path_factory.mktemp("resnet") / strategy) if strategy == "drop" else None
    runs.summary[strategy], runs.records[strategy], runs.traces[strategy] = train(
        model, tiny_data, cfg, strategy, runs.variables, run_dir)
    runs.run_dir[strategy] = run_dir
  return runs


@pytest.fixture(scope="module")
def vgg(tiny_data):
  model = build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=WIDTH)
  cfg = TrainConfig(model="vgg11", **(SETTINGS | dict(epochs=3)))   # one decision: epoch 2
  runs = Runs(model, model.init(jax.random.key(0), tiny_data.image_shape), cfg)
  for strategy in ("drop", "freeze"):
    runs.summary[strategy], runs.records[strategy], runs.traces[strategy] = train(
        model, tiny_data, cfg, strategy, runs.variables)
  return runs


# --- one step: the head on cached features == the full model with the prefix stopped ---------


@pytest.mark.parametrize("name, n", [
    ("resnet18", 7),   # head: layer4.0 (stride 2, projection), layer4.1, fc
    ("vgg11", 6),      # head: conv7, conv8, fc1-fc3 (dropout in fc1 and fc2)
])
def test_head_on_features_equals_frozen_prefix(tiny_data, name, n):
  data = tiny_data
  model = build_model(name, data.image_shape, data.num_classes, width=WIDTH)
  variables = model.init(jax.random.key(0), data.image_shape)
  tx = optax.sgd(0.05, momentum=0.9)
  state = steps.init_train_state(variables[n:], tx)
  x, y = data.x_train[:32], data.y_train[:32]
  rng = jax.random.key(7)
  norm = dict(mean=data.mean, std=data.std)

  def step(frozen, head_index):
    return jax.jit(functools.partial(
        steps.train_step, head_stages=model.stages[n:], frozen_stages=frozen, tx=tx,
        head_index=head_index, **norm))

  # (a) the full model, prefix frozen (inference mode, no gradient), on images.
  sa, ma, ga = step(model.stages[:n], n)(state, variables[:n], x, y, rng)
  # (b) the head alone on the prefix's cached output.
  feats = jax.jit(functools.partial(steps.extract_features, stages=model.stages[:n],
                                    out_dtype=jnp.float32, **norm))(variables[:n], x)
  assert feats.shape == (32, *stage_output_shapes(model, data.image_shape)[n - 1])
  sb, mb, gb = step((), n)(state, [], feats, y, rng)

  assert np.isfinite(float(ma["loss"]))
  np.testing.assert_allclose(float(mb["loss"]), float(ma["loss"]), rtol=1e-5)
  assert int(mb["correct"]) == int(ma["correct"])
  assert len(ga) == len(gb) == model.num_stages - n
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ga))
  for a, b in zip(jax.tree.leaves((sa.params, sa.batch_stats)),
                  jax.tree.leaves((sb.params, sb.batch_stats))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)

  if name == "vgg11":
    # Dropout is live in this head: keyed by another position, it draws other masks.
    _, _, gc = step((), 0)(state, [], feats, y, rng)
    assert not all(np.allclose(c, a, rtol=1e-3, atol=1e-6)
                   for a, c in zip(jax.tree.leaves(ga), jax.tree.leaves(gc)))


# --- freeze == drop end to end --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_freeze_equals_drop(request, arch):
  runs = request.getfixturevalue(arch)
  freeze, drop = runs.summary["freeze"], runs.summary["drop"]
  assert drop["drop_events"], "no drop happened: the comparison would prove nothing"
  assert drop["drop_events"] == freeze["drop_events"]
  assert drop["final_cut"] == freeze["final_cut"] > 0
  assert abs(drop["test_accuracy"] - freeze["test_accuracy"]) <= 0.5
  assert drop["param_l2"] == pytest.approx(freeze["param_l2"], rel=1e-4)
  # Weight by weight, BatchNorm statistics and the dropped prefix included. (On the
  # CPU they come out bit-identical; a head drawing other dropout masks than the
  # full model's differs by 1e-5..1e-3 here.)
  for a, b in zip(jax.tree.leaves(freeze["variables"]), jax.tree.leaves(drop["variables"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  # Every epoch's decision and evaluation, too (drop evaluates the head on
  # cached test features after a drop, when they fit in memory: the VGG run).
  for f, d in zip(runs.records["freeze"], runs.records["drop"]):
    assert f["dropped_stages"] == d["dropped_stages"]
    assert d["test_accuracy"] == pytest.approx(f["test_accuracy"], abs=0.2)
    assert d["test_loss"] == pytest.approx(f["test_loss"], rel=1e-4)
    assert (f["decision"] or {}).get("n_star") == (d["decision"] or {}).get("n_star")


@pytest.mark.parametrize("budget_gb", [4.0, 0.0])
def test_evaluation_on_cached_test_features(resnet, tiny_data, budget_gb):
  # After each of the run's drops, the head on cached test features (extended
  # from the previous cache) evaluates like the whole model; without room for
  # them the whole model runs.
  cfg = resnet.cfg.replace(feature_memory_gb=budget_gb)
  variables = resnet.summary["drop"]["variables"]
  trainer = trainer_for(resnet.model, tiny_data, cfg, "drop", variables, None)
  full = trainer.evaluate()
  assert trainer.evaluator.test_cut == 0
  for event in resnet.summary["drop"]["drop_events"]:
    trainer.drop = dataclasses.replace(trainer.drop, store_cut=event["cut"])
    ev = trainer.evaluate()
    assert trainer.evaluator.test_cut == (event["cut"] if budget_gb else 0)
    assert ev["test_accuracy"] == pytest.approx(full["test_accuracy"], abs=0.2)
    assert ev["test_loss"] == pytest.approx(full["test_loss"], rel=1e-5)
  if budget_gb:
    shape = stage_output_shapes(resnet.model, tiny_data.image_shape)[trainer.evaluator.test_cut - 1]
    assert trainer.evaluator.test_features.shape == (len(tiny_data.x_test), *shape)
    assert trainer.evaluator.test_features.dtype == np.float32


def test_eval_every_skips_only_test_metrics(vgg, tiny_data, tmp_path):
  # Evaluating every 2nd epoch (and after the last, the 3rd) changes the skipped
  # epochs' test metrics (None) and nothing else; the figures leave them out.
  cfg = vgg.cfg.replace(eval_every=2)
  run_dir = RunDir(tmp_path / "drop")
  run_dir.write_config(cfg, strategy="drop", model_name=vgg.model.name,
                       stage_names=list(vgg.model.stage_names), num_train=len(tiny_data.x_train))
  summary, records, _ = train(vgg.model, tiny_data, cfg, "drop", vgg.variables, run_dir)
  assert [r["test_accuracy"] is None for r in records] == [True, False, False]
  assert records[0]["test_loss"] is None and records[0]["time"]["eval_s"] < 0.01
  for r, ref in zip(records, vgg.records["drop"], strict=True):
    assert r["loss"] == ref["loss"] and r["dropped_stages"] == ref["dropped_stages"]
    if r["test_accuracy"] is not None:
      assert r["test_accuracy"] == ref["test_accuracy"] and r["test_loss"] == ref["test_loss"]
  assert summary["test_accuracy"] == vgg.summary["drop"]["test_accuracy"]
  from ldjax.reporting import report, runs
  written = report.write_report([runs.load_run(run_dir.path)], tmp_path / "report")
  assert any(p.name == "accuracy_time.png" for p in written)


def test_resnet_drops_twice_second_store_from_first(resnet):
  # The second extraction reads the first store, not the images.
  events = resnet.summary["drop"]["drop_events"]
  assert len(events) >= 2, events
  stores = [r["store"] for r in resnet.records["drop"] if r["store"]]
  assert len(stores) == len(events)
  assert [s["stage_range"] for s in stores] == [[0, e["cut"]] for e in events]
  assert all(s["backing"] == "npy" for s in stores)   # feature_memory_gb=0


def test_dropped_prefix_is_untouched(resnet):
  # Stages [0, final_cut) keep the weights they had when they were dropped; the
  # first event's stages were trained only up to that epoch, so they differ from init.
  final = resnet.summary["drop"]["variables"]
  first_cut = resnet.summary["drop"]["drop_events"][0]["cut"]
  init = resnet.variables
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init[:first_cut]),
                                                     jax.tree.leaves(final[:first_cut]))]
  assert any(changed)
  # The full model still has every stage.
  assert len(final) == resnet.model.num_stages


def test_sgd_never_drops(resnet):
  s = resnet.summary["sgd"]
  assert s["drop_events"] == [] and s["final_cut"] == 0
  assert all(r["dropped_stages"] == 0 and r["decision"] is None for r in resnet.records["sgd"])
  assert resnet.traces["sgd"].get("extract_features", 0) == 0
  assert resnet.traces["sgd"]["scored_train_step"] == 1


def test_sgd_learns(resnet):
  # Four times the 10% of chance on 10 classes after 5 epochs of 8 steps.
  s = resnet.summary["sgd"]
  assert s["test_accuracy"] > 40.0, s["test_accuracy"]
  losses = [r["loss"] for r in resnet.records["sgd"]]
  assert losses[-1] < losses[0]


# --- compilation: once per cut, never per step --------------------------------------------


@pytest.mark.parametrize("arch, strategy", [("resnet", "drop"), ("resnet", "freeze"),
                                            ("vgg", "drop"), ("vgg", "freeze")])
def test_traces_once_per_decision(request, arch, strategy):
  runs = request.getfixturevalue(arch)
  traces = runs.traces[strategy]
  events = len(runs.summary[strategy]["drop_events"])
  assert events >= 1
  # If the loop bound the step functions at import time, the counting wrappers would
  # never run and these counts would be 0.
  assert traces["scored_train_step"] == 1 + events
  # Drop also extracts the test set's features once per drop and compiles an
  # evaluation of the head on them, when they fit in --feature-memory-gb (not
  # in the ResNet run: its budget is 0).
  test_cache = strategy == "drop" and runs.cfg.store.memory_gb > 0
  assert traces.get("extract_features", 0) == (
      (2 if test_cache else 1) * events if strategy == "drop" else 0)
  assert traces["eval_step"] == 1 + (events if test_cache else 0)
  # Compilation time is spent in the first epoch and in each epoch after a decision only.
  recompiled = [r["epoch"] for r in runs.records[strategy] if r["time"]["compile_s"] > 0]
  assert recompiled == [1] + [e["epoch"] + 1 for e in runs.summary[strategy]["drop_events"]]


# --- per-epoch records and summary -------------------------------------------------------


def test_metrics_jsonl_fields(resnet):
  run_dir = resnet.run_dir["drop"]
  lines = run_dir.metrics_path.read_text().splitlines()
  assert len(lines) == EPOCHS
  records = [json.loads(line) for line in lines]
  assert records == json.loads(json.dumps(resnet.records["drop"]))   # what on_epoch saw
  num_conv = resnet.model.num_conv
  for i, r in enumerate(records):
    for key in RECORD_KEYS:
      assert key in r, key
    for key in TIME_KEYS:
      assert r["time"][key] >= 0, key
    assert r["epoch"] == i + 1
    assert np.isfinite(r["loss"]) and r["loss"] > 0
    assert 0 <= r["train_accuracy"] <= 100 and 0 <= r["test_accuracy"] <= 100
    assert r["xla_step_flops"] is None or r["xla_step_flops"] > 0
    sc = r["scores"]
    assert len(sc["P"]) == len(sc["P_std"]) == len(sc["aapd"]) == num_conv - r["dropped_stages"]
    assert all(0 <= p <= 1 for p in sc["P"])
    assert all(a > 0 for a in sc["aapd"])
    np.testing.assert_allclose(sc["P_std"], scoring.standardize(sc["P"]), atol=1e-12)
    # Decisions: only the forced ones (RESNET_DROPS), recorded as such.
    forced = dict(tuple(map(int, pair.split(":"))) for pair in RESNET_DROPS.split(","))
    if r["epoch"] in forced:
      assert r["decision"] == {"forced": True, "drop": True, "new_cut": forced[r["epoch"]],
                               "n_star": forced[r["epoch"]] - r["dropped_stages"]}
    else:
      assert r["decision"] is None
  summary = json.loads((run_dir.path / "summary.json").read_text())
  for key in SUMMARY_KEYS:
    assert key in summary, key
  assert "variables" not in summary
  returned = resnet.summary["drop"]
  assert summary["strategy"] == "drop" and summary["epochs"] == EPOCHS
  assert summary["test_accuracy"] == records[-1]["test_accuracy"] == returned["test_accuracy"]
  assert summary["drop_events"] == returned["drop_events"]
  assert summary["param_l2"] == returned["param_l2"]
  assert summary["train_time_s"] >= sum(r["time"]["train_s"] for r in records)
  # The stores were a cache: no feature file is left after the run.
  assert not list(run_dir.path.rglob("features_*"))


def test_decisions_replay_from_recorded_scores(vgg):
  """Re-deciding from each epoch's recorded P with a running list of dropped P'
  gives the recorded decisions, events and cuts."""
  dropped, cut, events = [], 0, []
  assert vgg.summary["drop"]["drop_events"]
  # Decisions from the epoch after the warm-up, never after the last epoch, and not in
  # the feature-storing epoch that follows a drop (Algorithm 1).
  recs = vgg.records["drop"]
  for i, r in enumerate(recs):
    after_drop = i > 0 and bool((recs[i - 1]["decision"] or {}).get("drop"))
    if r["epoch"] == 1 or r["epoch"] == len(recs) or after_drop:
      assert r["decision"] is None
    else:
      assert set(r["decision"]) >= {"n_star", "Mc", "Md", "drop"}
  for r in vgg.records["drop"]:
    assert r["dropped_stages"] == cut
    if r["decision"] is None:
      continue
    d = scoring.decide(r["scores"]["P"], dropped)
    assert d.n_star == r["decision"]["n_star"]
    assert d.drop == r["decision"]["drop"]
    assert d.median_candidates == pytest.approx(r["decision"]["Mc"])
    assert d.median_dropped == pytest.approx(r["decision"]["Md"])
    if d.drop:
      dropped += d.std_scores[:d.n_star].tolist()
      cut += d.n_star
      events.append({"epoch": r["epoch"], "stages_dropped": d.n_star, "cut": cut})
  assert events == vgg.summary["drop"]["drop_events"]


def test_trainable_params_and_macs_after_drop(resnet):
  model, v = resnet.model, resnet.variables
  macs = costs.stage_macs(model, (28, 28, 1))
  full = sum(macs)
  for strategy in ("drop", "freeze"):
    recs = resnet.records[strategy]
    for r in recs:
      assert r["trainable_params"] == count_params(v[r["dropped_stages"]:])
    cuts = [r["dropped_stages"] for r in recs]
    params = [r["trainable_params"] for r in recs]
    assert cuts[-1] > 0
    for a, b, pa, pb in zip(cuts, cuts[1:], params, params[1:]):
      if b > a:
        assert pb < pa
  # Freeze keeps the whole forward pass; a trained stage costs 3x its forward MACs.
  for r in resnet.records["freeze"]:
    c = r["dropped_stages"]
    assert r["forward_macs"] == full
    assert r["train_macs"] == sum(macs[:c]) + 3 * sum(macs[c:])
  # Drop: the epoch after a decision still runs the newly dropped stages once (from the
  # previous store), later epochs start at the cut.
  prev = 0
  for r in resnet.records["drop"]:
    c = r["dropped_stages"]
    start = prev if r["store"] else c
    assert r["forward_macs"] == sum(macs[start:]), r["epoch"]
    assert r["train_macs"] == sum(macs[start:c]) + 3 * sum(macs[c:]), r["epoch"]
    prev = c
  assert resnet.records["drop"][-1]["forward_macs"] < full
  # Per epoch, drop trains with no more MACs and fewer XLA FLOPs than freeze once cut.
  for f, d in zip(resnet.records["freeze"], resnet.records["drop"]):
    assert d["forward_macs"] <= f["forward_macs"] and d["train_macs"] <= f["train_macs"]
    if d["dropped_stages"] > 0 and d["xla_step_flops"] and f["xla_step_flops"]:
      assert d["xla_step_flops"] < f["xla_step_flops"]


# --- a user's own staged model ----------------------------------------------------------


class ConvStage(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.relu(nn.Conv(self.features, (3, 3))(x))


class PoolStage(nn.Module):
  """A stage without parameters."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.max_pool(x, (2, 2), (2, 2))


class MeanDense(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def test_custom_model_with_parameterless_stage(tiny_data):
  model = StagedModel("tiny_cnn", (ConvStage(4), PoolStage(), ConvStage(4), ConvStage(4),
                                   MeanDense(tiny_data.num_classes)),
                      ("c1", "pool", "c2", "c3", "fc"), num_dense=1)
  records = []
  cfg = TrainConfig(epochs=3, warmup=1, lr=0.05, batch_size=64)
  summary = ldjax.fit(model, tiny_data, cfg, "drop", hooks=ldjax.Hooks(
      on_epoch=lambda r: records.append(r.to_json()), progress=False))
  assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)
  # No gradient reaches the pooling stage: P = 1 and AAPD = 0 (README, interpretation 5).
  assert records[0]["scores"]["P"][1] == 1.0
  assert records[0]["scores"]["aapd"][1] == 0.0
  assert not jax.tree.leaves(summary["variables"][1])
