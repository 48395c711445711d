"""ldjax.train.optim: the schedules' values, the paper's optimizer unchanged, decay masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ldjax.runs.config import Config, TrainConfig, recipe
from ldjax.train import optim, steps

SPE = 10   # steps per epoch


def cfg(**kw) -> Config:
  return TrainConfig(**{"epochs": 10, "lr": 0.1, **kw})


def schedule_of(c: Config, spe: int):
  """The schedule of a run of c.run.epochs epochs of `spe` steps."""
  return optim.lr_schedule(c.optim, spe, c.run.epochs * spe)


def optimizer_of(c: Config, spe: int, **kw):
  return optim.make_optimizer(c.optim, spe, c.run.epochs * spe, **kw)


def values(schedule, upto):
  return np.array([float(schedule(i)) for i in range(upto)])


def test_constant_and_step_schedules():
  np.testing.assert_allclose(values(schedule_of(cfg(), SPE), 100), 0.1)
  step = values(schedule_of(cfg(lr_decay_epoch=4, lr_decay_factor=0.5), SPE), 100)
  np.testing.assert_allclose(step[:40], 0.1)
  np.testing.assert_allclose(step[40:], 0.05)


def test_cosine_decays_to_zero_by_global_step():
  v = values(schedule_of(cfg(schedule="cosine"), SPE), 101)
  np.testing.assert_allclose(v[0], 0.1)
  np.testing.assert_allclose(v[50], 0.05, rtol=1e-6)
  np.testing.assert_allclose(v[100], 0.0, atol=1e-9)
  assert np.all(np.diff(v) <= 1e-9)


def test_lr_warmup_is_a_linear_rise_then_the_schedule():
  v = values(schedule_of(cfg(schedule="cosine", warmup_lr_epochs=2), SPE), 100)
  plain = values(schedule_of(cfg(schedule="cosine"), SPE), 100)
  np.testing.assert_allclose(v[:20], plain[:20] * np.arange(1, 21) / 20, rtol=1e-6)
  np.testing.assert_allclose(v[20:], plain[20:], rtol=1e-6)


def test_onecycle_rises_for_the_warmup_epochs_then_decays():
  v = values(schedule_of(cfg(schedule="onecycle", warmup_lr_epochs=3), SPE), 100)
  assert int(np.argmax(v)) == 30 and v[30] == pytest.approx(0.1)
  assert v[0] < 0.01 and v[99] < 1e-3


def params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 4)),
                   "bias": jax.random.normal(k[1], (4,))},
          "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
          "dense": {"kernel": jax.random.normal(k[2], (4, 3))}}


def run_steps(tx, p, n=5):
  state = tx.init(p)
  for i in range(n):
    g = jax.tree.map(lambda x, i=i: jnp.sin(x + i), p)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  return p


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_paper_optimizer_is_plain_optax_sgd_with_momentum():
  c = cfg(momentum=0.9)
  assert_trees_equal(run_steps(optimizer_of(c, SPE), params()),
                     run_steps(optax.sgd(0.1, momentum=0.9), params()))
  c = cfg(momentum=0.0)
  assert_trees_equal(run_steps(optimizer_of(c, SPE), params()),
                     run_steps(optax.sgd(0.1), params()))


def test_decay_mask_takes_kernels_only():
  mask = optim.decay_mask(params())
  assert mask == {"conv": {"kernel": True, "bias": False},
                  "bn": {"scale": False, "bias": False}, "dense": {"kernel": True}}


def test_sgd_weight_decay_reaches_kernels_only():
  p = params()
  zero = jax.tree.map(jnp.zeros_like, p)
  tx = optimizer_of(cfg(weight_decay=0.01, momentum=0.0), SPE)
  updates, _ = tx.update(zero, tx.init(p), p)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * 0.01 * p["conv"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.01 * p["dense"]["kernel"],
                             rtol=1e-6)
  for leaf in (updates["conv"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
    np.testing.assert_array_equal(leaf, 0)


def test_nesterov_and_adamw_are_optax_s():
  assert_trees_equal(run_steps(optimizer_of(cfg(optimizer="nesterov"), SPE), params()),
                     run_steps(optax.sgd(0.1, momentum=0.9, nesterov=True), params()))
  assert_trees_equal(
      run_steps(optimizer_of(cfg(optimizer="adamw", weight_decay=0.05), SPE), params()),
      run_steps(optax.adamw(0.1, weight_decay=0.05, mask=optim.decay_mask), params()))
  assert not np.allclose(
      run_steps(optimizer_of(cfg(optimizer="nesterov"), SPE), params())["conv"]["kernel"],
      run_steps(optimizer_of(cfg(), SPE), params())["conv"]["kernel"])


def test_per_stage_application_equals_the_whole_model():
  """What lets the head's state be a slice: every transformation is element-wise."""
  c = cfg(**{**recipe("strong"), "epochs": 10})
  tx = optimizer_of(c, SPE)
  p = params()
  whole = run_steps(tx, p)
  per_stage = {name: run_steps(tx, sub) for name, sub in p.items()}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), whole, per_stage)


def test_label_smoothing_loss():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  labels = jnp.array([0, 2])
  plain = steps.cross_entropy(logits, labels)
  np.testing.assert_allclose(plain, optax.softmax_cross_entropy_with_integer_labels(
      logits, labels).mean(), rtol=1e-6)
  a = 0.1
  logp = jax.nn.log_softmax(logits)
  target = (1 - a) * jax.nn.one_hot(labels, 3) + a / 3
  np.testing.assert_allclose(steps.cross_entropy(logits, labels, a),
                             -(target * logp).sum(-1).mean(), rtol=1e-6)


def test_strong_recipe_is_a_valid_config():
  c = TrainConfig(epochs=12).replace(**recipe("strong"))
  assert c.optim.schedule_name == "cosine" and c.optim.optimizer == "nesterov"
  assert c.drop.decision_rule == "paper"


def test_the_decision_rule_flag_overrides_the_recipe():
  from ldjax import run
  parser = run.build_parser()
  assert run.config_from_args(parser.parse_args(
      ["--recipe", "strong"])).drop.decision_rule == "paper"
  assert run.config_from_args(parser.parse_args(
      ["--recipe", "strong", "--decision-rule", "stable"])).drop.decision_rule == "stable"
