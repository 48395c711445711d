"""Running several strategies side by side from the same initial weights.

`run_strategies` loads the data and builds the model once, initialises the
weights once, and trains each strategy from those same weights with the same
seed and data order, each into its own run directory; then it writes the
comparison table (`ldjax.reporting.comparison`) and the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jax

from ldjax.data.batching import Blocks
from ldjax.data.datasets import Dataset, keep_train_block, load_dataset, with_validation
from ldjax.errors import UsageError
from ldjax.jsonio import read_json, write_json_atomic
from ldjax.models.staged import StagedModel
from ldjax.models.zoo import build_model
from ldjax.runs import cluster, compile_cache
from ldjax.runs.config import Config
from ldjax.runs.workdir import RunDir
from ldjax.train import assembly, budget, continuation, evaluation
from ldjax.train.continuation import Start
from ldjax.train.fit import Hooks, fit
from ldjax.weights import init_from


def prepare(cfg: Config, strategies: Sequence[str], *, progress: bool = False,
            log=None) -> tuple[Dataset, StagedModel]:
  """Loads the data and builds the model; raises UsageError before anything is written.
  `progress`, `log`: a bar while a folder's images decode, and a printer of what it holds.

  With several processes each keeps only its blocks of the training set
  (`ldjax.data.batching.Blocks`), after the validation split is held out."""
  data = load_dataset(cfg.data.name, data_dir=cfg.data.dir, train_size=cfg.data.train_size,
                      test_size=cfg.data.test_size, folder=cfg.folder, progress=progress,
                      log=log)
  if data.x_val is not None and cfg.data.val_size:
    raise UsageError(f"{data.name} has a validation split (val/); drop data.val_size")
  cfg.check_data(len(data.x_train), data.image_shape)
  cfg.check_strategies(strategies)
  if jax.process_count() > 1:
    data = with_validation(data, cfg.data.val_size)
    blocks = Blocks.here(len(data.x_train), cfg.data.shards)
    blocks.check_batch(cfg.run.batch_size)
    data = keep_train_block(data, blocks.start, blocks.stop)
  model = build_model(cfg.model.name, data.image_shape, data.num_classes, width=cfg.model.width,
                      batch_norm=cfg.model.batch_norm)
  if cfg.budget.cost_table not in budget.SOURCES:   # a file: for this model and store layout
    view = cfg.augment.for_images(data.image_shape).view_shape(data.image_shape)
    budget.load_table(cfg.budget.cost_table).check_for(model.name, model.stage_names, model.num_conv,
                                                data.image_shape, view, cfg.budget.cost_table)
  return data, model


def run_strategies(cfg: Config, strategies: Sequence[str], workdir: str | Path, *,
                   data: Dataset | None = None, model: StagedModel | None = None,
                   progress: bool = True, resume: bool = False, should_stop=None,
                   log=print) -> dict:
  """Trains each strategy from the same initial weights; returns {strategy: summary}.

  The initial weights are `model.init` with `cfg.run.seed`, or `cfg.start.init_from`'s
  (`ldjax.weights`); with `cfg.start.continue_from` each strategy starts where that
  run's strategy ended, its dropped stages still dropped
  (`ldjax.train.continuation`). With `resume`,
  strategies whose run is complete are read back, and the others continue
  from their last checkpoint. With JAX's compilation cache on
  (`ldjax.compile_cache`), the whole-model step is compiled into it before
  the first strategy, so that every strategy loads it (see `warm_cache`).
  """
  if data is None or model is None:
    data, model = prepare(cfg, strategies)
  cfg = cfg.resolved()   # config.json records the device count used
  workdir = Path(workdir)
  variables, norm = initial_variables(model, data, cfg, log)
  starts = {s: Start(variables, normalization=norm) for s in strategies}
  if cfg.start.continue_from is not None:
    starts = continuation.starts_from(cfg.start, cfg.model, strategies, model, data, variables)
    for s, start in starts.items():
      log(f"{s}: continues {start.source} (trained on {', '.join(start.data_seen)}), "
          f"{start.drop.cut if start.drop else 0} stages dropped")
  if any(start.normalization for start in starts.values()):
    data = with_validation(data, cfg.data.val_size)   # first: it recomputes mean and std
    data = continuation.with_normalization(data, starts)
  if cfg.budget.reference_epochs is not None and cfg.budget.cost_table == "measure":
    cfg = shared_cost_table(cfg, model, data, variables, workdir, resume, log)
  if len(strategies) > 1 and compile_cache.enabled():
    log(f"compiled the whole-model step into the compilation cache in "
        f"{warm_cache(model, data, cfg, variables):.1f} s (outside every strategy's T)")
  summaries = {}
  for strategy in strategies:
    run_dir = RunDir(workdir / strategy if len(strategies) > 1 else workdir,
                     tensorboard=cfg.run.tensorboard)
    if resume and (run_dir.path / "summary.json").exists():
      summaries[strategy] = read_json(run_dir.path / "summary.json")
      log(f"{strategy}: already complete")
      continue
    if not (resume and (run_dir.path / "config.json").exists()):
      run_dir.write_config(cfg, strategy=strategy, strategies=list(strategies),
                           model_name=model.name, stage_names=list(model.stage_names),
                           num_train=data.num_train, num_test=len(data.x_test),
                           image_shape=list(data.image_shape), num_classes=data.num_classes,
                           input_mean=list(data.mean), input_std=list(data.std),
                           class_names=data.class_names and list(data.class_names))
    summary = fit(model, data, cfg, strategy, start=starts[strategy], run_dir=run_dir,
                  resume=resume, hooks=Hooks(should_stop=should_stop, progress=progress))
    summary.pop("variables")
    summaries[strategy] = summary
    log(f"{strategy}: test accuracy {summary['test_accuracy']:.2f}%, "
        f"training time {summary['train_time_s']:.1f} s, drops {summary['drop_events']}")
  if len(strategies) > 1 and cluster.is_primary():   # comparison.md / .json (with time to
    # accuracy), figures, report; imported here: matplotlib costs every run's start-up
    from ldjax.reporting.report import report_comparison  # pylint: disable=g-import-not-at-top
    report_comparison(workdir)
  return summaries


def run_stream(cfg: Config, strategies: Sequence[str], chunks: Sequence[str],
               workdir: str | Path, *, first: tuple[Dataset, StagedModel] | None = None,
               progress: bool = True, resume: bool = False, should_stop=None,
               log=print) -> list[dict]:
  """Data that arrives in chunks: trains on each dataset of `chunks` in order, for
  `cfg.run.epochs` epochs each, every chunk a run continuing the previous chunk's
  (`cfg.start.continue_from` the run before the first, if set). Chunk k's runs are in
  `workdir/chunk-k`; `stream.json` lists the chunks. Returns each chunk's summaries.

  `first`: the first chunk's (data, model), if the caller has loaded them. With
  `resume`, finished chunks are read back and the chunk in flight continues
  from its last checkpoint; the stream must list the same chunks.
  """
  workdir = Path(workdir)
  stream_file = workdir / "stream.json"
  record = {"chunks": list(chunks), "strategies": list(strategies)}
  if resume and stream_file.exists() and read_json(stream_file) != record:
    raise UsageError(f"cannot resume: {stream_file} lists {read_json(stream_file)['chunks']}, "
                     f"this run {list(chunks)}; use the original --data-schedule")
  # Every chunk is loaded and checked before the first trains: a bad one is an error now.
  loaded = [first or prepare(cfg.replace(dataset=chunks[0]), strategies)]
  loaded += [prepare(cfg.replace(dataset=spec), strategies) for spec in chunks[1:]]
  for spec, (data, _) in zip(chunks[1:], loaded[1:]):
    if data.image_shape != loaded[0][0].image_shape:
      raise UsageError(f"--data-schedule chunk {spec!r} has {'x'.join(map(str, data.image_shape))}"
                       f" images, the first {'x'.join(map(str, loaded[0][0].image_shape))}; "
                       "every chunk needs the same image shape")
  workdir.mkdir(parents=True, exist_ok=True)
  if cluster.is_primary():
    write_json_atomic(stream_file, record)
  previous, out = cfg.start.continue_from, []
  for k, (spec, (data, model)) in enumerate(zip(chunks, loaded), 1):
    chunk_cfg = cfg.replace(dataset=spec, continue_from=previous,
                            init_from=cfg.start.init_from if k == 1 else None,
                            keep_classifier=cfg.start.keep_classifier if k == 1 else False)
    chunk_dir = workdir / f"chunk-{k}"
    log(f"chunk {k}/{len(chunks)}: {data.name}, {data.num_train} training images")
    out.append(run_strategies(chunk_cfg, strategies, chunk_dir, data=data, model=model,
                              progress=progress, resume=resume and chunk_dir.exists(),
                              should_stop=should_stop, log=log))
    previous = str(chunk_dir)
  return out


# The input normalization torchvision's and timm's ImageNet weights were trained with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def initial_variables(model: StagedModel, data: Dataset, cfg: Config,
                      log=print) -> tuple[list, tuple | None]:
  """(variables, input normalization): `model.init` with `cfg.run.seed`, or with
  `cfg.start.init_from`'s weights loaded into it, and then the (mean, std) those
  weights were trained with: an ldjax file's recorded one, ImageNet's for
  torchvision's and timm's weights on RGB data; None: the data's own."""
  variables = model.init(jax.random.key(cfg.run.seed), data.image_shape)
  if cfg.start.init_from is None:
    return variables, None
  variables, info = init_from(cfg.start.init_from, model, variables,
                              keep_classifier=cfg.start.keep_classifier,
                              width=cfg.model.width, image_shape=data.image_shape)
  meta = info.meta or {}
  norm = None
  if meta.get("input_mean") is not None:
    norm = (tuple(meta["input_mean"]), tuple(meta["input_std"]))
  elif info.format != "ldjax" and data.image_shape[-1] == 3:
    norm = (IMAGENET_MEAN, IMAGENET_STD)
  log(f"initial weights from {cfg.start.init_from}: {info}"
      + ("" if norm is None else f"; inputs normalized with their mean {norm[0]}, std {norm[1]}"))
  return variables, norm


