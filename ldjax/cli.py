"""What the command-line faces (`run`, `summary`, `report`, `prepare`) share: a parser
whose errors are one line.

argparse prints its whole usage block before a bad flag's message; a user
then hunts for the one line that matters. This parser prints only
"error: MESSAGE (see --help)" and exits with status 2, as every other bad
input does. Abbreviated flags are refused (argparse would take `--epoch` for
`--epochs` silently), and an unknown flag is named with the closest known one.
"""

from __future__ import annotations

import argparse
import difflib
import sys


class ArgumentParser(argparse.ArgumentParser):
  """argparse.ArgumentParser with one-line errors (exit status 2), no abbreviations."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, allow_abbrev=False, **kwargs)

  def error(self, message: str):
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
      unknown = message[len(prefix):].split()
      flag = next((u for u in unknown if u.startswith("-")), unknown[0])
      name = flag.split("=", 1)[0]
      match = difflib.get_close_matches(name, list(self._option_string_actions), n=1,
                                        cutoff=0.6)
      message = f"unknown flag {name}" + (f"; did you mean {match[0]}?" if match else "") \
          if name.startswith("-") else message
    sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
    sys.exit(2)
