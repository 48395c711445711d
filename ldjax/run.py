"""Command line: train with SGD, Freeze or Learn & Drop, or compare them side by side.

  python -m ldjax.run                                    # sgd,drop on the embedded data
  python -m ldjax.run --dataset idx:/usr/share/datasets/fashion-mnist \\
      --model vgg11 --width 0.25 --strategy sgd,freeze,drop --workdir runs/fm

Settings start from the dataset's preset (the paper's protocol, Section 4.2,
or a CPU-sized default for the embedded data); every flag overrides it. A
thin layer over `ldjax.train.compare.run_strategies`: bad input is reported in one
line with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from ldjax import cli, settings
from ldjax.errors import DISK_FULL, CheckpointError, Interrupted, TrainingDiverged, UsageError
from ldjax.jsonio import read_json
from ldjax.runs import cluster, compile_cache
from ldjax.runs.checkpoint import mount_point
from ldjax.runs import config
from ldjax.runs.config import RECIPES, Config
from ldjax.runs.workdir import ensure_writable
from ldjax.strategy import NAMES as STRATEGIES, Strategy
from ldjax.train import compare
from ldjax.train.continuation import run_path_for, stream_chunks

DEFAULT_STRATEGIES = "sgd,drop"


COMMON_HELP = """\
{n} more flags: --help-all lists every flag, docs/reference.md every setting;
any setting is also --set GROUP.NAME=VALUE (e.g. --set optim.lr=0.05), or a key of
a --config file. Unset settings come from the dataset's preset, then --recipe, then
the --config files, then the flags, then --set."""


def build_parser(full: bool = True) -> argparse.ArgumentParser:
  """The command line: the flags of the run itself, then one flag per setting, grouped
  as the settings are (`ldjax.runs.config`). Without `full` the settings that are not
  common are hidden from `--help` (still accepted)."""
  p = cli.ArgumentParser(
      prog="python -m ldjax.run", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
  hidden = 0
  g = p.add_argument_group("command", "what to run, from which settings, and where")
  a = g.add_argument
  a("-h", "--help", action="store_true", help="show the common flags and exit")
  a("--help-all", action="store_true", help="show every flag and exit")
  a("--strategy", default=None,
    help=f"one of {', '.join(STRATEGIES)}, or a comma list to run several from the same "
         "initial weights and write a comparison table (default: the --config file's, else "
         f"{DEFAULT_STRATEGIES})")
  a("--config", action="append", default=[], metavar="FILE|PRESET",
    help="settings from a TOML file (tables named as the groups: [optim] lr = 0.05), a "
         "run's config.json (reproduces that run), or a preset's name (--presets); "
         "repeatable, later files win")
  a("--set", action="append", default=[], metavar="GROUP.NAME=VALUE", dest="assignments",
    help="set any setting, e.g. --set optim.lr=0.05 (repeatable; applied last)")
  a("--presets", action="store_true", help="list the presets shipped with ldjax and exit")
  a("--recipe", default="paper",
    help=f"training recipe under the flags: {', '.join(RECIPES)}. paper: the paper's protocol "
         "(the dataset's preset); strong: nesterov, lr 0.05, weight decay 5e-4, cosine schedule "
         "after a 1-epoch lr warm-up, label smoothing 0.1 (the preset 'strong') (default: paper)")
  a("--workdir", default=None,
    help="directory for config.json, metrics.jsonl, summary.json (one sub-directory "
         "per strategy when several); default runs/<dataset>-<model>-<time>")
  a("--overwrite", action="store_true", help="allow writing into a work directory that holds a run")
  a("--resume", action="store_true",
    help="continue the run in --workdir from its last checkpoint (same settings)")
  a("--no-progress", action="store_true", help="hide the progress bars")
  groups = {name: p.add_argument_group(f"{name}: {cls.TITLE}")
            for name, cls in config.GROUPS.items()}
  for f in config.FIELDS:
    show = full or f.common
    hidden += not show
    kw = dict(dest=f.flat, default=None, help=f.help if show else argparse.SUPPRESS)
    if f.type is bool:
      kw |= dict(action="store_const", const=not f.negate)
    else:
      kw |= dict(type=f.parse or {int: int, float: float}.get(f.type, str),
                 metavar=f.metavar or f.flat.upper())
    groups[f.group].add_argument(f.flag, **kw)
  g = p.add_argument_group("more of the run")
  for flag, kw in MORE_FLAGS:
    hidden += not full
    g.add_argument(flag, **(kw if full else kw | {"help": argparse.SUPPRESS}))
  p.epilog = None if full else COMMON_HELP.format(n=hidden)
  return p


MORE_FLAGS = [
    ("--data-schedule", dict(
        default=None, metavar="DATA,DATA,...",
        help="data that arrives in chunks: train on each dataset (as for --dataset; ';' "
             "separates them if a path has commas) in order, --epochs epochs each, each chunk "
             "continuing the previous chunk's run in WORKDIR/chunk-K (its dropped stages stay "
             "dropped, their features of each new chunk computed once); each chunk is tested "
             "on its own test set")),
    ("--coordinator", dict(
        default=None, metavar="HOST:PORT|auto",
        help="run as one process of several (hosts): process 0's address, the same in every "
             "process, with --num-processes and --process-id; 'auto' takes all three from a "
             "cluster manager JAX detects (SLURM, Open MPI, ...). Every process runs the same "
             "command; process 0 writes the work directory's files (docs: several hosts)")),
    ("--num-processes", dict(type=int, default=None, metavar="N",
                             help="with --coordinator HOST:PORT: how many processes the run has")),
    ("--process-id", dict(type=int, default=None, metavar="I",
                          help="with --coordinator HOST:PORT: this process's index, 0 to N-1 "
                               "(0 writes the files)")),
    ("--compilation-cache", dict(
        default=None, metavar="DIR",
        help="keep compiled XLA programs in DIR for later runs and strategies, which then load "
             f"them instead of compiling (default: ${compile_cache.ENV}, else "
             "~/.cache/ldjax/xla/<cpu>); 'off' compiles everything anew")),
    ("--reference", dict(action="store_true",
                         help="print the reference of every flag and setting as Markdown "
                              "(docs/reference.md) and exit")),
]


class InSettingsWords(UsageError):
  """A UsageError about a config file or a --set, which speak in dotted paths: shown as it
  is, not in flag words."""


def config_files(args: argparse.Namespace) -> list[tuple[dict, str | None]]:
  """(flat settings, strategies or None) of each --config: a file, or a preset's name."""
  try:
    return [config.load_file(c if Path(c).suffix in (".toml", ".json") or "/" in c
                             else config.preset_path(c)) for c in args.config]
  except UsageError as e:
    raise InSettingsWords(str(e)) from None


