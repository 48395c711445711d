"""The drop state and the end-of-epoch decision (ldjax.train.decisions), on plain arrays."""

import dataclasses
import json

import numpy as np
import pytest

from ldjax.strategy import Strategy
from ldjax.train import scoring
from ldjax.train.decisions import DropState, score_and_decide

NAMES = ("s0", "s1", "s2", "s3")


def sums_for(scores):
  """Per-stage (sum, abs_sum) of one weight each whose Eq. 2 score is `scores[l]`."""
  sums = [np.array([1.0 - p]) for p in scores]
  return sums, [np.array([1.0]) for _ in scores]


def decide(scores, state=DropState(), *, strategy="drop", epoch=3, warmup=1, epochs=10):
  sums, abs_sums = sums_for(scores)
  return score_and_decide(sums, abs_sums, state, strategy=Strategy(strategy), epoch=epoch,
                          warmup=warmup, epochs=epochs, stage_names=NAMES[state.cut:])


def test_sums_give_the_intended_scores():
  np.testing.assert_allclose(scoring.layer_scores(*sums_for([0.9, 0.2, 0.5])), [0.9, 0.2, 0.5],
                             rtol=1e-6)


def test_drop_moves_the_cut_and_schedules_the_extraction():
  state = DropState()
  record, new = decide([0.9, 0.8, 0.1, 0.2], state)
  dec = record["decision"]
  assert dec["drop"] and dec["n_star"] == 2 and dec["new_cut"] == 2
  assert new.cut == 2 and new.store_cut == 0 and new.pending == (0, 2)
  assert new.events == ({"epoch": 4, "stages_dropped": 2, "cut": 2},)
  np.testing.assert_allclose(record["scores"]["P"], [0.9, 0.8, 0.1, 0.2], rtol=1e-6)
  np.testing.assert_array_equal(new.dropped_std_scores, record["scores"]["P_std"][:2])
  assert record["scores"]["stages"] == list(NAMES)
  assert state == DropState(), "the input state must not change (a pure function)"


def test_freeze_decides_the_same_without_an_extraction():
  record_d, drop = decide([0.9, 0.8, 0.1, 0.2], strategy="drop")
  record_f, freeze = decide([0.9, 0.8, 0.1, 0.2], strategy="freeze")
  assert record_f == record_d
  assert freeze == dataclasses.replace(drop, pending=None)


@pytest.mark.parametrize("why, kwargs", [
    ("sgd never decides", dict(strategy="sgd")),
    ("inside the warm-up", dict(epoch=0, warmup=1)),
    ("in the last epoch", dict(epoch=9, epochs=10)),
])
def test_no_decision(why, kwargs):
  record, new = decide([0.9, 0.8, 0.1, 0.2], **kwargs)
  assert record["decision"] is None, why
  assert new == DropState()
  assert len(record["scores"]["P"]) == 4   # scores are still recorded


def test_no_decision_in_the_epoch_that_fills_the_store():
  # Algorithm 1 decides in epochs that train on Data, not in the save_features
  # epoch right after a drop (whose event carries that epoch's number).
  _, state = decide([0.9, 0.8, 0.1, 0.2], epoch=3)
  record, again = decide([0.9, 0.1], state.stored(), epoch=4)
  assert record["decision"] is None and again == state.stored()
  record, later = decide([0.9, 0.1], state.stored(), epoch=5)
  assert record["decision"] is not None and record["scores"]["stages"] == ["s2", "s3"]


def test_a_single_scored_stage_is_never_decided():
  record, new = decide([0.9], DropState(cut=3, store_cut=3))
  assert record["decision"] is None and new.cut == 3


