"""Tests of `ldjax.scoring`: Eqs. 1-4 and the median rule on literal inputs.

Every expected value is worked out by hand in a comment next to it, so these
tests check the formulas of the paper (Section 3.1-3.2), not the code against
itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldjax import scoring

# Two stages: stage 0 has two leaves (3 weights), stage 1 one leaf (1 weight).
PARAMS = [{"w": np.array([1.0, -2.0], np.float32), "b": np.array([3.0], np.float32)},
          {"k": np.array([[0.5]], np.float32)}]

# Three steps of per-stage gradients, shaped like PARAMS.
GRADS = [
    [{"w": np.array([1.0, -2.0], np.float32), "b": np.array([3.0], np.float32)},
     {"k": np.array([[0.5]], np.float32)}],
    [{"w": np.array([-1.0, -1.0], np.float32), "b": np.array([1.0], np.float32)},
     {"k": np.array([[0.5]], np.float32)}],
    [{"w": np.array([2.0, 0.0], np.float32), "b": np.array([-4.0], np.float32)},
     {"k": np.array([[-1.0]], np.float32)}],
]


def fold(grads, xp=np):
  state = scoring.init(jax.tree.map(xp.asarray, PARAMS))
  for g in grads:
    state = scoring.update(jax.tree.map(xp.asarray, g), state)
  return state


# --- init / update -------------------------------------------------------------------


def test_init_is_zero_and_shaped_like_params():
  state = scoring.init(PARAMS)
  assert int(state.count) == 0
  assert len(state.sum) == len(state.abs_sum) == 2
  for s, a, p in zip(state.sum, state.abs_sum, PARAMS):
    assert jax.tree.structure(s) == jax.tree.structure(p)
    for x, y in zip(jax.tree.leaves(s) + jax.tree.leaves(a), jax.tree.leaves(p) * 2):
      assert x.shape == y.shape
      assert not np.any(np.asarray(x))


def test_update_folds_three_steps_exactly():
  state = fold(GRADS)
  # stage 0, w: sum  = [1 - 1 + 2, -2 - 1 + 0] = [2, -3]
  #             |g|  = [1 + 1 + 2,  2 + 1 + 0] = [4,  3]
  #          b: sum  = [3 + 1 - 4] = [0];   |g| = [3 + 1 + 4] = [8]
  # stage 1, k: sum  = 0.5 + 0.5 - 1 = 0;  |g| = 0.5 + 0.5 + 1 = 2
  np.testing.assert_array_equal(state.sum[0]["w"], [2.0, -3.0])
  np.testing.assert_array_equal(state.abs_sum[0]["w"], [4.0, 3.0])
  np.testing.assert_array_equal(state.sum[0]["b"], [0.0])
  np.testing.assert_array_equal(state.abs_sum[0]["b"], [8.0])
  np.testing.assert_array_equal(state.sum[1]["k"], [[0.0]])
  np.testing.assert_array_equal(state.abs_sum[1]["k"], [[2.0]])
  assert int(state.count) == 3


def test_update_two_steps_count_and_sums():
  state = fold(GRADS[:2])
  # w: [1 - 1, -2 - 1] = [0, -3]; |g|: [2, 3]; count 2
  np.testing.assert_array_equal(state.sum[0]["w"], [0.0, -3.0])
  np.testing.assert_array_equal(state.abs_sum[0]["w"], [2.0, 3.0])
  assert int(state.count) == 2


def test_update_under_jit_equals_eager():
  eager = fold(GRADS)
  step = jax.jit(scoring.update)
  state = scoring.init(jax.tree.map(jnp.asarray, PARAMS))
  for g in GRADS:
    state = step(jax.tree.map(jnp.asarray, g), state)
  assert int(state.count) == 3
  for a, b in zip(jax.tree.leaves((eager.sum, eager.abs_sum)),
                  jax.tree.leaves((state.sum, state.abs_sum))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_update_rejects_a_missing_stage():
  state = scoring.init(PARAMS)
  with pytest.raises(ValueError):
    scoring.update(GRADS[0][:1], state)


# --- Eq. 2: layer scores --------------------------------------------------------------


def one_weight(*steps):
  """sum and abs-sum of one stage with a single weight over the given steps."""
  g = np.asarray(steps, np.float32)
  return [{"w": np.array([g.sum()])}], [{"w": np.array([np.abs(g).sum()])}]


@pytest.mark.parametrize("steps, expected", [
    ((1.0, -1.0), 1.0),          # |1 - 1| / (1 + 1) = 0      -> P = 1
    ((2.0, 3.0), 0.0),           # |2 + 3| / (2 + 3) = 1      -> P = 0
    ((-2.0, -3.0), 0.0),         # same sign, negative        -> P = 0
    ((3.0, -1.0, 2.0), 1.0 / 3), # |3 - 1 + 2| / (3+1+2) = 4/6 -> P = 1 - 4/6
    ((0.5, -1.5), 0.5),          # |-1| / 2 = 1/2             -> P = 1/2
])
def test_layer_score_eq2_single_weight(steps, expected):
  sums, abs_sums = one_weight(*steps)
  np.testing.assert_allclose(scoring.layer_scores(sums, abs_sums), [expected], rtol=1e-6)


def test_layer_scores_of_folded_steps():
  state = fold(GRADS)
  # stage 0: sum_i |S_i| = |2| + |-3| + |0| = 5; sum_i A_i = 4 + 3 + 8 = 15 -> 1 - 5/15 = 2/3
  # stage 1: |0| / 2 = 0 -> 1
  np.testing.assert_allclose(scoring.layer_scores(state.sum, state.abs_sum), [2 / 3, 1.0],
                             rtol=1e-6)


def test_layer_score_is_one_without_gradient():
  # abs-sum 0 (no gradient reached the stage): nothing moves it -> 1.0, not NaN.
  zeros = [{"w": np.zeros(3, np.float32)}]
  assert scoring.layer_scores(zeros, zeros).tolist() == [1.0]
  # A stage without any parameter behaves the same.
  assert scoring.layer_scores([{}], [{}]).tolist() == [1.0]


def test_layer_score_spans_all_leaves_of_a_stage():
  # leaf a (1 weight): S = 2, A = 2 (alone: P = 0)
  # leaf b (3 weights): S = 0, A = 2 each (alone: P = 1)
  # stage: 1 - (2 + 0 + 0 + 0) / (2 + 2 + 2 + 2) = 1 - 2/8 = 0.75
  # (the mean of the per-leaf scores would be 0.5; the first leaf alone 0.0)
  sums = [{"a": np.array([2.0]), "b": np.zeros(3)}]
  abs_sums = [{"a": np.array([2.0]), "b": np.full(3, 2.0)}]
  np.testing.assert_allclose(scoring.layer_scores(sums, abs_sums), [0.75])


def test_layer_scores_lie_in_unit_interval():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(20, 5, 7))   # 20 steps, 5 stages, 7 weights
  sums = [{"w": grads[:, s].sum(0)} for s in range(5)]
  abs_sums = [{"w": np.abs(grads[:, s]).sum(0)} for s in range(5)]
  p = scoring.layer_scores(sums, abs_sums)
  assert p.shape == (5,)
  assert np.all((p >= 0) & (p <= 1))


def test_layer_scores_numpy_and_jax_agree():
  state = fold(GRADS, xp=jnp)
  host = jax.device_get((state.sum, state.abs_sum))
  np.testing.assert_allclose(scoring.layer_scores(state.sum, state.abs_sum),
                             scoring.layer_scores(*host), rtol=0)
  assert isinstance(scoring.layer_scores(state.sum, state.abs_sum), np.ndarray)


# --- Eq. 1: AAPD ----------------------------------------------------------------------


def test_aapd_divides_by_weights_not_steps():
  state = fold(GRADS)
  # stage 0: (4 + 3 + 8) / N=3 weights = 5.0   (divided by M=3 steps as well: 5/3)
  # stage 1: 2 / N=1 = 2.0                      (divided by M too: 2/3)
  np.testing.assert_allclose(scoring.aapd(state.abs_sum), [5.0, 2.0], rtol=1e-6)


def test_aapd_of_empty_stage_is_zero():
  np.testing.assert_array_equal(scoring.aapd([{}, {"w": np.array([4.0, 2.0])}]), [0.0, 3.0])


def test_aapd_on_jax_arrays():
  state = fold(GRADS, xp=jnp)
  np.testing.assert_allclose(scoring.aapd(state.abs_sum), [5.0, 2.0], rtol=1e-6)


# --- Eq. 3: standardization -----------------------------------------------------------


def test_standardize_uses_population_std():
  # [0, 0, 3]: mean 1, deviations [-1, -1, 2], population var (1 + 1 + 4) / 3 = 2
  # -> [-1/sqrt2, -1/sqrt2, 2/sqrt2]   (ddof=1 would give std sqrt3: [-0.577, -0.577, 1.155])
  r = 1 / math.sqrt(2)
  np.testing.assert_allclose(scoring.standardize([0.0, 0.0, 3.0]), [-r, -r, 2 * r], rtol=1e-12)


def test_standardize_four_values():
  # [1, 2, 3, 4]: mean 2.5, var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
  s = math.sqrt(1.25)
  np.testing.assert_allclose(scoring.standardize(np.array([1, 2, 3, 4])),
                             [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=1e-12)


@pytest.mark.parametrize("value", [
    0.5,
    1.0,   # e.g. several stages without gradient
    0.7,   # the std of three 0.7s rounds to ~1e-16, not 0
])
def test_standardize_constant_is_zero(value):
  # All-equal scores: no stage differs from the mean -> P' = 0 everywhere (README 5).
  out = scoring.standardize([value] * 3)
  np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])


def test_standardize_single_and_empty():
  np.testing.assert_array_equal(scoring.standardize([0.3]), [0.0])
  assert scoring.standardize([]).size == 0


def test_standardize_jax_input():
  np.testing.assert_allclose(scoring.standardize(jnp.array([0.0, 0.0, 3.0])),
                             scoring.standardize([0.0, 0.0, 3.0]), rtol=1e-6)


# --- Eq. 4: the cut ------------------------------------------------------------------


@pytest.mark.parametrize("std, expected", [
    ([1.0, -1.0], 1),             # t=0: 1 > 0 and -1 < 0 -> t + 1 = 1
    ([1.0, 2.0, -1.0, 3.0], 2),   # t=0: 2 is not < 0; t=1: 2 > 0, -1 < 0 -> 2
    ([-1.0, 1.0, -1.0], 2),       # t=0: -1 is not > 0; t=1 -> 2
    ([1.0, 2.0, 3.0], 0),         # never a negative successor
    ([0.0, -1.0], 0),             # 0 is not strictly > 0
    ([1.0, 0.0, -1.0], 0),        # 0 is not strictly < 0, and then not > 0
    ([0.5], 0),                   # a single stage has no t + 1
    ([], 0),
    ([1.0, -1.0, 1.0, -1.0], 1),  # the smallest t wins
    ([1.0, 1.0, 1.0, -1.0], 3),   # all but the last stage
    ([-1.0, -1.0, 2.0], 0),       # positive only at the last stage
])
def test_find_cut(std, expected):
  assert scoring.find_cut(std) == expected


def test_find_cut_never_includes_last_stage():
  rng = np.random.default_rng(1)
  for _ in range(200):
    s = rng.normal(size=rng.integers(1, 8))
    n = scoring.find_cut(s)
    assert 0 <= n <= max(len(s) - 1, 0)
    if n:   # the definition: s[n-1] > 0 > s[n], and no earlier such pair
      assert s[n - 1] > 0 > s[n]
      assert not any(s[t] > 0 > s[t + 1] for t in range(n - 1))
    else:
      assert not any(s[t] > 0 > s[t + 1] for t in range(len(s) - 1))


def test_find_cut_on_jax_array():
  assert scoring.find_cut(jnp.array([1.0, 2.0, -1.0, 3.0])) == 2


# --- the median rule -----------------------------------------------------------------


def test_should_drop_when_nothing_dropped():
  assert scoring.should_drop([-5.0], []) is True


def test_should_not_drop_without_candidates():
  assert scoring.should_drop([], []) is False
  assert scoring.should_drop([], [1.0]) is False


@pytest.mark.parametrize("cand, dropped, expected", [
    ([0.5, 1.5], [1.0], True),          # Mc = 1.0 >= Md = 1.0 (equality drops)
    ([0.2, 0.9, 0.4], [0.5], False),    # Mc = 0.4 <  Md = 0.5
    ([0.5], [0.0, 1.0], True),          # Md = (0 + 1) / 2 = 0.5 -> 0.5 >= 0.5
    ([0.49], [0.0, 1.0], False),        # 0.49 < 0.5
    ([2.0], [1.0, 3.0, 0.0], True),     # Md = median(0, 1, 3) = 1
    ([-1.0, -3.0], [-2.5], True),       # Mc = -2 >= -2.5
])
def test_should_drop_median_rule(cand, dropped, expected):
  assert scoring.should_drop(cand, dropped) is expected


# --- decide: a scripted run of epochs --------------------------------------------------


def test_decide_scripted_epochs():
  """Four end-of-epoch decisions, with the dropped scores kept as the loop keeps them."""
  dropped = []

  # Epoch A: P = [0.9, 0.8, 0.2, 0.1]; mean 0.5, deviations [.4, .3, -.3, -.4],
  # var (.16 + .09 + .09 + .16) / 4 = .125, std = sqrt(.125) = 1 / (2 sqrt2)
  # P' = [0.8 sqrt2, 0.6 sqrt2, -0.6 sqrt2, -0.8 sqrt2] = [1.131, 0.849, -0.849, -1.131]
  # n* = 2 (t=1: 0.849 > 0, -0.849 < 0); Mc = 0.7 sqrt2 = 0.990; nothing dropped -> drop.
  s2 = math.sqrt(2)
  d = scoring.decide([0.9, 0.8, 0.2, 0.1], dropped)
  np.testing.assert_allclose(d.scores, [0.9, 0.8, 0.2, 0.1])
  np.testing.assert_allclose(d.std_scores, [0.8 * s2, 0.6 * s2, -0.6 * s2, -0.8 * s2], rtol=1e-9)
  assert d.n_star == 2
  assert d.median_candidates == pytest.approx(0.7 * s2)
  assert d.median_dropped is None
  assert d.drop
  dropped += d.std_scores[:d.n_star].tolist()
  assert dropped == pytest.approx([0.8 * s2, 0.6 * s2])

  # Epoch B (the head's scores only): P = [0.3, 0.2, 0.1, 0.0]; mean .15,
  # deviations [.15, .05, -.05, -.15], var .0125, std = sqrt(.0125) = 0.05 sqrt5
  # P' = [3/sqrt5, 1/sqrt5, -1/sqrt5, -3/sqrt5]; n* = 2; Mc = 2/sqrt5 = 0.894
  # Md = median(0.8 sqrt2, 0.6 sqrt2) = 0.7 sqrt2 = 0.990 > Mc -> no drop.
  s5 = math.sqrt(5)
  d = scoring.decide([0.3, 0.2, 0.1, 0.0], dropped)
  np.testing.assert_allclose(d.std_scores, [3 / s5, 1 / s5, -1 / s5, -3 / s5], rtol=1e-9)
  assert d.n_star == 2
  assert d.median_candidates == pytest.approx(2 / s5)
  assert d.median_dropped == pytest.approx(0.7 * s2)
  assert not d.drop
  if d.drop:
    dropped += d.std_scores[:d.n_star].tolist()

  # Epoch C: P = [0.9, 0.1, 0.1, 0.1]; mean .3, deviations [.6, -.2, -.2, -.2],
  # var (.36 + 3 * .04) / 4 = .12, std = 0.2 sqrt3
  # P' = [sqrt3, -1/sqrt3, -1/sqrt3, -1/sqrt3]; n* = 1; Mc = sqrt3 = 1.732 >= 0.990 -> drop.
  s3 = math.sqrt(3)
  d = scoring.decide([0.9, 0.1, 0.1, 0.1], dropped)
  np.testing.assert_allclose(d.std_scores, [s3, -1 / s3, -1 / s3, -1 / s3], rtol=1e-9)
  assert d.n_star == 1
  assert d.median_candidates == pytest.approx(s3)
  assert d.median_dropped == pytest.approx(0.7 * s2)
  assert d.drop
  dropped += d.std_scores[:d.n_star].tolist()
  # Md is now the median of three: median(1.131, 0.849, 1.732) = 0.8 sqrt2 = 1.131
  assert np.median(dropped) == pytest.approx(0.8 * s2)

  # Epoch D: all scores equal -> P' all 0 -> no candidate, no drop, Mc undefined.
  d = scoring.decide([0.5, 0.5, 0.5], dropped)
  np.testing.assert_array_equal(d.std_scores, [0.0, 0.0, 0.0])
  assert d.n_star == 0
  assert d.median_candidates is None
  assert d.median_dropped == pytest.approx(0.8 * s2)
  assert not d.drop


def test_decide_on_jax_scores():
  # P = [0.9, 0.1] -> P' = [1, -1] (mean .5, std .4); n* = 1, Mc = 1.
  d = scoring.decide(jnp.array([0.9, 0.1]), [0.5])
  assert d.n_star == 1 and d.median_candidates == pytest.approx(1.0)
  assert d.drop                         # 1 >= 0.5
  d = scoring.decide(jnp.array([0.9, 0.1]), [1.5])
  assert d.n_star == 1 and not d.drop   # 1 < 1.5


@pytest.mark.parametrize("std,expected", [
    ([1.0, -1.0], 1),
    ([1.0, 0.5, -0.2, -1.3], 2),        # sums 1, 1.5, 1.3: the maximum is the prefix of 2
    ([1.0, -0.5, 2.0, -2.5], 3),        # the sign-change reading stops at 1; the text goes on
    ([-1.0, 0.5, 0.5], 0),              # no prefix sums to > 0
    ([0.5, -0.5, 0.5, -0.5], 1),        # equal sums 0.5 at 1 and 3: the shortest
    ([2.0, 1.0, -3.0], 2),              # the last stage is never a candidate
    ([3.0], 0), ([], 0),
])
def test_find_cut_max_prefix(std, expected):
  assert scoring.find_cut_max_prefix(std) == expected


def test_decide_takes_the_cut_rule():
  scores = [0.9, 0.5, 0.8, 0.1]
  std = scoring.standardize(scores)
  assert scoring.decide(scores, []).n_star == scoring.find_cut(std) == 1
  assert scoring.decide(scores, [], "max-prefix").n_star == scoring.find_cut_max_prefix(std) == 3


def test_the_settings_accept_exactly_the_cut_rules():
  """The drop settings take their choices from scoring (which stays pure: it imports
  nothing of ldjax), so the two cannot differ."""
  from ldjax.errors import UsageError
  from ldjax.train.decisions import DropSettings
  for rule in scoring.CUT_RULES:
    assert DropSettings(cut_rule=rule).cut_rule == rule
  with pytest.raises(UsageError, match="unknown drop.cut_rule 'first'"):
    DropSettings(cut_rule="first")


# --- decide_stable: the "stable" rule (issue #28, item 3) ---------------------------------


def test_stable_rule_waits_for_a_previous_epoch():
  d = scoring.decide_stable([0.9, 0.1, 0.1], None, ())
  assert not d.drop and d.n_star == 0
  d = scoring.decide_stable([0.9, 0.1, 0.1], [0.9, 0.1], ())   # another head: no previous
  assert not d.drop and d.n_star == 0


def test_stable_rule_does_not_flip_where_the_paper_rule_does():
  """A 1e-3 change of one P moves the paper's cut; the stable rule's stays.

  P = [0.9, 0.7, 0.6, x, 0.4, 0.3, 0.2] with x = 3.1 / 6 = 0.51667 has mean x,
  so stage 3's P' is 0 there: x = 0.5172 gives P'_3 = +0.002 (first sign change
  after stage 3, n* = 4), x = 0.5162 gives -0.002 (n* = 3). std = 0.2232:
  P' = [1.72, 0.82, 0.37, ~0, -0.52, -0.97, -1.42]. The stable rule only takes
  the leading stages with P' >= 1.0 (of the two-epoch mean): stage 0 in both."""
  prev = [0.9, 0.7, 0.6, 0.5167, 0.4, 0.3, 0.2]
  hi, lo = [0.9, 0.7, 0.6, 0.5172, 0.4, 0.3, 0.2], [0.9, 0.7, 0.6, 0.5162, 0.4, 0.3, 0.2]
  assert (scoring.decide(hi, []).n_star, scoring.decide(lo, []).n_star) == (4, 3)
  for cut_rule in scoring.CUT_RULES:
    a = scoring.decide_stable(hi, prev, (), cut_rule)
    b = scoring.decide_stable(lo, prev, (), cut_rule)
    assert (a.drop, a.n_star) == (b.drop, b.n_star) == (True, 1)
    assert a.median_candidates == pytest.approx(1.72, abs=0.01)


