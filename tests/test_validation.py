"""--val-size: a fixed validation split held out of the training set, evaluated per epoch;
the test set only at the end (or with --test-every-epoch)."""

import jax
import numpy as np
import pytest

import ldjax
from ldjax.data.datasets import hold_out
from ldjax.errors import UsageError
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig

SETTINGS = dict(model="vgg11", width=0.0625, epochs=3, warmup=1, batch_size=64, lr=0.05)


def test_hold_out_is_fixed_and_disjoint(tiny_data):
  a, b = hold_out(tiny_data, 100), hold_out(tiny_data, 100)
  np.testing.assert_array_equal(a.x_val, b.x_val)
  assert len(a.x_train) == len(tiny_data.x_train) - 100 and len(a.x_val) == 100
  # Every training image lands in exactly one split, in its original order.
  flat = lambda x: [bytes(r) for r in x.reshape(len(x), -1)]   # noqa: E731
  original = flat(tiny_data.x_train)
  train, val = flat(a.x_train), flat(a.x_val)
  assert sorted(train + val) == sorted(original)
  assert not set(train) & set(val)
  assert [original.index(r) for r in val] == sorted(original.index(r) for r in val)
  assert a.mean != tiny_data.mean   # normalisation from the images left to train on
  assert a.x_test is tiny_data.x_test
  with pytest.raises(UsageError, match="leaves no training data"):
    hold_out(tiny_data, len(tiny_data.x_train))


@pytest.fixture(scope="module")
def runs(tiny_data):
  model = build_model("vgg11", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  out = {}
  for name, strategy, extra in (("freeze", "freeze", {}), ("drop", "drop", {}),
                                ("drop_every", "drop", dict(test_every_epoch=True))):
    cfg = TrainConfig(val_size=96, **SETTINGS, **extra)
    records = []
    summary = ldjax.fit(model, tiny_data, cfg, strategy, start=ldjax.Start(variables),
                        hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                          progress=False))
    out[name] = summary, records
  return out


def test_validation_every_epoch_test_at_the_end(runs):
  summary, records = runs["drop"]
  assert summary["drop_events"], "no drop: the cached validation path would be untested"
  assert all(r["val_accuracy"] is not None for r in records)
  assert [r["test_accuracy"] is None for r in records] == [True, True, False]
  assert summary["val_accuracy"] == records[-1]["val_accuracy"]
  assert summary["test_accuracy"] == records[-1]["test_accuracy"]
  assert summary["val_size"] == 96


def test_test_every_epoch(runs):
  _, records = runs["drop_every"]
  assert all(r["test_accuracy"] is not None for r in records)
  assert [r["val_accuracy"] for r in records] == [r["val_accuracy"] for r in runs["drop"][1]]


def test_freeze_and_drop_validate_alike(runs):
  """Drop validates the head on cached validation features; Freeze runs the whole model."""
  (freeze, f_recs), (drop, d_recs) = runs["freeze"], runs["drop"]
  assert freeze["drop_events"] == drop["drop_events"]
  for f, d in zip(f_recs, d_recs):
    assert d["val_accuracy"] == pytest.approx(f["val_accuracy"], abs=0.2)
    assert d["val_loss"] == pytest.approx(f["val_loss"], rel=1e-4)
