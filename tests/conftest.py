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
"""

import os

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
