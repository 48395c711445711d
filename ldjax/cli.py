"""What the command-line faces (`run`, `summary`, `report`, `prepare`) share: a parser
whose errors are one line.

argparse prints its whole usage block before a bad flag's message; a user
then hunts for the one line that matters. This parser prints only
"error: MESSAGE (see --help)" and exits with status 2, as every other bad
input does.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
  """argparse.ArgumentParser with one-line errors (exit status 2)."""

  def error(self, message: str):
    sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
    sys.exit(2)
