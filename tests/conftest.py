"""Shared fixtures: a small, deterministic subset of the embedded Fashion-MNIST data.

544 training images are 8 full batches of 64 plus 32 left over, so every epoch
skips some examples (a new store must hold them all) and the extraction's last
batch is incomplete.

Most of the suite's time is XLA compiling small programs, so the tests
- compile at XLA:CPU's backend optimization level 0 (`XLA_FLAGS`, set here
  before JAX creates its CPU client and inherited by the subprocesses the tests
  start): it compiles in about 3/4 of the time and runs these tiny networks as
  fast;
- keep every compiled program in one persistent compilation cache for the
  session (`ldjax.runs.compile_cache`), in this process and in subprocesses:
  `python -m ldjax.run` reads `$LDJAX_COMPILATION_CACHE` (its default for
  --compilation-cache), the job runners of test_resume.py read JAX's own
  variable. Tests that train the same programs again (another strategy's
  whole-model step, a rerun, a resume) load them instead of compiling.

Work done in subprocesses starts early (`early`): a module that defines
`start_early(early, tmp_path_factory)` has it called when the session starts,
one module after another in a background thread, so that its processes use the
second core while this process compiles on one; its fixtures wait for the
results, and its tests run after the other modules' (which gives that work the
whole session). `LDJAX_TESTS_EARLY=0` keeps the files' order and starts each
module's work when its tests come.
"""

import os
import threading

OPT_LEVEL_0 = "--xla_backend_optimization_level=0"
if OPT_LEVEL_0 not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL_0}".strip()

import pytest  # noqa: E402

from ldjax.data.datasets import load_dataset  # noqa: E402
from ldjax.runs import compile_cache  # noqa: E402

TRAIN_SIZE, TEST_SIZE = 544, 256


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("xla_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(compile_cache.ENV, str(path))
    with compile_cache.using(path):
      yield path


@pytest.fixture(scope="session")
def tiny_data():
  return load_dataset("embedded", train_size=TRAIN_SIZE, test_size=TEST_SIZE)


# -- work started early, in threads -------------------------------------------------------

def early_work_on() -> bool:
  return os.environ.get("LDJAX_TESTS_EARLY", "1") != "0"


def pytest_collection_modifyitems(session, config, items):
  """The tests of modules with `start_early` after the others (each group in file order)."""
  if early_work_on():
    late = [hasattr(getattr(item, "module", None), "start_early") for item in items]
    items[:] = ([i for i, x in zip(items, late) if not x]
                + [i for i, x in zip(items, late) if x])


class Background:
  """fn(*args) in a thread; `result()` joins it and returns or re-raises."""

  def __init__(self, fn, *args):
    self.box = {}
    self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
    self.thread.start()

  def _run(self, fn, args):
    try:
      self.box["value"] = fn(*args)
    except BaseException as e:   # re-raised by result()
      self.box["error"] = e

  def result(self):
    self.thread.join()
    if "error" in self.box:
      raise self.box["error"]
    return self.box["value"]


class Early:
  """`start(key, fn, *args)`: fn(*args) in a `Background` thread, started once per session.

  `env`: the environment as the session started, for the subprocesses such work starts
  (a test in this process may patch `os.environ` meanwhile, as test_compile_cache.py does).
  """

  def __init__(self, env: dict):
    self.started, self.lock, self.env = {}, threading.Lock(), dict(env)
    self.cleanups = []

  def at_end(self, fn) -> None:
    """Calls fn() when the session ends (after every test and the work started here)."""
    self.cleanups.append(fn)

  def start(self, key, fn, *args) -> Background:
    with self.lock:
      if key not in self.started:
        self.started[key] = Background(fn, *args)
      return self.started[key]


@pytest.fixture(scope="session")
def early(compilation_cache_dir):
  return Early(os.environ)


@pytest.fixture(scope="session", autouse=True)
def start_early_work(request, early, tmp_path_factory):
  """Calls each selected module's `start_early` in turn, in a thread (see the docstring)."""
  starts = []
  for item in request.session.items:
    start = getattr(item.module, "start_early", None)
    if start is not None and start not in starts:
      starts.append(start)
  stop = threading.Event()

  def one_after_another():
    for start in starts:
      if stop.is_set():
        return
      try:
        start(early, tmp_path_factory).result()
      except BaseException:   # pylint: disable=broad-except
        pass   # the module's fixture gets the same error
  lane = None
  if starts and early_work_on():
    lane = threading.Thread(target=one_after_another, daemon=True)
    lane.start()
  yield
  stop.set()
  if lane is not None:
    lane.join()   # what is running ends (each subprocess has a timeout) before the session does
  for fn in reversed(early.cleanups):
    fn()
