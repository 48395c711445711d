"""Shared fixtures: a small, deterministic subset of the embedded Fashion-MNIST data.

544 training images are 8 full batches of 64 plus 32 left over, so every epoch
skips some examples and a drop epoch has to extract them at its end.
"""

import pytest

from ldjax.data import load_dataset

TRAIN_SIZE, TEST_SIZE = 544, 256


@pytest.fixture(scope="session")
def tiny_data():
  return load_dataset("embedded", train_size=TRAIN_SIZE, test_size=TEST_SIZE)
