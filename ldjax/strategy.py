"""The three training strategies of the paper, defined once.

- SGD: the whole model trains every epoch (the baseline).
- FREEZE ("Freezing"): after the warm-up the decision rule freezes a growing
  prefix of stages, which stays in the forward pass, not updated.
- DROP ("Dropping", Learn & Drop): the same decisions, but the prefix leaves
  the forward pass: its outputs are computed once, stored and read back.

A `Strategy` is a `str` enum, so it compares equal to its name ("drop"),
formats and serialises to JSON as the name, and `Strategy("drop")` parses one.
"""

from __future__ import annotations

import enum

from ldjax.errors import UsageError


class Strategy(enum.StrEnum):
  SGD = "sgd"
  FREEZE = "freeze"
  DROP = "drop"

  @property
  def display_name(self) -> str:
    """The paper's name (Tables 1/2 columns, figure legends)."""
    return {"sgd": "SGD", "freeze": "Freezing", "drop": "Dropping"}[self.value]

  @property
  def decides(self) -> bool:
    """Whether the decision rule runs after the warm-up (freeze and drop)."""
    return self is not Strategy.SGD

  @property
  def caches(self) -> bool:
    """Whether decided stages leave the forward pass for a feature store (drop)."""
    return self is Strategy.DROP

  @property
  def rank(self) -> int:
    """Position in the paper's order: SGD, Freezing, Dropping."""
    return list(Strategy).index(self)

  @classmethod
  def parse(cls, name) -> "Strategy":
    """The strategy called `name`; UsageError naming the choices otherwise."""
    try:
      return cls(name)
    except ValueError:
      raise UsageError(f"unknown strategy {name!r}; choose from {', '.join(NAMES)} "
                       "(a comma list runs several)") from None

  @classmethod
  def parse_list(cls, text: str) -> list["Strategy"]:
    """A comma list such as "sgd,drop"; UsageError if empty, unknown or repeated."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
      raise UsageError(f"--strategy is empty; give one of {', '.join(NAMES)} or a comma list")
    if len(set(names)) != len(names):
      raise UsageError(f"--strategy lists a strategy twice: {text!r}")
    return [cls.parse(n) for n in names]


NAMES = tuple(s.value for s in Strategy)


def display_name(name: str) -> str:
  """The paper's name of a strategy; any other name as it is (e.g. in a foreign run)."""
  return Strategy(name).display_name if name in NAMES else name


def rank(name: str) -> tuple[int, str]:
  """Sort key: the paper's order first, then anything else by name."""
  return (Strategy(name).rank if name in NAMES else len(NAMES), name)
