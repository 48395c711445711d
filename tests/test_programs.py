"""ldjax.train.programs.Programs: what a run compiles, without a Trainer.

A width-1/16 VGG-11 on the embedded subset. Checked: the shapes it compiles for
are those of the Trainer's arrays (its optimizer states' included, with and
without a budget); an epoch replayed by hand with `Programs.step` ends with the
Trainer's weights, bitwise; the adaptive batch's multiplier; an extraction's
input and output.
"""

import jax
import numpy as np
import pytest

from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import adaptive, assembly, programs, scoring, steps


class Bar:
  def set_postfix_str(self, text):
    pass

  def update(self, n):
    pass


@pytest.fixture(scope="module")
def model(tiny_data):
  return build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)


@pytest.fixture(scope="module")
def variables(model, tiny_data):
  return model.init(jax.random.key(0), tiny_data.image_shape)


def cfg(**kw):
  return TrainConfig(**{"model": "vgg11", "width": 0.0625, "epochs": 2, "warmup": 1,
                        "batch_size": 64, "lr": 0.05, **kw})


@pytest.mark.parametrize("kw", [{}, {"budget": 2}])
def test_shapes_are_those_of_the_trainers_arrays(model, variables, tiny_data, kw):
  trainer = assembly.trainer_for(model, tiny_data, cfg(**kw), "sgd", variables, None)
  p = trainer.programs
  assert list(p.variables) == programs.structs(trainer.variables)
  assert list(p.opt_states) == programs.structs(trainer.opt_states)
  assert jax.tree.structure(list(p.opt_states)) == jax.tree.structure(trainer.opt_states)
  assert (p.budget_steps is None) == (trainer.budget is None)
  if trainer.budget is not None:
    assert p.budget_steps == trainer.budget.total_steps
  assert p.steps_per_epoch == trainer.steps_per_epoch == len(tiny_data.x_train) // 64
  # Built from shapes only, the same programs.
  again = assembly.programs_for(model, tiny_data, cfg(**kw), programs.structs(variables))
  assert again.variables == p.variables and again.opt_states == p.opt_states
  # Nothing is compiled before an epoch needs it.
  assert trainer.step_fn is None and trainer.compiled_for is None


def test_an_epoch_replayed_with_the_programs_step_ends_with_the_trainers_weights(
    model, variables, tiny_data):
  c = cfg()
  trainer = assembly.trainer_for(model, tiny_data, c, "sgd", variables, None)
  p = trainer.programs
  start, opt_states = assembly.start_state(p, variables)   # copies: the trainer donates its own
  step = p.step(0, 0)
  state = steps.head_state(start, opt_states, 0)
  scores = p.placement.replicate(scoring.init(state.params))
  key = p.placement.replicate(jax.random.key(c.run.seed))
  draws = trainer.draws(0)
  for s, idx in enumerate(trainer.blocks.batches(c.run.seed, 0, p.batch_size)):
    local = trainer.blocks.local(idx)
    x = p.placement.put_local(draws.images(trainer.x_train, local))
    y = p.placement.put_local(trainer.y_train[local])
    state, scores, _ = step.fn(state, scores, [], x, y, key, np.int32(s), np.float32(0))
  out = trainer.run_epoch(0, Bar())
  assert trainer.compiled_for == (0, 0) and trainer.step_k == 1
  replayed = steps.merge_variables(state.params, state.batch_stats)
  for a, b in zip(jax.tree.leaves(replayed), jax.tree.leaves(trainer.variables), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves((scores.sum, scores.abs_sum)),
                  jax.tree.leaves((out.scores.sum, out.scores.abs_sum)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_adaptive_multiplier(model, variables, tiny_data):
  plain = assembly.programs_for(model, tiny_data, cfg(), variables)
  assert [plain.multiplier(c) for c in range(model.num_conv)] == [1] * model.num_conv
  grown = assembly.programs_for(model, tiny_data, cfg(adaptive_batch=True), variables)
  assert [grown.multiplier(c) for c in range(model.num_conv)] == [
      adaptive.multiplier(grown.macs, c, batch_size=64, n_train=len(tiny_data.x_train))
      for c in range(model.num_conv)]
  assert grown.multiplier(0) == 1 and grown.multiplier(model.num_conv - 1) > 1
  # Its optimizer at k: the schedule strided by k, the rate scaled by k (linear rule).
  k = grown.multiplier(model.num_conv - 1)
  params = [v.get("params", {}) for v in variables]
  one, big = grown.optimizer(), grown.optimizer(k)
  assert jax.tree.structure(one.init(params)) == jax.tree.structure(big.init(params))


def test_an_extraction_reads_views_and_writes_the_stores_dtype(model, variables, tiny_data):
  p = assembly.programs_for(model, tiny_data, cfg(feature_dtype="bfloat16"), variables)
  extract = p.extraction(0, 2)
  x = p.placement.put_batch(tiny_data.x_train[:64])
  out = np.asarray(extract.fn(list(variables[:2]), x))
  assert out.shape == (64, *p.shapes[1]) and out.dtype == p.feature_dtype
  assert p.feature_dtype.name == "bfloat16"