def assignments(args: argparse.Namespace) -> dict:
  """{flat name: value} of the --set assignments."""
  try:
    return dict(config.parse_set(a) for a in args.assignments)
  except UsageError as e:
    raise InSettingsWords(str(e)) from None


def strategy_from_args(args: argparse.Namespace) -> str:
  """--strategy, else the last --config file's strategies, else DEFAULT_STRATEGIES."""
  from_files = [s for _, s in config_files(args) if s]
  return args.strategy or (from_files[-1] if from_files else DEFAULT_STRATEGIES)


def config_from_args(args: argparse.Namespace) -> Config:
  """The run's Config from the command line: the dataset's preset, the recipe, the
  --config files, the flags, the --set assignments, each over the one before."""
  if args.recipe not in RECIPES:
    raise UsageError(f"unknown --recipe {args.recipe!r}; choose from {', '.join(RECIPES)}")
  given = {}
  for flat, _ in config_files(args):
    given |= flat
  given |= {f.flat: getattr(args, f.flat) for f in config.FIELDS
            if getattr(args, f.flat) is not None}
  given |= assignments(args)
  dataset = given.get("dataset") or "embedded"
  if args.data_schedule is not None:   # the first chunk's preset
    if "dataset" in given:
      raise UsageError("--data-schedule lists the datasets; drop --dataset")
    dataset = stream_chunks(args.data_schedule)[0]
  settings = config.preset_for(dataset) | config.recipe(args.recipe) | {"dataset": dataset}
  if given.get("continue_from") is not None:   # the architecture of the run it continues
    settings |= continued_architecture(given["continue_from"], strategy_from_args(args))
  return Config.from_flat(**(settings | given))


def continued_architecture(path: str, strategy: str) -> dict:
  """model, width and batch_norm of the run --continue-from names (for --strategy's
  first strategy); its other settings are the new run's."""
  first = Strategy.parse_list(strategy)[0]
  previous = read_json(run_path_for(path, first) / "config.json")
  return {k: previous[k] for k in ("model", "width", "batch_norm") if k in previous}


