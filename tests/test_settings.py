"""Settings in groups (`ldjax.runs.config.Config`), config files, presets, `--set`, and the
generated command line (issue 29, items 1-3).

Each group checks itself in dotted names; the command line maps them to its flags. A
run's config.json loads back with --config and reproduces the run. Bad files, bad
assignments and misspelled or abbreviated flags are one line, exit status 2, and
nothing written.
"""

import contextlib
import io
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from ldjax import run
from ldjax.errors import UsageError
from ldjax.runs import config
from ldjax.runs.config import Config, TrainConfig
from ldjax.train.optim import OptimSettings

TINY = ["--train-size", "256", "--test-size", "128", "--epochs", "3", "--warmup", "1",
        "--model", "vgg11", "--width", "0.0625", "--batch-size", "64", "--no-progress"]


def main(argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = run.main([str(a) for a in argv])
  return code, out.getvalue(), err.getvalue()


def refused(argv, *needles):
  """Runs the command line, which must refuse it in one line naming the needles."""
  code, out, err = main(argv)
  assert code == 2, (out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def args_of(argv):
  return run.build_parser().parse_args(argv)


# -- the groups ---------------------------------------------------------------------------

def test_flat_names_round_trip():
  for cfg in (Config(), TrainConfig(lr=0.05, model="resnet18", image_size=(32, 32),
                                    dataset="folder:x", drop_at="2:3", budget=4)):
    assert Config.from_flat(**cfg.flat()) == cfg
    assert Config.from_flat(**json.loads(json.dumps(cfg.flat()))) == cfg   # via config.json
  assert len(config.BY_FLAT) == len(config.FIELDS) == len(config.BY_PATH)


def test_a_group_checks_itself_in_dotted_names():
  with pytest.raises(UsageError, match=r"^optim\.lr must be a finite number > 0, got -1"):
    OptimSettings(lr=-1)
  assert OptimSettings(lr=1).lr == 1.0 and isinstance(OptimSettings(lr=1).lr, float)
  with pytest.raises(UsageError, match=r"unknown setting 'lrr'; did you mean lr\?"):
    TrainConfig(lrr=0.1)
  cfg = TrainConfig(epochs=3)
  assert cfg.replace(**{"optim.lr": 0.2}).optim.lr == cfg.replace(lr=0.2).optim.lr == 0.2
  with pytest.raises(UsageError, match="run.epochs must be"):
    cfg.replace(epochs=0)


def test_the_command_line_names_flags():
  assert config.flag_words("optim.lr must be > 0; see model.batch_norm") == (
      "--lr must be > 0; see --no-batch-norm")
  assert config.flag_words("ldjax.train.optim stays") == "ldjax.train.optim stays"


# -- config files, presets and --set --------------------------------------------------

def test_layers_preset_recipe_file_flags_set(tmp_path):
  f = tmp_path / "mine.toml"
  f.write_text('strategy = "sgd"\n[optim]\nlr = 0.3\nweight_decay = 1\n[model]\nname = "resnet18"\n'
               '[run]\nepochs = 7\n')
  args = args_of(["--recipe", "strong", "--config", str(f), "--epochs", "5",
                  "--set", "run.seed=3", "--set", "optim.schedule=none"])
  cfg = run.config_from_args(args)
  assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.name) == (0.3, 1.0, "resnet18")
  assert cfg.run.epochs == 5 and cfg.run.seed == 3   # flags over the file, --set last
  assert cfg.optim.schedule is None and cfg.optim.optimizer == "nesterov"   # the recipe
  assert cfg.drop.warmup == 2 and cfg.eval.batch_size == 250   # the embedded preset
  assert run.strategy_from_args(args) == "sgd"
  assert run.strategy_from_args(args_of(["--config", str(f), "--strategy", "drop"])) == "drop"


def test_presets_are_files_listed_by_the_command_line():
  code, out, _ = main(["--presets"])
  assert code == 0
  names = [line.split()[0] for line in out.strip().splitlines()]
  assert names == config.preset_names() == ["embedded", "paper-cifar10", "paper-imagenette",
                                             "paper-mnist", "strong"]
  assert config.preset_for("embedded") == dict(
      epochs=8, batch_size=128, model="resnet18", width=0.125, lr=0.01, warmup=2,
      eval_batch_size=250)
  assert config.recipe("strong") == dict(
      optimizer="nesterov", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
      lr_decay_epoch=None, warmup_lr_epochs=1, label_smoothing=0.1, feature_dtype="bfloat16")
  for name in names:   # each is a valid Config over the defaults
    Config.from_flat(**config.load_preset(name))
  cfg = run.config_from_args(args_of(["--dataset", "cifar10", "--config", "strong"]))
  assert cfg.optim.lr_decay_epoch is None and cfg.optim.lr == 0.05 and cfg.run.epochs == 60


def test_the_strong_recipe_stores_bfloat16_the_default_and_paper_presets_float32():
  # bfloat16 stores cost the strong recipe no measured accuracy
  # (experiments/results/store_dtype/); the paper's protocols keep float32.
  assert run.config_from_args(args_of(["--recipe", "strong"])).store.dtype == "bfloat16"
  assert run.config_from_args(args_of(["--config", "strong"])).store.dtype == "bfloat16"
  assert run.config_from_args(args_of(
      ["--recipe", "strong", "--feature-dtype", "float32"])).store.dtype == "float32"
  assert run.config_from_args(args_of([])).store.dtype == "float32"
  for name in config.preset_names():
    if name != "strong":
      assert Config.from_flat(**config.load_preset(name)).store.dtype == "float32", name


@pytest.mark.parametrize("text, needles", [
    ("[optim]\nlrr = 0.1\n", ["unknown key optim.lrr", "did you mean optim.lr?"]),
    ("[optimizer]\nlr = 0.1\n", ["unknown table 'optimizer'", "did you mean optim?"]),
    ("lr = 0.1\n", ["unknown table 'lr'", "put it in the [optim] table"]),
    ("[optim]\nlr = \"fast\"\n", ["--lr must be a finite number > 0, got 'fast'"]),
    ("[run]\nseed = 2.5\n", ["--seed must be an integer >= 0, got 2.5"]),
    ("[optim\nlr = 0.1\n", ["is not valid TOML"]),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, needles):
  f = tmp_path / "bad.toml"
  f.write_text(text)
  wd = tmp_path / "wd"
  refused(["--config", f, "--workdir", wd, *TINY], *needles)
  assert not wd.exists()


def test_a_missing_or_unknown_config_is_one_line(tmp_path):
  wd = tmp_path / "wd"
  refused(["--config", tmp_path / "none.toml", "--workdir", wd], "does not exist")
  refused(["--config", "strnog", "--workdir", wd], "unknown preset 'strnog'",
          "did you mean strong?")
  (tmp_path / "c.json").write_text('{"lr": 0.1, "lerning_rate": 2}')
  refused(["--config", tmp_path / "c.json", "--workdir", wd], "unknown key 'lerning_rate'")
  (tmp_path / "d.json").write_text("[1, 2]")
  refused(["--config", tmp_path / "d.json", "--workdir", wd], "JSON object")
  assert not wd.exists()


@pytest.mark.parametrize("assignment, needles", [
    ("optim.lrr=0.1", ["unknown setting 'optim.lrr'", "did you mean optim.lr?"]),
    ("lr=0.1", ["unknown setting 'lr'", "did you mean optim.lr?"]),
    ("optim.lr=fast", ["optim.lr must be a number, got 'fast'"]),
    ("run.epochs=2.5", ["run.epochs must be an integer, got '2.5'"]),
    ("optim.lr", ["must be PATH=VALUE"]),
    ("eval.test_every_epoch=maybe", ["must be true or false"]),
])
def test_a_bad_set_is_one_line(tmp_path, assignment, needles):
  wd = tmp_path / "wd"
  refused(["--set", assignment, "--workdir", wd, *TINY], *needles)
  assert not wd.exists()


def test_set_parses_by_the_fields_type():
  assert config.parse_set("folder.image_size=32,48") == ("image_size", (32, 48))
  assert config.parse_set("run.devices=none") == ("devices", None)
  assert config.parse_set("eval.test_every_epoch=true") == ("test_every_epoch", True)
  assert config.parse_set("model.name=resnet18") == ("model", "resnet18")


# -- the command line ----------------------------------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["--epoch", "3"], ["unknown flag --epoch", "did you mean --epochs?"]),
    (["--batchsize", "3"], ["unknown flag --batchsize", "did you mean --batch-size?"]),
    (["--warm", "3"], ["unknown flag --warm"]),
])
def test_flags_are_never_abbreviated(tmp_path, argv, needles):
  wd = tmp_path / "wd"
  refused([*argv, "--workdir", wd], *needles)
  assert not wd.exists()


