"""Typed settings: frozen groups of fields that carry their help and check themselves.

A settings group is a frozen dataclass built with `group(NAME)` whose fields
are made with `setting(default, help, ...)`, and which lives in the module that
uses it (`ldjax.train.optim.OptimSettings`, ...). A group checks its own values
when it is made, in the library's words: a setting is named by its dotted path
(`optim.lr`), never by a command-line flag; the command line maps paths to its
flags (`flag_words`). `ldjax.runs.config.Config` nests the groups.

Each field also has a flat name, unique over all groups (`model` for
`model.name`; by default the field's name), which config.json and
`TrainConfig(**flat)` use, and a flag (`--` + the flat name with dashes, unless
given). The command line, its `--help`, `--help-all` and the reference in
docs/ are generated from these fields (`ldjax.runs.config`), so they cannot
drift from them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing

from ldjax.errors import UsageError


def setting(default, help: str, *, flat: str | None = None, flag: str | None = None,
            metavar: str | None = None, common: bool = False, negate: bool = False,
            parse=None, resumable: bool = False):
  """A field of a settings group.

  Args:
    help: what it does, for `--help` and the reference.
    flat: its name in config.json and `TrainConfig(**flat)` (default: the field's name).
    flag: its command-line flag (default: `--` + the flat name with dashes).
    common: shown by the short `--help` (else by `--help-all` only).
    negate: a bool set to False by its flag (`--no-batch-norm`).
    parse: turns the flag's text into the value (default: by the field's type).
    resumable: a resumed run may change it (it does not change what is trained); the
      others are part of a checkpoint's fingerprint (`ldjax.train.fit.fingerprint`).
  """
  return dataclasses.field(default=default, metadata=dict(
      help=help, flat=flat, flag=flag, metavar=metavar, common=common, negate=negate,
      parse=parse, resumable=resumable))


def group(name: str, title: str):
  """Class decorator: a frozen settings dataclass named `name` (its dotted prefix)."""
  def wrap(cls):
    cls.GROUP, cls.TITLE = name, title
    check = cls.__dict__.get("check")

    def __post_init__(self):   # before `dataclass`, whose __init__ then calls it
      _coerce_floats(self)
      if check is not None:
        check(self)
    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)
  return wrap


@dataclasses.dataclass(frozen=True)
class Field:
  """One setting as the command line and the config files see it."""
  group: str           # "optim"
  name: str            # "lr"
  flat: str            # "lr"
  flag: str            # "--lr"
  type: object         # float, int, str, bool, tuple, with None allowed if `optional`
  optional: bool
  default: object
  help: str
  metavar: str | None
  common: bool
  negate: bool
  parse: object
  resumable: bool

  @property
  def path(self) -> str:
    return f"{self.group}.{self.name}"

  def from_text(self, text: str):
    """The value of `--set path=text` or a flag's text; UsageError naming the path."""
    if self.optional and text.strip().lower() in ("none", "null", ""):
      return None
    if self.parse is not None:
      return self.parse(text)
    try:
      if self.type is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
          return True
        if low in ("false", "0", "no", "off"):
          return False
        raise ValueError
      if self.type is int:
        return int(text)
      if self.type is float:
        return float(text)
    except ValueError:
      kind = {bool: "true or false", int: "an integer", float: "a number"}[self.type]
      raise UsageError(f"{self.path} must be {kind}, got {text!r}") from None
    return text


def fields_of(cls) -> list[Field]:
  """The settings of group class `cls`, in declaration order."""
  hints = typing.get_type_hints(cls)
  out = []
  for f in dataclasses.fields(cls):
    kind, optional = _base_type(hints[f.name])
    m = f.metadata
    flat = m.get("flat") or f.name
    out.append(Field(cls.GROUP, f.name, flat, m.get("flag") or "--" + flat.replace("_", "-"),
                     kind, optional, f.default, m.get("help", ""), m.get("metavar"),
                     m.get("common", False), m.get("negate", False), m.get("parse"),
                     m.get("resumable", False)))
  return out


def _base_type(hint):
  args = typing.get_args(hint)
  optional = type(None) in args
  if optional:
    hint = next(a for a in args if a is not type(None))
  origin = typing.get_origin(hint)
  return (origin if origin is not None else hint), optional


def _coerce_floats(obj) -> None:
  """An int given to a float setting (TOML's `lr = 1`) becomes a float, so that a config
  read from a file equals the one the flags make."""
  for f in fields_of(type(obj)):
    value = getattr(obj, f.name)
    if (f.type is float and isinstance(value, numbers.Integral)
        and not isinstance(value, bool)):
      object.__setattr__(obj, f.name, float(value))


# Checks, in the library's words: `where` is the dotted path of the setting.

def check_float(value, where: str, expected: str, in_range) -> None:
  """UsageError unless `value` is a finite real number (not a bool) with `in_range(value)`.

  NaN and infinities pass any plain comparison unnoticed; bools and strings are refused."""
  ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value) and in_range(value))
  if not ok:
    raise UsageError(f"{where} must be {expected}, got {value!r}")


def check_int(value, where: str, expected: str, in_range) -> None:
  """UsageError unless `value` is an integer (not a bool, not a float) with `in_range(value)`."""
  ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)
        and in_range(value))
  if not ok:
    raise UsageError(f"{where} must be {expected}, got {value!r}")


def check_choice(value, where: str, choices) -> None:
  if value not in choices:
    raise UsageError(f"unknown {where} {value!r}; choose from {', '.join(choices)}")


def check_bool(value, where: str) -> None:
  if not isinstance(value, bool):
    raise UsageError(f"{where} must be true or false, got {value!r}")


def check_text(value, where: str, optional: bool = True) -> None:
  if (value is None and optional) or (isinstance(value, str) and value):
    return
  raise UsageError(f"{where} must be a non-empty string{' (or unset)' if optional else ''}, "
                   f"got {value!r}")
