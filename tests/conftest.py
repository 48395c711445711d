"""Shared fixtures: a small, deterministic subset of the embedded Fashion-MNIST data.

544 training images are 8 full batches of 64 plus 32 left over, so every epoch
skips some examples (a new store must hold them all) and the extraction's last
batch is incomplete.

`python -m ldjax.run` keeps compiled programs in ~/.cache by default; the
tests' runs (in this process and in subprocesses, which inherit the
environment) use a directory of their own instead.
"""

import pytest

from ldjax.data.datasets import load_dataset
from ldjax.runs import compile_cache

TRAIN_SIZE, TEST_SIZE = 544, 256


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("xla_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(compile_cache.ENV, str(path))
    yield path


@pytest.fixture(scope="session")
def tiny_data():
  return load_dataset("embedded", train_size=TRAIN_SIZE, test_size=TEST_SIZE)
