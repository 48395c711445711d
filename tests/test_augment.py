"""ldjax.data.augment: deterministic draws, image views, the fixed views of the exact
crop store, and the window store's feature windows.

End to end (a width-1/16 ResNet-18 on the embedded subset, 4 epochs, dropping
after epoch 2): with `--augment flip` and with `flip,crop` (the default
`--crop-store views`) Drop and Freeze end with the same decisions and weights;
with `--crop-store window` Drop's crop is the documented approximation,
recorded per epoch.
"""

import jax
import numpy as np
import pytest

import ldjax
from ldjax.data.augment import Augment, ViewSource, default_crop_pad, window
from ldjax.errors import UsageError
from ldjax.models.zoo import build_model
from ldjax.runs.config import TrainConfig
from ldjax.train import steps

rng = np.random.default_rng(0)
X = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)


def test_parse_and_defaults():
  assert Augment.parse("none", None, (28, 28, 1)) == Augment()
  assert Augment.parse("flip", None, (28, 28, 1)) == Augment(flip=True)
  assert Augment.parse("crop", None, (28, 28, 1)) == Augment(pad=2, crop_views=4)
  assert Augment.parse("crop", None, (28, 28, 1), "window") == Augment(pad=2)
  assert Augment.parse("flip,crop", None, (32, 32, 3), "views", 2) == Augment(
      flip=True, pad=4, crop_views=2)
  assert Augment.parse("flip,crop", 3, (32, 32, 3)).pad == 3
  assert Augment.parse("flip", None, (28, 28, 1), "views", 8).views == 2   # crop only
  assert default_crop_pad((28, 28, 1)) == 2 and default_crop_pad((32, 32, 3)) == 4
  assert Augment(flip=True, pad=2).name == "flip,crop" and Augment().name == "none"
  for name, pad in (("rotate", None), ("crop", 28), ("crop", 0), ("flip,crop", -1)):
    with pytest.raises(UsageError):
      Augment.parse(name, pad, (28, 28, 1))
  for store, views in (("exact", None), ("views", 0), ("views", -1), ("views", 2.0),
                       ("views", True)):
    with pytest.raises(UsageError, match="crop_store|crop_views"):
      Augment.parse("crop", None, (28, 28, 1), store, views)


def test_fixed_views_are_a_table_each_epoch_picks_from():
  aug = Augment(flip=True, pad=2, crop_views=3)
  table = aug.view_table(7, 1000)
  assert table.flips.shape == (3, 1000) and table.offsets.shape == (3, 1000, 2)
  np.testing.assert_array_equal(table.offsets, aug.view_table(7, 1000).offsets)
  assert (table.offsets != aug.view_table(8, 1000).offsets).any()
  a, b = aug.draws(7, 4, 1000, table), aug.draws(7, 5, 1000, table)
  assert a.exact and set(np.unique(a.view)) == {0, 1, 2} and (a.view != b.view).any()
  i = np.arange(1000)
  np.testing.assert_array_equal(a.flips, table.flips[a.view, i])
  np.testing.assert_array_equal(a.offsets, table.offsets[a.view, i])
  # Without the table (SGD, and before the first decision) the draws are fresh.
  fresh = aug.draws(7, 4, 1000)
  np.testing.assert_array_equal(fresh.offsets, Augment(flip=True, pad=2).draws(7, 4, 1000).offsets)
  # A process's block of the table is the table of its block.
  np.testing.assert_array_equal(table.block(100, 200).offsets, table.offsets[:, 100:200])


def test_fixed_views_store_rows_are_the_augmented_images():
  """The source of the store (row k * N + i: view k of image i) gives, at the rows an
  epoch draws, exactly the images Freeze computes for that epoch."""
  aug = Augment(flip=True, pad=2, crop_views=3)
  table = aug.view_table(0, 10)
  source = ViewSource(X, aug, table)
  assert len(source) == 30 and source[np.array([0])].shape == (1, 8, 8, 3)
  d = aug.draws(0, 2, 10, table)
  idx = np.array([4, 0, 9, 2])
  np.testing.assert_array_equal(source[d.rows(idx)], d.images(X, idx))
  np.testing.assert_array_equal(d.features(source[d.rows(idx)], idx, (8, 8), (8, 8)),
                                d.images(X, idx))