def shared_cost_table(cfg: Config, model: StagedModel, data: Dataset, variables,
                      workdir: Path, resume: bool, log=print) -> Config:
  """`cfg` with `--cost-table measure` replaced by a table measured once, here, and
  written to the work directory (`budget.TABLE_FILE`), which every strategy reads;
  a resumed comparison reads the table it measured before."""
  path = workdir / budget.TABLE_FILE
  if not (resume and path.exists()):
    t0 = time.perf_counter()
    table = assembly.measured_table(model, data, cfg, variables)
    if cluster.is_primary():
      workdir.mkdir(parents=True, exist_ok=True)
      write_json_atomic(path, table.to_json())
    cluster.barrier("cost table written")
    log(f"measured the cost table in {time.perf_counter() - t0:.1f} s (outside every "
        f"strategy's T): {path}")
  return cfg.replace(cost_table=str(path))


def warm_cache(model: StagedModel, data: Dataset, cfg: Config, variables) -> float:
  """Compiles the first epoch's step and the evaluation once; returns seconds.

  All strategies start with these programs. With the cache on, the first
  strategy to compile them would pay a compile that the later ones only
  load, which would flatter their T against it; compiled here, outside every
  run, each strategy's T includes the same load.
  """
  t0 = time.perf_counter()
  programs = assembly.programs_for(model, data, cfg, variables)
  _, _, programs = assembly.costs_for(model, cfg, programs)
  evaluation.evaluators(programs.net, data, variables, batch_size=cfg.eval.batch_size,
                        memory_bytes=cfg.store.memory_bytes)
  programs.step(0, 0)
  return time.perf_counter() - t0
