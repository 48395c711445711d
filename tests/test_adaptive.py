"""Tests of --adaptive-batch (ldjax.train.adaptive): the multiplier, the strided learning
rate, and a drop run whose head batch grows, with Freeze still equal to Drop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ldjax
from ldjax import run
from ldjax.errors import UsageError
from ldjax.models import costs
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import adaptive, optim
from ldjax.train.decisions import DropState

SETTINGS = dict(model="resnet18", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.02)


def test_multiplier_follows_the_head_cost_and_its_caps():
  macs = [100, 100, 100, 100]   # a head of one stage in four costs a quarter
  assert adaptive.multiplier(macs, 0, batch_size=64, n_train=10_000) == 1   # SGD's cut
  assert adaptive.multiplier(macs, 1, batch_size=64, n_train=10_000) == 1   # 4/3 -> 1
  assert adaptive.multiplier(macs, 2, batch_size=64, n_train=10_000) == 2
  assert adaptive.multiplier(macs, 3, batch_size=64, n_train=10_000) == 4
  assert adaptive.multiplier(macs, 3, batch_size=64, n_train=10_000, max_batch_size=191) == 2
  assert adaptive.multiplier(macs, 3, batch_size=64, n_train=150) == 2   # one step an epoch
  assert adaptive.multiplier([1000, 1], 1, batch_size=64, n_train=10**6) == adaptive.DEFAULT_CAP
  # Training MACs of the model as costs counts them (3x forward for trained stages).
  full, head = costs.training_macs(macs, 0, "sgd"), costs.training_macs(macs, 3, "drop")
  assert full // head == 4


@pytest.mark.parametrize("k, rule, factor", [(1, "linear", 1.0), (4, "linear", 4.0),
                                              (4, "sqrt", 2.0)])
def test_strided_learning_rate_advances_k_base_steps(k, rule, factor):
  cfg = TrainConfig(lr=0.1, schedule="cosine", epochs=4, warmup=1, momentum=0.0)
  schedule = optim.lr_schedule(cfg.optim, 10, 40)
  assert adaptive.lr_scale(k, rule) == factor
  tx = optim.make_optimizer(cfg.optim, 10, 40, stride=k, lr_factor=factor)
  base = optim.make_optimizer(cfg.optim, 10, 40)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(base.init(params))
  for i in range(3):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -factor * schedule(i * k), rtol=1e-6)
  assert int(jax.tree.leaves(state)[-1]) == 3 * k


def test_k_one_is_optax_exactly():
  cfg = TrainConfig(lr=0.1, optimizer="nesterov", weight_decay=5e-4, schedule="cosine",
                    epochs=3, warmup=1)
  schedule = optim.lr_schedule(cfg.optim, 7, 21)
  reference = optax.chain(optax.add_decayed_weights(5e-4, mask=optim.decay_mask),
                          optax.sgd(schedule, momentum=0.9, nesterov=True))
  ours = optim.make_optimizer(cfg.optim, 7, 21)
  params = {"k": jnp.linspace(-1, 1, 6).reshape(2, 3), "b": jnp.ones(3)}
  a, b = reference.init(params), ours.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda p: p * (i + 1) * 0.3, params)
    ua, a = reference.update(grads, a, params)
    ub, b = ours.update(grads, b, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
      assert np.array_equal(np.asarray(x), np.asarray(y))


# Runs that start with stages 0-5 dropped (as a run continuing another does), so that
# the head is cheap enough for k > 1 whatever this CPU's numerics decide later.
START_CUT = 6


@pytest.fixture(scope="module")
def adaptive_runs(tiny_data):
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  cfg = TrainConfig(**SETTINGS, adaptive_batch=True, max_batch_size=256)
  starts = {"drop": DropState(cut=START_CUT, store_cut=0, pending=(0, START_CUT)),
            "freeze": DropState(cut=START_CUT)}
  out = {}
  for strategy, start in starts.items():
    records = []
    summary = ldjax.fit(model, tiny_data, cfg, strategy, start=ldjax.Start(variables, start),
                        hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                          progress=False))
    out[strategy] = (summary, records)
  return model, out


def test_head_batch_grows_after_a_drop(adaptive_runs, tiny_data):
  model, runs = adaptive_runs
  summary, records = runs["drop"]
  assert records[0]["dropped_stages"] == START_CUT
  macs = costs.stage_costs(model, tiny_data.image_shape)
  macs = [c.macs for c in macs]
  for rec in records:
    k = adaptive.multiplier(macs, rec["dropped_stages"], batch_size=64,
                            n_train=len(tiny_data.x_train), max_batch_size=256)
    assert rec["batch_size"] == 64 * k
    assert rec["lr_scale"] == pytest.approx(float(k))
  assert min(r["batch_size"] for r in records) > 64


def test_freeze_equals_drop_with_a_grown_batch(adaptive_runs):
  _, runs = adaptive_runs
  (freeze, f_recs), (drop, d_recs) = runs["freeze"], runs["drop"]
  assert drop["drop_events"] == freeze["drop_events"]
  assert drop["final_cut"] == freeze["final_cut"] >= START_CUT
  assert [r["batch_size"] for r in f_recs] == [r["batch_size"] for r in d_recs]
  for a, b in zip(jax.tree.leaves(freeze["variables"]), jax.tree.leaves(drop["variables"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, flag", [
    (["--adaptive-batch", "--batch-size", "64", "--max-batch-size", "32"], "--max-batch-size"),
    (["--max-batch-size", "512"], "--max-batch-size"),
    (["--adaptive-lr", "sqrt"], "--adaptive-lr"),
    (["--adaptive-batch", "--adaptive-lr", "cubic"], "--adaptive-lr"),
])
def test_bad_adaptive_flags_are_one_line(argv, flag, tmp_path, capsys):
  workdir = tmp_path / "wd"
  code = run.main([*argv, "--workdir", str(workdir), "--no-progress"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and flag in err and len(err.splitlines()) == 1
  assert not workdir.exists()


def test_config_refuses_a_cap_below_the_batch():
  with pytest.raises(UsageError, match="adaptive.max_batch_size"):
    TrainConfig(batch_size=128, adaptive_batch=True, max_batch_size=100)