def test_stable_rule_drops_on_a_smooth_profile():
  """The first draft's flaw: a monotone P' profile never had a sign change that
  cleared +-0.5 on both sides, so it never dropped. With P (both epochs)
  1.69, 0.99, 0.61, 0.38, 0.11, -0.26, -0.67, -1.0, -1.35, -1.5: mean 0, std 0.937,
  P' = [1.80, 1.10, 0.72, 0.48, ...]: the two leading stages clear 1.0."""
  p = [1.69, 0.99, 0.61, 0.38, 0.11, -0.26, -0.67, -1.0, -1.35, -1.5]
  d = scoring.decide_stable(p, p, ())
  assert d.drop and d.n_star == 2
  np.testing.assert_allclose(d.std_scores[:2], [1.803, 1.098], atol=1e-3)


def test_stable_rule_averages_two_epochs():
  """A stage high in one epoch only is not dropped.

  This epoch P = [0.9, 0.1, 0.1, 0.1] (P'_0 = sqrt3), last epoch
  [0.5, 0.1, 0.1, 0.1]: the mean [0.7, 0.1, 0.1, 0.1] has P' = [sqrt3, -1/sqrt3 x 3]:
  1 candidate, Eq. 4 agrees. Last epoch [0.1, 0.1, 0.9, 0.9]: mean [0.5, 0.1, 0.5, 0.5], P' = [1/sqrt3, -sqrt3, 1/sqrt3,
  1/sqrt3]: 0.577 < 1.0, no candidate, where the paper's rule on this epoch drops 1."""
  d = scoring.decide_stable([0.9, 0.1, 0.1, 0.1], [0.5, 0.1, 0.1, 0.1], ())
  np.testing.assert_allclose(d.std_scores, [math.sqrt(3)] + [-1 / math.sqrt(3)] * 3)
  assert d.drop and d.n_star == 1
  assert scoring.decide([0.9, 0.1, 0.1, 0.1], []).drop
  d = scoring.decide_stable([0.9, 0.1, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9], ())
  np.testing.assert_allclose(d.std_scores, [1 / math.sqrt(3), -math.sqrt(3)] + [1 / math.sqrt(3)] * 2)
  assert not d.drop and d.n_star == 0


