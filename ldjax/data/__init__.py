"""Datasets as in-memory uint8 arrays (`datasets`: embedded, tfds, idx:, npz:), the readers
of IDX files (`idx`) and tfds array_record files (`tfds_source`), and batch order (`batching`).

Imports nothing from the rest of ldjax but `ldjax.errors`.
"""

from ldjax.data.datasets import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
