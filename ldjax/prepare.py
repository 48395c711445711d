"""Downloads and prepares a TFDS dataset so that ldjax can read it offline.

Usage: python -m ldjax.prepare NAME [--data-dir DIR]

NAME is one of mnist, fashion_mnist, cifar10, imagenette/160px-v2. The
dataset is built with `download_and_prepare(file_format='array_record')`:
array_record files are what `tfds.data_source` reads by random access, which
is how `ldjax.data.load_dataset` reads TFDS data without TensorFlow. Building
them, however, needs TensorFlow (TFDS encodes the images with it) and
internet access, hence the optional `pip install 'ldjax[prepare]'`.
"""

import importlib.util
import sys

from ldjax import cli
from ldjax.data.datasets import KNOWN_TFDS
from ldjax.errors import UsageError

NEEDS_TF = "ldjax.prepare needs TensorFlow: pip install 'ldjax[prepare]'"


def _has_tensorflow() -> bool:
  # find_spec, not import: importing TensorFlow takes seconds and is only
  # needed (by tfds, internally) once preparation actually starts.
  return importlib.util.find_spec("tensorflow") is not None


def prepare(name: str, data_dir: str | None = None) -> str:
  """Prepares `name` as array_record in `data_dir`; returns its directory.

  Raises:
    UsageError: unknown name, TensorFlow missing, or the dataset already
      exists there in a format that ldjax cannot read.
  """
  if name not in KNOWN_TFDS:
    raise UsageError(f"unknown dataset {name!r}; choose one of "
                     f"{', '.join(KNOWN_TFDS)}")
  if not _has_tensorflow():
    raise UsageError(NEEDS_TF)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ldjax.data import tfds_source  # pylint: disable=g-import-not-at-top

  data_dir = tfds_source.resolve_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    # download_and_prepare returns early on existing data whatever its
    # format, so a tfrecord copy would never be converted; say so instead.
    found = tfds_source.non_array_record_formats(builder)
    if found is not None:
      raise UsageError(
          f"{builder.data_dir} already holds {name!r} as {found}, which "
          "ldjax cannot read without TensorFlow; delete that directory or "
          "use another --data-dir, then rerun")
    return str(builder.data_dir)
  builder.download_and_prepare(file_format="array_record")
  return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
  """Command line entry point; returns the process exit status."""
  parser = cli.ArgumentParser(
      prog="python -m ldjax.prepare",
      description="Download a TFDS dataset and write it as array_record "
      "files, the format ldjax reads without TensorFlow. Needs internet and "
      "TensorFlow (pip install 'ldjax[prepare]'); training does not.")
  parser.add_argument(
      "name", metavar="NAME",
      help="dataset to prepare: " + ", ".join(KNOWN_TFDS))
  parser.add_argument(
      "--data-dir", metavar="DIR", default=None,
      help="TFDS data directory to write into; pass the same directory to "
      "training. Default: $TFDS_DATA_DIR, else ~/tensorflow_datasets")
  args = parser.parse_args(argv)
  try:
    path = prepare(args.name, args.data_dir)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{args.name} is ready in {path} (array_record format)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