def default_workdir(cfg: Config) -> Path:
  tag = cfg.data.name.replace(":", "-").replace("/", "_").strip("_-")[-40:]
  return Path("runs") / f"{tag}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_workdir(path: Path, overwrite: bool, resume: bool) -> None:
  if path.exists() and not path.is_dir():
    raise UsageError(f"--workdir {str(path)!r} is a file; give a directory")
  if resume:
    if not path.is_dir():
      raise UsageError(f"--resume needs an existing --workdir; {str(path)!r} does not exist")
    return
  if path.is_dir() and any(path.rglob("metrics.jsonl")) and not overwrite:
    raise UsageError(f"work directory {str(path)!r} already holds a run; pass --resume to "
                     "continue it, --overwrite to replace it, or choose another --workdir")


def clear_run(path: Path) -> None:
  """Removes what a previous run wrote into `path` (for --overwrite)."""
  for child in (*STRATEGIES, "checkpoints", "features"):
    shutil.rmtree(path / child, ignore_errors=True)
  for events in path.glob("events.out.tfevents.*"):
    events.unlink()
  for name in ("config.json", "metrics.jsonl", "metrics.csv", "summary.json", "comparison.json",
               "comparison.md", "report.md", "report.json", "aapd.png", "scores.png",
               "accuracy_time.png", "params_macs.png"):
    (path / name).unlink(missing_ok=True)


def new_top(path: Path) -> Path:
  """The outermost directory of `path` that does not exist yet (what creating it makes)."""
  top = path
  while not top.parent.exists() and top.parent != top:
    top = top.parent
  return top


def reference() -> str:
  """docs/reference.md: every flag of `python -m ldjax.run` and every setting, generated
  from the parser and the settings' fields."""
  out = ["# `python -m ldjax.run`: every flag and setting", "",
         "Generated by `python -m ldjax.run --reference > docs/reference.md` from the settings' "
         "fields (`ldjax.runs.config`); a test keeps it equal to them. A setting is a flag, a "
         "key of a `--config` TOML file (`[GROUP]` table, `NAME = value`; `\"none\"` unsets "
         "an optional one), a `--set GROUP.NAME=VALUE`, and a key of config.json (its flat "
         "name). Settings marked * are in the short `--help`.", ""]
  out += ["## Flags of the run", "", "| flag | what it does |", "|---|---|"]
  for action in build_parser()._actions:
    if action.dest in config.BY_FLAT or not action.option_strings:
      continue
    out.append(f"| `{', '.join(action.option_strings)}` | {action.help} |")
  for name, cls in config.GROUPS.items():
    out += ["", f"## `{name}`: {cls.TITLE}", "", (cls.__doc__ or "").strip(), "",
            "| setting | flag | config.json | default | what it does |", "|---|---|---|---|---|"]
    for f in settings.fields_of(cls):
      star = "*" if f.common else ""
      out.append(f"| `{f.path}`{star} | `{f.flag}` | `{f.flat}` | `{f.default!r}` | "
                 f"{f.help} |")
  out += ["", "## Presets", "", "`--config NAME` (`python -m ldjax.run --presets`): files in "
          "`ldjax/presets/`.", "", "| preset | what it is |", "|---|---|"]
  out += [f"| `{n}` | {config.preset_summary(n)} |" for n in config.preset_names()]
  return "\n".join(out) + "\n"


@contextlib.contextmanager
def stop_on_sigint():
  """While active, Ctrl-C asks the run to stop at the next step instead of raising
  KeyboardInterrupt anywhere (a second Ctrl-C does raise it)."""
  flag = {"stop": False}

  def handler(signum, frame):
    if flag["stop"]:
      raise KeyboardInterrupt
    flag["stop"] = True
  try:
    previous = signal.signal(signal.SIGINT, handler)
  except ValueError:   # not the main thread: leave signals alone
    yield lambda: False
    return
  try:
    yield lambda: flag["stop"]
  finally:
    signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:   # a bad command line (2, one line printed)
    return int(e.code or 0)
  if args.help or args.help_all:
    print(build_parser(full=args.help_all).format_help())
    return 0
  if args.reference:
    print(reference(), end="")
    return 0
  if args.presets:
    for name in config.preset_names():
      print(f"{name:18} {config.preset_summary(name)}")
    return 0
  with contextlib.ExitStack() as outputs:
    return _main(args, argv, outputs)


