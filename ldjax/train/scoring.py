"""Layer scores and drop decisions of Learn & Drop (paper Sections 3.1-3.2).

Everything here is a pure function on arrays and pytrees, usable from a
notebook on numpy or jax arrays:

- `init` / `update`: fold one step's per-stage gradients into running sums,
  in optax's init/update style; `update` runs inside the jitted train step, so
  no value leaves the device per step.
- `aapd`: Eq. 1, the average absolute partial derivative per stage.
- `layer_scores`: Eq. 2, P_l = 1 - sum_i |S_i| / sum_i A_i.
- `standardize`: Eq. 3 (population standard deviation).
- `find_cut`: Eq. 4, how many leading stages are candidates to drop (the
  first sign change; `find_cut_max_prefix` is the maximum-sum prefix).
- `should_drop`: the median rule M_c >= M_d.
- `decide`: the three above together, as run at the end of an epoch, by one of
  the `DECISION_RULES`: "paper" (the above on one epoch's scores) or "stable"
  (the same on scores averaged over two epochs, a sign change that must clear
  a margin around P' = 0, and a median rule that a clearly high candidate set
  always passes): decisions that rounding noise does not flip.

Interpretations where the paper is ambiguous are listed in README.md
("Interpretations of the paper").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class ScoreState(NamedTuple):
  """Running per-stage sums over one epoch's steps.

  `sum` and `abs_sum` are sequences with one pytree per stage (shaped like the
  stage's trainable parameters); `count` is the number of steps folded in.
  """
  sum: Sequence[PyTree]
  abs_sum: Sequence[PyTree]
  count: jax.Array


def init(params: Sequence[PyTree]) -> ScoreState:
  """Zero state for `params`, a sequence with one parameter pytree per stage."""
  zeros = [jax.tree.map(jnp.zeros_like, p) for p in params]
  return ScoreState(sum=zeros, abs_sum=[jax.tree.map(jnp.zeros_like, p) for p in params],
                    count=jnp.zeros((), jnp.int32))


def update(grads: Sequence[PyTree], state: ScoreState) -> ScoreState:
  """Adds one step's gradients (one pytree per stage) to the running sums."""
  new_sum = [jax.tree.map(jnp.add, s, g) for s, g in zip(state.sum, grads, strict=True)]
  new_abs = [jax.tree.map(lambda a, g: a + jnp.abs(g), a, g)
             for a, g in zip(state.abs_sum, grads, strict=True)]
  return ScoreState(new_sum, new_abs, state.count + 1)


def _tree_total(tree: PyTree, fn=lambda x: x) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return sum(jnp.sum(fn(jnp.asarray(x, jnp.float32))) for x in leaves)


def _tree_size(tree: PyTree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def aapd(abs_sums: Sequence[PyTree]) -> np.ndarray:
  """Eq. 1: (1/N) sum_i sum_j |g_ij| per stage, N = the stage's parameter count.

  As in the paper, the sum over the epoch's M steps is not divided by M.
  A stage without parameters gets 0.
  """
  out = []
  for a in abs_sums:
    n = _tree_size(a)
    out.append(float(_tree_total(a)) / n if n else 0.0)
  return np.asarray(out, np.float64)


def layer_scores(sums: Sequence[PyTree], abs_sums: Sequence[PyTree]) -> np.ndarray:
  """Eq. 2 per stage: 1 - sum_i |S_i| / sum_i A_i over all the stage's parameters.

  A stage whose abs-sum is 0 (no gradient at all) scores 1.0: nothing moves it.
  """
  out = []
  for s, a in zip(sums, abs_sums, strict=True):
    num = float(_tree_total(s, jnp.abs))
    den = float(_tree_total(a))
    out.append(1.0 if den == 0.0 else 1.0 - num / den)
  return np.asarray(out, np.float64)


def standardize(scores: Sequence[float]) -> np.ndarray:
  """Eq. 3: (P - mean) / std with the population std (ddof=0); zeros if std is 0."""
  p = np.asarray(scores, np.float64)
  if p.size == 0:
    return p
  std = p.std()
  # ptp, not std == 0: the std of equal floats can round to ~1e-16.
  if np.ptp(p) == 0.0 or not np.isfinite(std):
    return np.zeros_like(p)
  return (p - p.mean()) / std


def find_cut(std_scores: Sequence[float]) -> int:
  """Eq. 4: how many leading stages are candidates to drop.

  Returns t + 1 for the smallest t with std_scores[t] > 0 and
  std_scores[t + 1] < 0, and 0 when there is no such t. The last stage can
  never be a candidate, since t + 1 must exist.
  """
  s = np.asarray(std_scores, np.float64)
  for t in range(len(s) - 1):
    if s[t] > 0 and s[t + 1] < 0:
      return t + 1
  return 0


def find_cut_max_prefix(std_scores: Sequence[float]) -> int:
  """The text's reading of Eq. 4: the length k of the prefix of maximum sum
  ("the sub-vector of maximum sum starting from the first element").

  k ranges over 1 .. len - 1 (the last stage is never a candidate, as in
  `find_cut`); the shortest of equal sums wins; 0 when no prefix sums to > 0.
  """
  s = np.asarray(std_scores, np.float64)
  if len(s) < 2:
    return 0
  sums = np.cumsum(s[:-1])
  k = int(np.argmax(sums))
  return k + 1 if sums[k] > 0 else 0


CUT_RULES = {"sign-change": find_cut, "max-prefix": find_cut_max_prefix}


def should_drop(candidate_std_scores: Sequence[float],
                dropped_std_scores: Sequence[float]) -> bool:
  """The median rule: median(candidates) >= median(previously dropped).

  True when nothing was dropped yet; False when there is no candidate.
  """
  if len(candidate_std_scores) == 0:
    return False
  if len(dropped_std_scores) == 0:
    return True
  return bool(np.median(candidate_std_scores) >= np.median(dropped_std_scores))


class Decision(NamedTuple):
  """The end-of-epoch decision on the head's conv stages."""
  scores: np.ndarray        # P per scored stage (Eq. 2)
  std_scores: np.ndarray    # P' per scored stage (Eq. 3)
  n_star: int               # number of leading candidates (Eq. 4), 0 if none
  median_candidates: float | None  # M_c
  median_dropped: float | None     # M_d
  drop: bool                # drop the n_star leading stages now


def decide(scores: Sequence[float], dropped_std_scores: Sequence[float],
           cut_rule: str = "sign-change", rule: str = "paper",
           previous: Sequence[float] | None = None) -> Decision:
  """Eqs. 3-4 and the median rule on the head's conv-stage scores P (Eq. 2);
  `cut_rule` names the reading of Eq. 4 (`CUT_RULES`), `rule` the decision rule
  (`DECISION_RULES`); "stable" also takes `previous`, the same stages' P one epoch
  earlier (None: no drop yet)."""
  if rule == "stable":
    return decide_stable(scores, previous, dropped_std_scores, cut_rule)
  p = np.asarray(scores, np.float64)
  std = standardize(p)
  n_star = CUT_RULES[cut_rule](std)
  cand = std[:n_star]
  mc = float(np.median(cand)) if n_star else None
  md = float(np.median(dropped_std_scores)) if len(dropped_std_scores) else None
  return Decision(p, std, n_star, mc, md, n_star > 0 and should_drop(cand, dropped_std_scores))


# Measured in experiments/stability_study.py (results/stability/README.md): of the
# candidate rules, the leading run of the two-epoch mean's P' >= 1.0 changed no
# decision under 1e-3 noise on P (the paper's rule: 4 %) and still dropped in
# nearly every run.
STABLE_MARGIN = 1.0      # P' (of the two-epoch mean) every candidate must reach
STABLE_MEDIAN_CAP = 1.0  # candidates whose median P' reaches this pass the median rule


def lead_above(std_scores: Sequence[float], margin: float) -> int:
  """How many leading stages have P' >= `margin` (the last stage never counts).

  P' is compared with a 1e-9 tolerance: a two-stage head's P' is exactly +-1 in
  exact arithmetic, and whether the larger one reaches a margin of 1.0 must not
  depend on the last bit of a division."""
  s = np.asarray(std_scores, np.float64)
  n = 0
  while n < len(s) - 1 and s[n] >= margin - 1e-9:
    n += 1
  return n


def decide_stable(scores: Sequence[float], previous: Sequence[float] | None,
                  dropped_std_scores: Sequence[float],
                  cut_rule: str = "sign-change") -> Decision:
  """The "stable" rule: Eqs. 3-4 and the median rule, made robust to rounding noise.

  - P is averaged over this epoch and the previous one (`previous`, the same
    stages' scores; without it nothing is dropped yet): half the variance of
    one epoch's step noise;
  - the candidates are the Eq. 4 candidates (`cut_rule`) that form a leading
    run of P' >= `STABLE_MARGIN`: a stage is dropped only when it clearly
    stands above the head's mean, not where P' crosses 0, which is where the
    middle stages cluster and where rounding moves the paper's sign change;
  - the median rule compares M_c with min(M_d, `STABLE_MEDIAN_CAP`), so that
    one early outlier (say a stem dropped alone at P' = 2) cannot block every
    later drop; with STABLE_MARGIN >= STABLE_MEDIAN_CAP every candidate set passes.
  `std_scores` are those of the averaged P (what a dropped stage records).
  """
  p = np.asarray(scores, np.float64)
  if previous is None or len(previous) != len(p):
    return Decision(p, standardize(p), 0, None, None, False)
  std = standardize((p + np.asarray(previous, np.float64)) / 2)
  n_star = min(CUT_RULES[cut_rule](std), lead_above(std, STABLE_MARGIN))
  cand = std[:n_star]
  mc = float(np.median(cand)) if n_star else None
  md = float(np.median(dropped_std_scores)) if len(dropped_std_scores) else None
  bar = None if md is None else min(md, STABLE_MEDIAN_CAP)
  drop = n_star > 0 and (bar is None or mc >= bar)
  return Decision(p, std, n_star, mc, md, drop)


DECISION_RULES = ("paper", "stable")