def test_draws_are_a_function_of_seed_and_epoch():
  aug = Augment(flip=True, pad=2)
  a, b = aug.draws(0, 3, 1000), aug.draws(0, 3, 1000)
  np.testing.assert_array_equal(a.flips, b.flips)
  np.testing.assert_array_equal(a.offsets, b.offsets)
  c = aug.draws(0, 4, 1000)
  assert (a.flips != c.flips).any() and (a.offsets != c.offsets).any()
  assert 400 < a.flips.sum() < 600
  assert a.offsets.min() == 0 and a.offsets.max() == 4
  none = Augment().draws(0, 3, 5)
  assert not none.flips.any() and not none.offsets.any()


def test_images():
  idx = np.array([3, 1, 7])
  np.testing.assert_array_equal(Augment().draws(0, 0, 10).images(X, idx), X[idx])
  d = Augment(flip=True).draws(0, 0, 10)
  got = d.images(X, idx)
  for i, row in zip(idx, got):
    np.testing.assert_array_equal(row, X[i, :, ::-1] if d.flips[i] else X[i])
  d = Augment(pad=2).draws(0, 0, 10)
  d.offsets[:] = [2, 2]                      # the centre crop is the image
  np.testing.assert_array_equal(d.images(X, idx), X[idx])
  d.offsets[:] = [0, 4]                      # 2 rows down, 2 columns left
  got = d.images(X, idx)
  assert not got[:, :2].any() and not got[:, :, -2:].any()
  np.testing.assert_array_equal(got[:, 2:, :-2], X[idx, :-2, 2:])


def test_view_rows_and_source():
  aug = Augment(flip=True, pad=1)
  source = ViewSource(X, aug)
  assert len(source) == 20
  views = source[np.array([2, 12])]
  assert views.shape == (2, 10, 10, 3)
  np.testing.assert_array_equal(views[0, 1:-1, 1:-1], X[2])
  np.testing.assert_array_equal(views[1, 1:-1, 1:-1], X[2, :, ::-1])
  d = aug.draws(0, 0, 10)
  np.testing.assert_array_equal(d.rows(np.arange(10)), np.arange(10) + 10 * d.flips)


def test_window_of_stored_views_is_the_augmented_image_for_a_pointwise_tail():
  """With no spatial extent (an identity tail) the window of the stored view is exact."""
  aug = Augment(flip=True, pad=2)
  d = aug.draws(1, 2, 10)
  idx = np.arange(10)
  stored = ViewSource(X, aug)[d.rows(idx)]
  np.testing.assert_array_equal(d.features(stored, idx, (8, 8), (8, 8)), d.images(X, idx))


def test_window_offsets_scale_to_the_map():
  stored = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1)
  d = Augment(pad=4).draws(0, 0, 2)
  d.offsets[:] = [[0, 8], [4, 3]]           # padded image 16 -> map 6 of 4 at stride 2
  got = d.features(stored, np.arange(2), (4, 4), (8, 8))
  np.testing.assert_array_equal(got[0], window(stored[:1], np.array([[0, 2]]), (4, 4))[0])
  np.testing.assert_array_equal(got[1], window(stored[1:], np.array([[2, 2]]), (4, 4))[0])


