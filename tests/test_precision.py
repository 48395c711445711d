"""--precision bfloat16: matrix products in bfloat16, weights, statistics, gradients and
scores in float32; Freeze and Drop stay equal. store.dtype bfloat16: Freeze rounds its
frozen maps where Drop stores them, so they stay equal too."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ldjax
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import assembly, precision, steps
from ldjax.train.decisions import DropState


@pytest.fixture(scope="module")
def model_and_vars(tiny_data):
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  return model, model.init(jax.random.key(0), tiny_data.image_shape)


def test_convolutions_run_in_bfloat16_the_rest_in_float32(model_and_vars, tiny_data):
  model, variables = model_and_vars
  x = steps.prepare_input(tiny_data.x_train[:64], tiny_data.mean, tiny_data.std)

  def fwd(v, dtype):
    return precision.apply(model.stages, v, x, dtype, train=True, rng=jax.random.key(1))

  text = str(jax.make_jaxpr(lambda v: fwd(v, jnp.bfloat16))(variables))
  convs = [line for line in text.splitlines() if "conv_general_dilated" in line]
  assert convs and all("bf16" in line for line in convs)
  assert "bf16" not in str(jax.make_jaxpr(lambda v: fwd(v, jnp.float32))(variables))
  # Jitted, as a run computes them (op by op, every primitive would compile on its own).
  out, new = jax.jit(fwd, static_argnums=1)(variables, jnp.bfloat16)
  assert out.dtype == jnp.float32
  for leaf in jax.tree.leaves([v.get("batch_stats", {}) for v in new]):
    assert leaf.dtype == jnp.float32
  # Gradients reach the float32 weights in float32, near the float32 ones: at
  # initialisation the early stages' gradients (much cancellation through BatchNorm)
  # have a cosine of ~0.9 with the float32 ones, the classifier's ~1.
  def loss(params, dtype):
    v = steps.merge_variables(params, [v.get("batch_stats", {}) for v in variables])
    logits, _ = fwd(v, dtype)
    return steps.cross_entropy(logits, jnp.asarray(tiny_data.y_train[:64]))
  params = [v.get("params", {}) for v in variables]
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g16, g32 = grad(params, jnp.bfloat16), grad(params, jnp.float32)
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert a.dtype == jnp.float32
  cos = lambda a, b: float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))  # noqa
  flat = lambda g: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])  # noqa
  assert cos(flat(g16), flat(g32)) > 0.85
  assert cos(flat(g16[-1]), flat(g32[-1])) > 0.999
  assert not np.array_equal(flat(g16), flat(g32))


def test_bfloat16_freeze_equals_drop(model_and_vars, tiny_data):
  model, variables = model_and_vars
  cfg = TrainConfig(model="resnet18", width=0.0625, epochs=4, warmup=1, batch_size=64, lr=0.02,
                    precision="bfloat16")
  out = {s: ldjax.fit(model, tiny_data, cfg, s, start=ldjax.Start(variables),
                     hooks=ldjax.Hooks(progress=False))
         for s in ("freeze", "drop")}
  assert out["drop"]["drop_events"] and out["drop"]["drop_events"] == out["freeze"]["drop_events"]
  for a, b in zip(jax.tree.leaves(out["freeze"]["variables"]),
                  jax.tree.leaves(out["drop"]["variables"])):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  assert all(np.asarray(a).dtype == np.float32 for a in jax.tree.leaves(out["drop"]["variables"]))


@pytest.fixture(scope="module")
def bf16_store_runs(model_and_vars, tiny_data):
  """Freeze and Drop with bfloat16 stores and two forced drops, and Drop without room for
  its stores ("drop-frozen": no work directory, store.memory_gb 0)."""
  model, variables = model_and_vars
  cfg = TrainConfig(model="resnet18", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.02,
                    feature_dtype="bfloat16", drop_at="1:2,2:4")
  out, records = {}, {}
  for name, strategy, c in (("freeze", "freeze", cfg), ("drop", "drop", cfg),
                            ("drop-frozen", "drop", cfg.replace(feature_memory_gb=0.0))):
    records[name] = []
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", "cannot store the features")
      out[name] = ldjax.fit(model, tiny_data, c, strategy, start=ldjax.Start(variables),
                            hooks=ldjax.Hooks(on_epoch=lambda r, n=name: records[n].append(
                                r.to_json()), progress=False))
  return out, records


def assert_same_weights(a_vars, b_vars):
  for a, b in zip(jax.tree.leaves(a_vars), jax.tree.leaves(b_vars), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_bfloat16_store_freeze_equals_drop(bf16_store_runs):
  # Two forced drops: Drop's second store is extracted from its first (bfloat16) one, so
  # its head reads maps rounded after stage 1 and after stage 3; Freeze rounds there too.
  out, records = bf16_store_runs
  assert [e["cut"] for e in out["drop"]["drop_events"]] == [2, 4]
  assert out["drop"]["drop_events"] == out["freeze"]["drop_events"]
  stores = [r["store"] for r in records["drop"] if r.get("store")]
  assert [x["stage_range"] for x in stores] == [[0, 2], [0, 4]]
  assert all(x["dtype"] == "bfloat16" for x in stores)
  assert not any(r.get("store") for r in records["freeze"])
  assert_same_weights(out["freeze"]["variables"], out["drop"]["variables"])


def test_drop_without_room_for_its_bfloat16_stores_rounds_like_them(bf16_store_runs):
  # Its dropped stages stay frozen in the forward pass and round where the stores would
  # have: the weights do not depend on whether a store fit.
  out, records = bf16_store_runs
  assert out["drop-frozen"]["drop_events"] == out["drop"]["drop_events"]
  assert not any(r.get("store") for r in records["drop-frozen"])
  assert_same_weights(out["drop"]["variables"], out["drop-frozen"]["variables"])


def test_a_bfloat16_store_rebuilt_in_one_pass_equals_its_chain(model_and_vars, tiny_data):
  # A resume rebuilds the store of stages [0, 4) from the images in one pass: rounded at
  # the earlier drop's cut on the way, it is bit for bit the chain [0, 2) -> [2, 4).
  model, variables = model_and_vars
  cfg = TrainConfig(model="resnet18", width=0.0625, batch_size=64, feature_dtype="bfloat16")
  p = assembly.programs_for(model, tiny_data, cfg, variables)
  x = p.placement.put_batch(tiny_data.x_train[:64])
  first = p.extraction(0, 2, boundaries=(2, 4)).fn(list(variables[:2]), x)
  chain = np.asarray(p.extraction(2, 4, boundaries=(2, 4)).fn(list(variables[2:4]), first))
  rebuilt = np.asarray(p.extraction(0, 4, boundaries=(2, 4)).fn(list(variables[:4]), x))
  assert rebuilt.dtype == chain.dtype == p.feature_dtype
  assert np.array_equal(rebuilt.view(np.uint16), chain.view(np.uint16))
  unrounded = np.asarray(p.extraction(0, 4).fn(list(variables[:4]), x))
  assert not np.array_equal(unrounded.view(np.uint16), chain.view(np.uint16))
  # The Trainer's rebuild after a resume, from its drop state's events.
  trainer = assembly.trainer_for(model, tiny_data, cfg, "drop", variables, None)
  trainer.drop = DropState(cut=4, store_cut=4, events=(
      {"epoch": 1, "stages_dropped": 2, "cut": 2}, {"epoch": 2, "stages_dropped": 2, "cut": 4}))
  trainer.rebuild_store(4)
  stored = np.asarray(trainer.store.read(np.arange(64)))
  assert np.array_equal(stored.view(np.uint16), chain.view(np.uint16))
  # With float32 stores nothing is rounded: the programs are those without boundaries.
  p32 = assembly.programs_for(model, tiny_data, cfg.replace(feature_dtype="float32"), variables)
  assert p32.rounding((2, 4), 0, 4) == () and p.rounding((2, 4), 0, 4) == (2, 4)
  assert p.rounding((2, 4), 2, 4) == (2,) and p.rounding((2,), 2, 2) == ()