def _main(args: argparse.Namespace, argv: list[str] | None, outputs: contextlib.ExitStack) -> int:
  created = None
  try:
    cluster.initialize(args.coordinator, args.num_processes, args.process_id)
    if not cluster.is_primary():   # process 0 reports; the others would repeat it
      outputs.enter_context(contextlib.redirect_stdout(io.StringIO()))
      args.no_progress = True
    if cluster.processes() > 1 and not args.workdir:
      raise UsageError("with several processes give --workdir, the same directory in each "
                       "(each process would pick its own default)")
    cfg = config_from_args(args)
    strategies = Strategy.parse_list(strategy_from_args(args))
    cfg = cfg.resolved()   # the devices it uses, as config.json records them
    cfg.check_strategies(strategies)
    if args.resume and not args.workdir:
      raise UsageError("--resume needs the --workdir of the run to continue")
    if args.resume and cfg.start.init_from:
      raise UsageError("--resume continues from the run's checkpoint; drop --init-from")
    chunks = None if args.data_schedule is None else stream_chunks(args.data_schedule)
    workdir = Path(args.workdir) if args.workdir else default_workdir(cfg)
    check_workdir(workdir, args.overwrite, args.resume)
    created = None if workdir.exists() or not cluster.is_primary() else new_top(workdir)
    cluster.barrier("workdir checked")   # by every process, before any creates it
    ensure_writable(workdir)   # before the slow part: loading data, building the model
    cache = compile_cache.resolve(args.compilation_cache)
    # JAX's cache setting is process-wide: `using` puts it back as it was on return.
    with compile_cache.using(cache):
      data, model = compare.prepare(cfg, strategies, progress=not args.no_progress, log=print)
      if args.overwrite and not args.resume and cluster.is_primary():
        clear_run(workdir)
      cluster.barrier("workdir cleared")
      print(f"ldjax: {model.name} (width {cfg.model.width}) on {data.name}: "
            f"{data.num_train} train / {len(data.x_test)} test images "
            f"{'x'.join(map(str, data.image_shape))}; strategies {','.join(strategies)}; "
            + (f"{cfg.run.epochs} epochs" if cfg.budget.reference_epochs is None else
               f"a budget of {cfg.budget.reference_epochs:g} reference epochs "
               f"({cfg.budget.cost_table} costs)")
            + f", warm-up {cfg.drop.warmup}; work directory {workdir}; "
            f"compilation cache {cache or 'off'}", flush=True)
      with stop_on_sigint() as should_stop:
        if chunks is None:
          summaries = compare.run_strategies(cfg, strategies, workdir, data=data, model=model,
                                             progress=not args.no_progress,
                                             resume=args.resume, should_stop=should_stop)
        else:
          summaries = compare.run_stream(cfg, strategies, chunks, workdir, first=(data, model),
                                         progress=not args.no_progress, resume=args.resume,
                                         should_stop=should_stop)[-1]
          workdir = workdir / f"chunk-{len(chunks)}"
  except UsageError as e:
    if created is not None and created.exists():
      shutil.rmtree(created, ignore_errors=True)
    words = str(e) if isinstance(e, InSettingsWords) else config.flag_words(str(e))
    print(f"error: {words}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:   # e.g. while images decode, or a second Ctrl-C in training
    if created is not None and created.is_dir() and not any(created.iterdir()):
      created.rmdir()   # only an empty work directory this run made; a run's files stay
    print("\ninterrupted", file=sys.stderr)
    return 130
  except Interrupted:
    again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    if not args.workdir:
      again += ["--workdir", str(workdir)]
    print(f"\ninterrupted: the last complete epoch is saved in {workdir}; resume with:\n"
          f"  python -m ldjax.run {shlex.join(again + ['--resume'])}", file=sys.stderr)
    return 130
  except TrainingDiverged as e:
    print(f"error: {config.flag_words(str(e))}", file=sys.stderr)
    return 1
  except CheckpointError as e:   # the last complete checkpoint is kept: --resume continues
    print(e, file=sys.stderr)
    return 1
  except OSError as e:           # another write (metrics, summary) on a full disk
    if e.errno not in DISK_FULL:
      raise
    where = mount_point(e.filename or args.workdir or ".")
    what = f"writing {e.filename} failed" if e.filename else "a write failed"
    print(f"no space left on {where}: {what}; free space and rerun with --resume",
          file=sys.stderr)
    return 1
  if not cluster.is_primary():   # it wrote nothing to report (and prints nothing)
    return 0
  if len(strategies) > 1:
    print((workdir / "comparison.md").read_text())
  else:
    s = summaries[strategies[0]]
    print(f"test accuracy {s['test_accuracy']:.2f}%  training time {s['train_time_s']:.1f} s")
  print(f"results in {workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