def test_conv_tail_is_exact_away_from_the_window_border(tiny_data):
  """A 3x3 stem (stride 1): the window of the padded view's map equals the cropped
  image's map except in a 1-pixel band at the border (the approximation documented)."""
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  aug = Augment(flip=True, pad=2)
  d = aug.draws(0, 1, len(tiny_data.x_train))
  idx = np.arange(16)
  norm = dict(mean=tiny_data.mean, std=tiny_data.std, out_dtype=np.float32)
  stem = lambda x: np.asarray(steps.extract_features(   # noqa: E731
      variables[:1], x, stages=model.stages[:1], **norm))
  stored = stem(ViewSource(tiny_data.x_train, aug)[d.rows(idx)])
  approx = d.features(stored, idx, (28, 28), (28, 28))
  exact = stem(d.images(tiny_data.x_train, idx))
  np.testing.assert_allclose(approx[:, 1:-1, 1:-1], exact[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
  assert np.abs(approx - exact).max() > 1e-3   # the border band differs


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_data):
  model = build_model("resnet18", tiny_data.image_shape, tiny_data.num_classes, width=0.0625)
  variables = model.init(jax.random.key(0), tiny_data.image_shape)
  out = {}
  for augment, store, strategies in (("flip", "views", ("freeze", "drop")),
                                     ("flip,crop", "views", ("freeze", "drop")),
                                     ("flip,crop", "window", ("drop",))):
    cfg = TrainConfig(model="resnet18", width=0.0625, epochs=4, warmup=1, batch_size=64,
                      lr=0.02, augment=augment, crop_store=store, crop_views=3)
    for s in strategies:
      records = []
      summary = ldjax.fit(model, tiny_data, cfg, s, start=ldjax.Start(variables),
                          hooks=ldjax.Hooks(on_epoch=lambda r: records.append(r.to_json()),
                                            progress=False))
      out[augment if store == "views" else "window", s] = summary, records
  return out


def test_flip_keeps_freeze_and_drop_equal(runs):
  (freeze, f_recs), (drop, d_recs) = runs["flip", "freeze"], runs["flip", "drop"]
  assert drop["drop_events"] and drop["drop_events"] == freeze["drop_events"]
  for a, b in zip(jax.tree.leaves(freeze["variables"]), jax.tree.leaves(drop["variables"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  assert [r["test_accuracy"] for r in f_recs] == pytest.approx(
      [r["test_accuracy"] for r in d_recs], abs=0.2)
  stored = [r for r in d_recs if r["augment"]["on"] != "images"]
  assert stored and all(r["augment"]["flip"].startswith("exact") for r in stored)
  assert all(r["augment"] == {"name": "flip", "on": "images"} for r in f_recs)
  store = next(r["store"] for r in d_recs if r["store"])
  assert store["views"] == 2 and store["augment_extra_bytes"] == store["bytes"] // 2


def test_exact_crop_keeps_freeze_and_drop_equal(runs, tiny_data):
  """--crop-store views: after the first decision both train on one of each image's K
  fixed views, which Drop reads from its store: same decisions, same weights."""
  (freeze, f_recs), (drop, d_recs) = runs["flip,crop", "freeze"], runs["flip,crop", "drop"]
  assert drop["drop_events"] and drop["drop_events"] == freeze["drop_events"]
  for a, b in zip(jax.tree.leaves(freeze["variables"]), jax.tree.leaves(drop["variables"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  stored = [r for r in d_recs if r["stored_stages"] > 0]
  assert stored and all(r["augment"]["crop"].startswith("exact") for r in stored)
  # K = 3 maps of the head's input size (the unpadded image's) per training image.
  first = next(r["store"] for r in d_recs if r["store"])
  model = build_model("resnet18", (28, 28, 1), tiny_data.num_classes, width=0.0625)
  from ldjax.models.costs import stage_costs
  shape = stage_costs(model, (28, 28, 1))[first["stage_range"][1] - 1].output_shape
  assert first["views"] == 3
  assert first["bytes"] == 3 * len(tiny_data.x_train) * int(np.prod(shape)) * 4
  # Before the first decision all strategies see fresh views: the first decision agrees
  # with the window store's run, whose draws are the same until then.
  assert drop["drop_events"][0] == runs["window", "drop"][0]["drop_events"][0]


def test_crop_is_recorded_as_approximate_and_costs_its_bytes(runs, tiny_data):
  (freeze, _), (drop, d_recs) = runs["flip,crop", "freeze"], runs["window", "drop"]
  assert drop["drop_events"][0] == freeze["drop_events"][0]   # decided before any store read
  first = next(r for r in d_recs if r["store"])
  stop = first["store"]["stage_range"][1]
  assert first["augment"]["crop"].startswith("approximate")
  assert all("crop" in r["augment"] for r in d_recs if r["stored_stages"] > 0)
  # Both views of the padded image (28 + 2 x 2 = 32) of every training image.
  model = build_model("resnet18", (32, 32, 1), tiny_data.num_classes, width=0.0625)
  from ldjax.models.costs import stage_costs
  shape = stage_costs(model, (32, 32, 1))[stop - 1].output_shape
  assert first["store"]["bytes"] == 2 * len(tiny_data.x_train) * int(np.prod(shape)) * 4
  # The crop approximation changes the weights; the head still learns.
  assert drop["test_accuracy"] > 20
