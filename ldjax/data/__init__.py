"""Datasets as uint8 arrays (`datasets`: embedded, tfds, idx:, npz:, folder:), the readers
of IDX files (`idx`), tfds array_record files (`tfds_source`) and folders of images
(`folder`, decoded by the policy of `images` into the memory-mapped cache of
`image_cache`), per-channel statistics (`stats`), and batch order (`batching`).

Imports nothing from the rest of ldjax but `ldjax.errors`.
"""

from ldjax.data.datasets import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
