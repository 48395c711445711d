"""A Config refuses every bad numeric setting when it is made, in one line naming the
setting by its dotted path; the command line names the flag."""

import math

import pytest

from ldjax import run
from ldjax.errors import UsageError
from ldjax.runs.config import FIELDS, TrainConfig

NAN, INF = math.nan, math.inf

# The dotted path each flat name's errors use.
FLAGS = {
    "width": "model.width", "epochs": "run.epochs", "warmup": "drop.warmup",
    "batch_size": "run.batch_size", "lr": "optim.lr", "lr_decay_epoch": "optim.lr_decay_epoch",
    "lr_decay_factor": "optim.lr_decay_factor", "momentum": "optim.momentum",
    "seed": "run.seed", "eval_batch_size": "eval.batch_size", "eval_every": "eval.every",
    "feature_memory_gb": "store.memory_gb", "train_size": "data.train_size",
    "test_size": "data.test_size", "weight_decay": "optim.weight_decay",
    "warmup_lr_epochs": "optim.warmup_lr_epochs", "label_smoothing": "optim.label_smoothing",
    "crop_pad": "augment.crop_pad", "val_size": "data.val_size", "devices": "run.devices",
    "max_batch_size": "adaptive.max_batch_size", "data_shards": "data.shards",
    "crop_views": "augment.crop_views", "budget": "budget.reference_epochs",
    "reader_threads": "run.reader_threads", "device_memory_gb": "store.device_memory_gb",
}

NON_FINITE = (NAN, INF, -INF)
BAD = {
    "width": (*NON_FINITE, 0.0, 0, -0.5, -1, True, "1.0", None),
    "lr": (*NON_FINITE, 0.0, 0, -0.001, -1, True, None),
    "lr_decay_factor": (*NON_FINITE, 0.0, -0.1, 1.5, 2, True),
    "momentum": (*NON_FINITE, -0.5, -1e-9, 1.0, 1, 1.5, True),
    "feature_memory_gb": (*NON_FINITE, -0.5, -1, True, None),
    "epochs": (0, -1, 2.0, NAN, INF, True, None),
    "warmup": (-1, -5, 1.0, NAN, True),
    "batch_size": (0, -1, 64.0, NAN, False, None),
    "lr_decay_epoch": (0, -1, 20.0, NAN, INF, True),
    "seed": (-1, -100, 0.0, 1.5, NAN, True, None),
    "eval_batch_size": (0, -1, 250.0, NAN, True),
    "eval_every": (0, -1, 1.0, INF, True),
    "train_size": (0, -1, 100.0, NAN, True),
    "test_size": (0, -1, 10.0, INF, True),
    "weight_decay": (*NON_FINITE, -1e-4, -1, True, None),
    "warmup_lr_epochs": (-1, 60, 61, 1.0, NAN, True, None),   # epochs is 60
    "label_smoothing": (*NON_FINITE, -0.1, 1.0, 1, 1.5, True, None),
    "crop_pad": (0, -1, 2.0, NAN, True),
    "val_size": (0, -1, 100.0, NAN, True),
    "devices": (0, -1, 2.0, NAN, True, "2"),
    "max_batch_size": (0, -1, 255, 512.0, NAN, True),   # below the batch (256) too
    "data_shards": (0, -1, 2.0, NAN, True, "2"),
    "crop_views": (0, -1, 2.0, NAN, True, "2"),
    "budget": (*NON_FINITE, 0.0, 0, -1, 0.5, True, "4"),   # under one reference epoch too
    "reader_threads": (-1, 2.0, NAN, True, "2"),
    "device_memory_gb": (*NON_FINITE, -0.5, -1, True, "1"),
}
# folder:DIR settings (ldjax.data.folder)
FLAGS |= {"image_size": "folder.image_size", "channels": "folder.channels",
          "test_fraction": "folder.test_fraction"}
BAD |= {"image_size": ((0, 8), (8,), (8, 8, 3), (-1, 8), (8.0, 8), (True, 8), "28", 28),
        "channels": (0, 2, 4, 3.0, True, "3"),
        "test_fraction": (*NON_FINITE, 0, 0.0, 1, 1.0, -0.1, True)}
CASES = [(field, value) for field, values in BAD.items() for value in values]


def test_every_numeric_field_is_covered():
  numeric = {f.flat for f in FIELDS if f.type in (int, float, tuple)}
  assert numeric == set(BAD) == set(FLAGS)


def test_default_config_validates():
  TrainConfig()
  TrainConfig().check_data(num_train=10_000)


@pytest.mark.parametrize("field,value", [
    ("width", 2), ("lr", 1), ("momentum", 0), ("momentum", 0.0), ("lr_decay_factor", 1.0),
    ("feature_memory_gb", 0), ("feature_memory_gb", 0.0), ("warmup", 0), ("seed", 0),
    ("seed", 12345), ("lr_decay_epoch", None), ("lr_decay_epoch", 20),
    ("train_size", None), ("train_size", 100), ("test_size", 1), ("epochs", 1),
    ("weight_decay", 0), ("weight_decay", 5e-4), ("label_smoothing", 0.0),
    ("label_smoothing", 0.99), ("warmup_lr_epochs", 59), ("crop_views", 1), ("budget", 1),
    ("budget", 7.5), ("crop_views", None), ("budget", None), ("device_memory_gb", None),
    ("device_memory_gb", 0), ("device_memory_gb", 0.25)])