@pytest.mark.parametrize("first, second, drops", [
    ([0.9, 0.1, 0.1, 0.1], [0.9, 0.8, 0.1], False),   # Md = 1.73 > Mc = 0.70
    ([0.9, 0.8, 0.1, 0.2], [0.9, 0.1, 0.1], True),    # Mc = 1.41 >= Md = 0.99
])
def test_second_drop_needs_the_median_rule(first, second, drops):
  names = ("s0", "s1", "s2", "s3", "s4", "s5")
  sums, abs_sums = sums_for(first + [0.5, 0.5])
  _, state = score_and_decide(sums[:4], abs_sums[:4], DropState(), strategy=Strategy.DROP,
                              epoch=3, warmup=1, epochs=10, stage_names=names[:4])
  state = state.stored()
  sums, abs_sums = sums_for(second)
  record, new = score_and_decide(sums, abs_sums, state, strategy=Strategy.DROP, epoch=5,
                                 warmup=1, epochs=10, stage_names=names[state.cut:][:3])
  dec = record["decision"]
  assert dec["Md"] == pytest.approx(float(np.median(state.dropped_std_scores)))
  assert dec["drop"] is drops and (dec["Mc"] >= dec["Md"]) is drops
  assert new.cut == (state.cut + dec["n_star"] if drops else state.cut)
  assert len(new.events) == (2 if drops else 1)


def test_stored_and_not_stored():
  pending = DropState(cut=3, store_cut=1, pending=(1, 3))
  assert pending.stored() == DropState(cut=3, store_cut=3)
  assert pending.not_stored() == DropState(cut=3, store_cut=1)


def test_json_round_trip():
  _, state = decide([0.9, 0.8, 0.1, 0.2], epoch=3)
  text = json.dumps(state.to_json())   # plain JSON types only
  back = DropState.from_json(json.loads(text))
  assert back == state and isinstance(back.pending, tuple)
  assert set(state.to_json()) == {"cut", "store_cut", "dropped_std_scores", "events", "pending",
                                  "previous"}
  assert DropState.from_json(DropState().to_json()) == DropState()
  # The stable rule's previous scores survive a checkpoint; older checkpoints lack them.
  kept = DropState(previous=(2, (0.5, 0.25)))
  assert DropState.from_json(json.loads(json.dumps(kept.to_json()))) == kept
  old = {k: v for k, v in state.to_json().items() if k != "previous"}
  assert DropState.from_json(old) == state


def test_state_is_immutable():
  with pytest.raises(dataclasses.FrozenInstanceError):
    DropState().cut = 2


# --- a forced schedule (--drop-at) ------------------------------------------------------


def test_forced_schedule_drops_where_told_and_still_logs_scores():
  sums, abs_sums = [[1.0, 1.0], [1.0, -1.0], [0.5, 0.5], [2.0, 0.0]], [[1, 1], [1, 1], [1, 1], [2, 2]]
  names = ["a", "b", "c", "d"]
  kw = dict(epoch=1, warmup=5, epochs=6, stage_names=names, forced={2: 2, 4: 3})
  record, state = score_and_decide(sums, abs_sums, DropState(), strategy="drop", **kw)
  assert record["decision"] == {"forced": True, "n_star": 2, "drop": True, "new_cut": 2}
  assert len(record["scores"]["P"]) == 4   # scored as usual (the warm-up does not apply)
  assert (state.cut, state.pending, state.events[-1]) == (
      2, (0, 2), {"epoch": 2, "stages_dropped": 2, "cut": 2})
  assert len(state.dropped_std_scores) == 2
  _, frozen = score_and_decide(sums, abs_sums, DropState(), strategy="freeze", **kw)
  assert (frozen.cut, frozen.pending) == (2, None)
  record, same = score_and_decide(sums, abs_sums, DropState(), strategy="sgd", **kw)
  assert record["decision"] is None and same == DropState()
  record, same = score_and_decide(sums[2:], abs_sums[2:], state, strategy="drop",
                                  **(kw | dict(epoch=2, stage_names=names[2:])))
  assert record["decision"] is None and same == state   # no cut given for epoch 3
  with pytest.raises(ValueError, match="last conv stage kept"):
    score_and_decide(sums[2:], abs_sums[2:], state, strategy="drop",
                     **(kw | dict(epoch=3, stage_names=names[2:], forced={4: 4})))
