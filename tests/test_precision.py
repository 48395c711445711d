"""--precision bfloat16: matrix products in bfloat16, weights, statistics, gradients and
scores in float32; Freeze and Drop stay equal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ldjax
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import precision, steps


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