def test_stable_rule_caps_the_median_of_the_dropped():
  """A stem dropped alone at P' = 2.5 does not block later drops: M_c = sqrt3 = 1.73
  (P = [0.9, 0.1, 0.1, 0.1] both epochs) is compared with min(2.5, 1.0); the
  paper's rule compares it with 2.5 and refuses."""
  p = [0.9, 0.1, 0.1, 0.1]
  d = scoring.decide_stable(p, p, (2.5,))
  assert d.drop and d.n_star == 1 and d.median_dropped == 2.5
  assert d.median_candidates == pytest.approx(math.sqrt(3))
  assert not scoring.decide(p, (2.5,)).drop


def test_stable_rule_never_takes_the_last_stage():
  # Two stages: P' = [1, -1] whatever P (up to rounding, which the 1e-9 tolerance
  # absorbs); stage 0 reaches the margin 1.0 and is the only possible candidate.
  for p in ([0.9, 0.1], [0.7, 0.3], [0.61, 0.6], [1 / 3, 0.1]):
    d = scoring.decide_stable(p, p, ())
    assert d.drop and d.n_star == 1
  assert scoring.lead_above([1 - 1e-12, -1.0], 1.0) == 1
  assert scoring.lead_above([2.0, 1.5, 1.2], 1.0) == 2
  assert scoring.lead_above([0.9, 1.5], 1.0) == 0
  assert scoring.lead_above([], 1.0) == 0


