"""The drop state of a run and the end-of-epoch decision (Algorithm 1, lines 9-15).

`DropState` is an immutable value: where the model is cut, the standardized
scores the dropped stages had when they were dropped, the drop events, and
an extraction due in the next epoch (Drop only). It saves itself to and
restores itself from JSON (the checkpoint's "drop" item).

`score_and_decide` is a pure function of one epoch's summed gradients and
the drop state: it returns the epoch's score record and the next state.
With `forced` (`--drop-at`, {1-based epoch: cut}) the cuts come from that
schedule instead of Eq. 4 and the median rule: the scores are still computed
and logged, and the dropped stages' standardized scores still recorded.

`rule` picks the decision rule (`ldjax.train.scoring.DECISION_RULES`). The
"stable" rule reads the head's scores of the previous epoch, which the state
keeps (`previous`), and a drop it proposes must also pay: `pays(new_cut)`
(from the run's cost table, `ldjax.train.budget`) says whether the extraction
costs less than the training time the drop saves over what remains of the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from ldjax import settings
from ldjax.errors import UsageError
from ldjax.strategy import Strategy
from ldjax.train import scoring


@settings.group("drop", "Learn & Drop's decisions")
class DropSettings:
  """When and how Freeze and Drop decide which leading stages stop training."""
  warmup: int = settings.setting(
      5, "warm-up epochs that train the whole model before any decision", common=True)
  cut_rule: str = settings.setting(
      "sign-change", "reading of Eq. 4: sign-change (the formula: stages up to the first "
      "P' > 0 followed by P' < 0; default) or max-prefix (the text: the leading run of "
      "maximum sum)")
  decision_rule: str = settings.setting(
      "paper", f"drop decision after the warm-up: {', '.join(scoring.DECISION_RULES)}. paper: "
      "Eqs. 3-4 and the median rule on one epoch's scores (default); stable: the leading "
      "stages whose P' of the two-epoch mean is at least 1, after the lr warm-up, and no drop "
      "that does not pay for its extraction (flips half as often under rounding, drops "
      "less)", metavar="RULE")
  drop_at: str | None = settings.setting(
      None, "force Freeze's and Drop's decisions: after 1-based epoch E drop the stages "
      "before CUT (e.g. 2:3,4:5), instead of Eq. 4 and the median rule; scores are still "
      "logged. For ablations at equal decisions (another precision, recipe or device count)",
      metavar="E:CUT,...")

  def check(self):
    settings.check_int(self.warmup, "drop.warmup", "an integer >= 0", lambda v: v >= 0)
    settings.check_choice(self.cut_rule, "drop.cut_rule", tuple(scoring.CUT_RULES))
    settings.check_choice(self.decision_rule, "drop.decision_rule", scoring.DECISION_RULES)
    settings.check_text(self.drop_at, "drop.drop_at")
    self.schedule   # parsed: a malformed drop_at is refused here

  @property
  def schedule(self) -> dict[int, int] | None:
    """`drop_at` as {1-based epoch: cut}, or None (the rule's decisions)."""
    if self.drop_at is None:
      return None
    pairs = []
    for part in str(self.drop_at).split(","):
      epoch, _, cut = part.partition(":")
      try:
        pairs.append((int(epoch), int(cut)))
      except ValueError:
        raise UsageError(f"drop.drop_at {self.drop_at!r} must be EPOCH:CUT pairs separated by "
                         "commas, e.g. 2:3,4:5") from None
    epochs, cuts = [e for e, _ in pairs], [c for _, c in pairs]
    if (epochs != sorted(set(epochs)) or cuts != sorted(set(cuts)) or min(cuts) < 1
        or min(epochs) < 1):
      raise UsageError(f"drop.drop_at {self.drop_at!r} needs increasing epochs >= 1 and "
                       "increasing cuts >= 1, e.g. 2:3,4:5")
    return dict(pairs)


@dataclasses.dataclass(frozen=True)
class DropState:
  """Where the model is cut, and what the decisions so far have been."""
  cut: int = 0          # stages [0, cut) do not train
  store_cut: int = 0    # stages [0, store_cut) are read from the feature store
  dropped_std_scores: tuple[float, ...] = ()
  events: tuple[dict, ...] = ()
  pending: tuple[int, int] | None = None   # (start, stop) to extract in the next epoch
  previous: tuple[int, tuple[float, ...]] | None = None   # (cut, P of the head) last epoch

  @property
  def boundaries(self) -> tuple[int, ...]:
    """The cuts after which Drop holds (or, where a store could not be written, would
    hold) a feature store: every drop event's and the current cut (a continued run's
    starts with a cut and no event). With a store dtype other than float32, Freeze's
    frozen pass rounds its maps to that dtype there, as Drop's stores do
    (`ldjax.train.programs.Programs.rounding`)."""
    return tuple(sorted({int(e["cut"]) for e in self.events} | ({self.cut} if self.cut else set())))

  def stored(self) -> "DropState":
    """After the pending extraction's store was written: the head reads it."""
    return dataclasses.replace(self, store_cut=self.pending[1], pending=None)

  def not_stored(self) -> "DropState":
    """After the pending store could not be written: its stages stay frozen."""
    return dataclasses.replace(self, pending=None)

  def to_json(self) -> dict:
    return {"cut": self.cut, "store_cut": self.store_cut,
            "dropped_std_scores": list(self.dropped_std_scores),
            "events": [dict(e) for e in self.events],
            "pending": None if self.pending is None else list(self.pending),
            "previous": None if self.previous is None
            else [self.previous[0], list(self.previous[1])]}

  @classmethod
  def from_json(cls, d: dict) -> "DropState":
    return cls(int(d["cut"]), int(d["store_cut"]),
               tuple(float(s) for s in d["dropped_std_scores"]),
               tuple(dict(e) for e in d["events"]),
               None if d["pending"] is None else (int(d["pending"][0]), int(d["pending"][1])),
               None if d.get("previous") is None
               else (int(d["previous"][0]), tuple(float(x) for x in d["previous"][1])))


def score_and_decide(sums: Sequence, abs_sums: Sequence, state: DropState, *,
                     strategy: Strategy, epoch: int, warmup: int, epochs: int | None = None,
                     stage_names: Sequence[str], cut_rule: str = "sign-change",
                     forced: Mapping[int, int] | None = None, rule: str = "paper",
                     last: bool | None = None,
                     pays: Callable[[int], bool] | None = None) -> tuple[dict, DropState]:
  """Scores the head's conv stages and, for Freeze and Drop after the warm-up, decides.

  `sums` and `abs_sums` are the epoch's running sums (S and A of Eq. 2) of
  the head's conv stages [state.cut, n_conv), named `stage_names`; `epoch` is
  0-based; `last` says whether it is the run's last epoch (default: epoch ==
  epochs - 1), after which nothing is decided. Returns ({"scores": ...,
  "decision": ...}, the next state).
  """
  p = scoring.layer_scores(sums, abs_sums)
  record = {"stages": list(stage_names), "P": p.tolist(),
            "P_std": scoring.standardize(p).tolist(), "aapd": scoring.aapd(abs_sums).tolist()}
  previous = (state.previous[1] if state.previous is not None
              and state.previous[0] == state.cut else None)
  if rule == "stable":   # the next epoch's decision reads these scores
    state = dataclasses.replace(state, previous=(state.cut, tuple(p.tolist())))
  # Algorithm 1 scores and decides in the epochs that train on `Data`, not in
  # the save_features epoch that follows a drop; Freeze mirrors that.
  after_drop = bool(state.events) and state.events[-1]["epoch"] == epoch
  if forced is not None:
    return _forced(record, p, state, strategy, epoch, forced)
  last = epoch >= epochs - 1 if last is None else last
  if not (Strategy(strategy).decides and epoch >= warmup and not after_drop
          and not last and len(p) > 1):
    return {"scores": record, "decision": None}, state
  dec = scoring.decide(p, state.dropped_std_scores, cut_rule, rule, previous)
  decision = {"n_star": dec.n_star, "Mc": dec.median_candidates,
              "Md": dec.median_dropped, "drop": dec.drop}
  if rule != "paper":
    decision["P_used"] = dec.std_scores.tolist()
  if dec.drop and pays is not None and not pays(state.cut + dec.n_star):
    decision |= {"drop": False, "not_paying": True}
    return {"scores": record, "decision": decision}, state
  if dec.drop:
    decision["new_cut"] = state.cut + dec.n_star
    state = _dropped(state, dec.n_star, dec.std_scores, epoch, strategy)
  return {"scores": record, "decision": decision}, state


def _dropped(state: DropState, n: int, std_scores, epoch: int, strategy: Strategy) -> DropState:
  """`state` after the head's first `n` stages were dropped at the end of `epoch`."""
  cut = state.cut + n
  return dataclasses.replace(
      state, cut=cut, dropped_std_scores=state.dropped_std_scores + tuple(std_scores[:n].tolist()),
      events=state.events + ({"epoch": epoch + 1, "stages_dropped": n, "cut": cut},),
      pending=(state.store_cut, cut) if Strategy(strategy).caches else state.pending)


def _forced(record: dict, p, state: DropState, strategy: Strategy, epoch: int,
            forced: Mapping[int, int]) -> tuple[dict, DropState]:
  """The decision of a `--drop-at` schedule: drop up to forced[epoch + 1], if given."""
  cut = forced.get(epoch + 1)
  if not Strategy(strategy).decides or cut is None:
    return {"scores": record, "decision": None}, state
  n = cut - state.cut
  if not 0 < n < len(p):   # the head's last conv stage is never dropped
    raise ValueError(f"drop.drop_at {epoch + 1}:{cut} does not fit a head of stages "
                     f"{state.cut}-{state.cut + len(p) - 1} (last conv stage kept)")
  decision = {"forced": True, "n_star": n, "drop": True, "new_cut": cut}
  return {"scores": record, "decision": decision}, _dropped(state, n, scoring.standardize(p),
                                                            epoch, strategy)
