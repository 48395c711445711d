"""Whether a directory can be written: the one probe the work directory and the image
cache share.

It creates the directory and writes and removes a probe file named by host and
process, since several processes (on several hosts) may probe at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def probe(path: Path) -> None:
  """Creates `path` and writes and removes a probe file in it; OSError if it cannot."""
  path.mkdir(parents=True, exist_ok=True)
  probe_file = path / f".ldjax_write_test-{socket.gethostname()}-{os.getpid()}"
  probe_file.write_text("ok")
  probe_file.unlink()
