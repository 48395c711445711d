"""One epoch of the Trainer (ldjax.train.epoch) driven by hand: a pending drop's epoch
fills the store, shows its progress, and leaves the drop state stored; a failed store
leaves the stages frozen. The whole-run behaviour is in test_fit.py."""


import jax
import numpy as np
import pytest

from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.store.keeper import StoreKeeper
from ldjax.train import assembly, evaluation
from ldjax.train import epoch as loop
from ldjax.train.assembly import trainer_for
from ldjax.train.decisions import DropState


class Bar:
  """Records what the loop shows on a progress bar."""

  def __init__(self):
    self.postfix, self.updates = [], 0

  def set_postfix_str(self, text):
    self.postfix.append(text)

  def update(self, n):
    self.updates += n


@pytest.fixture(scope="module")
def setup(tiny_data):
  model = build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  cfg = TrainConfig(model="vgg11", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.05)
  return model, cfg, model.init(jax.random.key(0), tiny_data.image_shape)


def test_pending_drop_fills_the_store_showing_images_out_of_n(setup, tiny_data):
  model, cfg, variables = setup
  trainer = trainer_for(model, tiny_data, cfg, "drop", variables, None)
  trainer.drop = DropState(cut=2, pending=(0, 2))
  bar = Bar()
  out = trainer.run_epoch(1, bar)
  n = len(tiny_data.x_train)
  done = list(range(0, n, cfg.run.batch_size))
  assert bar.postfix == [f"storing the outputs of stages 0-1: {d}/{n} images" for d in done]
  assert bar.updates == trainer.steps_per_epoch
  assert out.extracted == (0, 2) and out.store["stage_range"] == [0, 2]
  assert trainer.drop == DropState(cut=2, store_cut=2)
  assert trainer.store.complete and trainer.store.shape == (n, *trainer.shapes[1])
  assert trainer.compiled_for == (2, 2)
  # The next epoch reads the store: no extraction, no new compile.
  bar = Bar()
  out = trainer.run_epoch(2, bar)
  assert bar.postfix == [] and out.extracted is None
  assert out.times.compile_s == 0.0


def test_a_store_that_cannot_be_made_leaves_the_stages_frozen(setup, tiny_data):
  model, cfg, variables = setup
  cfg = cfg.replace(feature_memory_gb=0.0)   # no room, no work directory
  trainer = trainer_for(model, tiny_data, cfg, "drop", variables, None)
  trainer.drop = DropState(cut=2, pending=(0, 2))
  with pytest.warns(UserWarning, match="frozen"):
    out = trainer.run_epoch(1, Bar())
  assert out.extracted is None and out.store is None
  assert trainer.drop == DropState(cut=2, store_cut=0)
  assert trainer.compiled_for == (0, 2) and trainer.store is None
  assert [f["stage_stop"] for f in trainer.keeper.fallbacks] == [2]
  assert np.isfinite(out.loss)


def test_a_trainer_built_from_its_pieces_runs_an_epoch_as_trainer_for_s(setup, tiny_data):
  # The Trainer is given what compiles, evaluates and keeps the stores; built by hand
  # from the public pieces, it trains the epoch `trainer_for`'s Trainer trains.
  model, cfg, variables = setup
  blocks = assembly.blocks_for(tiny_data, cfg)
  programs = assembly.programs_for(model, tiny_data, cfg, variables, blocks)
  table, run_budget, programs = assembly.costs_for(model, cfg, programs)
  start, opt_states = assembly.start_state(programs, variables)
  augment = cfg.augment.for_images(tiny_data.image_shape)
  keeper = StoreKeeper(augment.views * len(tiny_data.x_train), programs.view_net.shapes,
                       cfg.store.dtype, memory_budget_bytes=cfg.store.memory_bytes,
                       directory=None)
  test, val = evaluation.evaluators(programs.net, tiny_data, start,
                                    batch_size=cfg.eval.batch_size,
                                    memory_bytes=cfg.store.memory_bytes)
  trainer = loop.Trainer(model, tiny_data, "drop", programs=programs, variables=start,
                         opt_states=opt_states, blocks=blocks, augment=augment,
                         view_table=None, keeper=keeper, evaluator=test, val_evaluator=val,
                         costs=table, run_budget=run_budget, drop_settings=cfg.drop,
                         seed=cfg.run.seed, epochs=cfg.run.epochs)
  assert trainer.step_fn is None   # nothing compiled yet
  built = trainer_for(model, tiny_data, cfg, "drop", variables, None)
  for t in (trainer, built):
    t.drop = DropState(cut=2, pending=(0, 2))
  outs = [t.run_epoch(1, Bar()) for t in (trainer, built)]
  assert outs[0].loss == outs[1].loss and outs[0].extracted == outs[1].extracted == (0, 2)
  assert trainer.drop == built.drop == DropState(cut=2, store_cut=2)
  for a, b in zip(jax.tree.leaves(trainer.variables), jax.tree.leaves(built.variables),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert trainer.evaluate() == built.evaluate()