def test_decide_dispatches_the_stable_rule():
  p, prev = [0.9, 0.7, 0.6, 0.5172, 0.4, 0.3, 0.2], [0.9, 0.7, 0.6, 0.5167, 0.4, 0.3, 0.2]
  a, b = scoring.decide(p, [], rule="stable", previous=prev), scoring.decide_stable(p, prev, [])
  np.testing.assert_array_equal(a.std_scores, b.std_scores)
  assert (a.n_star, a.drop, a.median_candidates) == (b.n_star, b.drop, b.median_candidates)
  assert not scoring.decide(p, [], rule="stable").drop   # no previous epoch yet


def test_stable_rule_resists_rounding_noise_on_recorded_scores():
  """1e-4 absolute noise on a recorded P profile (vgg11 at 1/16, epoch 3 of
  experiments/stability_study.py, c00) never changes the stable rule's decision."""
  prev = [0.6137, 0.6038, 0.6167, 0.6216, 0.6106, 0.6010, 0.5736, 0.5475]
  p = [0.6057, 0.6738, 0.6722, 0.6374, 0.6263, 0.6222, 0.6022, 0.5556]
  ref = scoring.decide_stable(p, prev, ())
  rng = np.random.default_rng(0)
  for _ in range(200):
    d = scoring.decide_stable(np.add(p, 1e-4 * rng.standard_normal(8)),
                              np.add(prev, 1e-4 * rng.standard_normal(8)), ())
    assert (d.drop, d.n_star) == (ref.drop, ref.n_star)