def test_valid_values_pass(field, value):
  TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value", CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_bad_value_is_refused(field, value):
  with pytest.raises(UsageError) as info:
    TrainConfig(**{field: value})
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(FLAGS[field] + " must be"), message
  assert "got" in message


@pytest.mark.parametrize("field,value,match", [
    ("optimizer", "adam", "unknown optim.optimizer 'adam'; choose from sgd, nesterov, adamw"),
    ("schedule", "linear", "unknown optim.schedule 'linear'"),
    ("schedule", "step", "optim.schedule step needs optim.lr_decay_epoch"),
    ("augment", "rotate", "unknown augment.ops 'rotate'; choose from none, flip, crop, "
                          "flip,crop"),
])
def test_bad_names_are_refused(field, value, match):
  with pytest.raises(UsageError, match=match):
    TrainConfig(**{field: value})


def test_lr_decay_epoch_only_with_the_step_schedule():
  TrainConfig(lr_decay_epoch=20)                    # step, implied
  TrainConfig(lr_decay_epoch=20, schedule="step")
  assert TrainConfig(lr_decay_epoch=20).optim.schedule_name == "step"
  assert TrainConfig().optim.schedule_name == "constant"
  with pytest.raises(UsageError, match="only applies to optim.schedule step, not cosine"):
    TrainConfig(lr_decay_epoch=20, schedule="cosine")


def test_batch_larger_than_training_set():
  with pytest.raises(UsageError, match="run.batch_size 256 is larger than the training set"):
    TrainConfig(batch_size=256).check_data(num_train=100)


@pytest.mark.parametrize("argv,flag", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr=-inf"], "--lr"),
    (["--width", "nan"], "--width"), (["--feature-memory-gb", "nan"], "--feature-memory-gb"),
    (["--feature-memory-gb", "inf"], "--feature-memory-gb"), (["--momentum", "-0.5"], "--momentum"), (["--momentum=-0.5"], "--momentum"),
    (["--momentum", "nan"], "--momentum"), (["--seed", "-1"], "--seed"),
    (["--train-size", "0"], "--train-size"), (["--test-size", "-3"], "--test-size"),
    (["--eval-every", "0"], "--eval-every"), (["--weight-decay=-1e-4"], "--weight-decay"),
    (["--label-smoothing", "1"], "--label-smoothing"), (["--label-smoothing", "nan"],
                                                        "--label-smoothing"),
    (["--warmup-lr-epochs", "8"], "--warmup-lr-epochs"),
    (["--optimizer", "adam"], "--optimizer"), (["--schedule", "linear"], "--schedule"),
    (["--recipe", "fast"], "--recipe"), (["--schedule", "step"], "--schedule"),
    (["--optimizer", "nesterov", "--momentum", "0"], "--optimizer"),
    (["--augment", "rotate"], "--augment"), (["--augment", "crop", "--crop-pad", "28"],
                                             "--crop-pad"),
    (["--augment", "crop", "--crop-pad", "0"], "--crop-pad"),
    # argparse's own refusals are one line too (ldjax.cli).
    (["--cut-rule", "first"], "--cut-rule"), (["--feature-dtype", "f16"], "--feature-dtype"),
    (["--lr", "fast"], "--lr"), (["--epochs", "2.5"], "--epochs"),
    (["--val-size", "6000"], "--val-size"), (["--val-size", "5900"], "--val-size"),
    (["--val-size", "0"], "--val-size"), (["--precision", "fp16"], "--precision"),
    (["--devices", "0"], "--devices"), (["--devices", "-1"], "--devices"),
    (["--devices", "64"], "--devices"), (["--devices", "1.5"], "--devices"),
    (["--drop-at", "2:x"], "--drop-at"), (["--drop-at", "3:2,2:4"], "--drop-at"),
    (["--drop-at", "2:9", "--epochs", "3"], "--drop-at"),
    (["--budget", "0"], "--budget"), (["--budget", "nan"], "--budget"),
    (["--budget", "0.5"], "--budget"), (["--budget", "-inf"], "--budget"),
    (["--budget", "2", "--warmup", "2"], "--budget"),
    (["--crop-views", "0"], "--crop-views"), (["--crop-store", "exact"], "--crop-store"),
    (["--decision-rule", "robust"], "--decision-rule")])
def test_cli_refuses_bad_numbers_before_writing(argv, flag, tmp_path, capsys):
  workdir = tmp_path / "wd"
  code = run.main([*argv, "--workdir", str(workdir), "--no-progress",
                   "--compilation-cache", "off"])
  captured = capsys.readouterr()
  assert code == 2
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith("error: ") and flag in lines[0], lines[0]
  assert not workdir.exists()


def test_data_shards_must_divide_the_batch():
  TrainConfig(data_shards=4, batch_size=256)
  with pytest.raises(UsageError, match="run.batch_size 256 does not divide by data.shards 3"):
    TrainConfig(data_shards=3, batch_size=256)