def test_short_help_and_help_all():
  code, short, _ = main(["--help"])
  assert code == 0
  flags = [line.split()[0].rstrip(",") for line in short.splitlines()
           if line.startswith("  -")]
  assert 15 <= len(flags) <= 27, flags
  assert "--help-all" in short and "--set GROUP.NAME=VALUE" in short and "--crop-views" not in short
  assert "optim: the optimizer" in short   # grouped as the settings are
  code, full, _ = main(["--help-all"])
  every = {o for a in run.build_parser()._actions for o in a.option_strings}
  assert code == 0 and all(flag in full for flag in every)


def test_nothing_is_left_behind_by_a_bad_start(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = main(["--init-from", "x.pth", *TINY])
  assert code == 2 and "x.pth" in err
  assert list(tmp_path.iterdir()) == []   # no runs/ folder either


# -- a run's config.json reproduces the run ---------------------------------------------

def test_config_json_reproduces_the_run(tmp_path):
  first, again = tmp_path / "first", tmp_path / "again"
  code, _, err = main([*TINY, "--strategy", "sgd,drop", "--drop-at", "1:2",
                       "--augment", "flip,crop", "--workdir", first])
  assert code == 0, err
  code, _, err = main(["--config", first / "drop" / "config.json", "--no-progress",
                       "--workdir", again])
  assert code == 0, err
  written = [json.loads((d / "config.json").read_text()) for d in (first / "drop", again)]
  for w in written:
    w.pop("git_revision")
    w.pop("strategies")
  assert written[0] == written[1]
  a, b = (load_file(str(d / "weights.safetensors")) for d in (first / "drop", again))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  summaries = [json.loads((d / "summary.json").read_text()) for d in (first / "drop", again)]
  assert summaries[0]["drop_events"] == summaries[1]["drop_events"] != []
