"""Progress bars for long work (tqdm on stderr; silent when disabled)."""

from __future__ import annotations

import contextlib
import sys

from tqdm.auto import tqdm


@contextlib.contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "step"):
  """A tqdm bar over `total` units; a no-op object when `enabled` is False."""
  bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
             dynamic_ncols=True, leave=True)
  try:
    yield bar
  finally:
    bar.close()
