"""JAX's persistent compilation cache, which `python -m ldjax.run` turns on.

XLA writes each compiled program to a directory, keyed by the program, its
shapes, the compile options and the jax/XLA version; compiling the same
program again loads it instead. SGD, Freeze and Drop compile the same
whole-model step for their first epochs, another seed compiles the very same
programs, and a resumed run recompiles what the killed one had: on this
2-core CPU a ResNet-18 step loads in ~0.5 s (tracing and lowering, which
always run) instead of compiling in ~3.5 s.

XLA:CPU compiles for the features of the CPU it runs on, so the default
directory is named after the host's CPU: a home directory shared by several
machines never hands one machine's code to another CPU.

`enable` and `disable` change JAX's process-wide configuration; the library
(`ldjax.fit`, `ldjax.run_strategies`) leaves it alone, and a notebook calls
`enable()` itself if it wants the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from ldjax.errors import UsageError

ENV = "LDJAX_COMPILATION_CACHE"   # a directory, or "off"; what --compilation-cache defaults to
OFF = "off"
# Programs that compile faster than this are not worth a file (JAX's default: 1 s).
MIN_COMPILE_SECONDS = 0.1


def host_tag(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
  """`machine-hash` of this host's CPU model and feature flags (of its first processor,
  from `cpuinfo`; what changes while it runs, such as the clock, is left out)."""
  cpu = ""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith(("model name", "flags", "Features", "CPU part")):
          cpu += line
        elif not line.strip() and cpu:   # the first processor is enough
          break
  except OSError:   # not Linux
    cpu = platform.processor()
  digest = hashlib.sha256(f"{platform.machine()}\n{cpu}".encode()).hexdigest()[:12]
  return f"{platform.machine() or 'cpu'}-{digest}"


def default_dir() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "ldjax" / "xla" / host_tag()


def resolve(value: str | None) -> Path | None:
  """The cache directory for a --compilation-cache value (None: $LDJAX_COMPILATION_CACHE,
  else the default directory); None when the value is "off"."""
  if value is None:
    value = os.environ.get(ENV) or str(default_dir())
  if value.strip().lower() == OFF:
    return None
  return Path(value).expanduser()


def enable(directory: str | os.PathLike | None = None) -> Path:
  """Turns the cache on in `directory` (default: `default_dir()`); returns it.

  Raises UsageError when the directory cannot be created or written.
  """
  path = Path(directory).expanduser() if directory is not None else default_dir()
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UsageError(f"cannot write the compilation cache in {str(path)!r} "
                     f"({e.strerror or e}); give a writable --compilation-cache "
                     f"directory or '{OFF}'") from None
  compilation_cache.reset_cache()   # JAX opens its cache once; a new directory needs a reset
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


def disable() -> None:
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()


@contextlib.contextmanager
def using(directory: str | os.PathLike | None):
  """The cache in `directory` (None: off) while the block runs; then as it was."""
  previous = jax.config.jax_compilation_cache_dir
  if directory is None:
    disable()
  else:
    enable(directory)
  try:
    yield
  finally:
    if previous:
      enable(previous)
    else:
      disable()


def enabled() -> bool:
  return bool(jax.config.jax_compilation_cache_dir) and jax.config.jax_enable_compilation_cache
