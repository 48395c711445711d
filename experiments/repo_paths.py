"""Paths and command lines as the experiments' results record them.

Committed results must name commands anyone can run from a clone: a script
that writes a command line or a path into its results passes it through
`command` or `rel` here, so that `CLONE/experiments/cpu_speed.py` (CLONE: the
clone's absolute path) is written `experiments/cpu_speed.py` (relative to the
repository root, where the scripts are run from), a path under the home
directory `~/...`, and a path outside both (`/usr/share/datasets/fashion-mnist`,
a `/tmp` work directory the user chose) as it was given.

Only what is written down changes; the scripts keep opening the paths they
were given.
"""

from __future__ import annotations

import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _inside(path: str, top: str) -> bool:
  return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def rel(path: str | os.PathLike, home: bool = True) -> str:
  """`path` relative to the repository root if it lies in the repository, `~/...` if under
  the home directory (and `home`), else unchanged. Relative paths are left alone (the
  scripts run from the repository root)."""
  path = os.fspath(path)
  if not os.path.isabs(path):
    return path
  real = os.path.realpath(path)
  if _inside(real, ROOT):
    return os.path.relpath(real, ROOT)
  top = os.path.realpath(os.path.expanduser("~"))
  if home and top != os.sep and _inside(real, top):
    return os.path.join("~", os.path.relpath(real, top))
  return path


def arg(word: str) -> str:
  """One command-line word with its path written by `rel`: a path, `--flag=PATH`, or a
  dataset spec `KIND:PATH` (`npz:CLONE/x.npz`). A path inside a word keeps the home
  directory spelled out, since a shell expands `~` only at a word's start."""
  for sep in ("=", ":"):
    head, found, tail = word.partition(sep)
    if found and os.path.isabs(tail) and not os.path.isabs(head):
      return head + sep + rel(tail, home=False)
  return rel(word)


def _quote(word: str) -> str:
  return "~/" + shlex.quote(word[2:]) if word.startswith("~/") else shlex.quote(word)


def command(words: list[str]) -> str:
  """A shell line from `words`: this interpreter written `python`, every path by `arg`."""
  return " ".join("python" if w == sys.executable else _quote(arg(w)) for w in words)


def tree(obj):
  """A JSON-like value with every string that is a path (or holds one, as `arg` reads
  it) written by `arg`: a config dict as results record it."""
  if isinstance(obj, str):
    return arg(obj)
  if isinstance(obj, dict):
    return {k: tree(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [tree(v) for v in obj]
  return obj
