"""Empirical privacy: released mechanisms cannot be told apart on neighbouring datasets more than epsilon allows.

For a mechanism M claimed epsilon-DP and neighbouring datasets D, D' (D' adds
one person, i.e. `unit` rows), every event S satisfies
P[M(D') in S] <= e^epsilon P[M(D) in S] (plus delta for approximate DP). We
fix S in advance from theory, run the released mechanism N times on each of
D and D', and compute exact Clopper-Pearson bounds: a lower bound on
p' = P[M(D') in S] and an upper bound on p = P[M(D) in S], each at one-sided
confidence 1 - 5e-7. By the union bound both hold together with probability
at least 1 - 1e-6, and then

    eps_lb = ln(p'_lower / p_upper) <= ln(p' / p) <= true epsilon.

So a correct mechanism (true epsilon <= claimed) makes `eps_lb <= claimed`
fail less than once in a million runs of each assertion. The same statistic
must exceed the claim for the deliberately mis-scaled variant
`plan.with_scale_factor(0.5)`, whose noise is half as large and whose true
epsilon is twice the claim.

Clopper-Pearson is implemented exactly (scipy is not installed): the binomial
tails come from log-probabilities built with math.lgamma and summed with
log-sum-exp, and each bound is found by bisection on p. The events, all of
the form "output >= the true value on D'", make the Laplace-type ratio
exactly e^epsilon (discrete Laplace: P[Z >= 0] / P[Z >= 1] = e^(1/scale);
Laplace: P[Z >= 0] / P[Z >= sensitivity] = e^(sensitivity/scale)). With
claimed epsilon 1 and N = 4000 the probabilities are about 0.73 vs 0.27
(counts) and 0.5 vs 0.18 (sums), each known to within about +-0.035, so a
correct mechanism gives eps_lb about 0.8 and the mis-scaled one (true ratio
e^2, probabilities about 0.88 vs 0.12 and 0.5 vs 0.07) about 1.6 to 1.8: a
margin of more than 0.5 above the claim of 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pytest

from dp_engine import AggKind, Aggregate, CategoricalColumn, ColumnInfo, NumericColumn, Plan, Query, Statistic, plan

N = 4000
ALPHA_EACH = 5e-7  # one-sided, for each of the two bounds: 1e-6 overall
EPSILON = 1.0
COLUMNS: dict[str, ColumnInfo] = {"x": NumericColumn("x", 0.0, 10.0), "tag": CategoricalColumn("tag", ("a", "b"))}
EDGES = (2.5, 5.0, 7.5)


# ---------------------------------------------------------------- exact Clopper-Pearson


@functools.lru_cache(maxsize=8)
def _log_choose(n: int) -> np.ndarray:
    return np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(n + 1)])


def _log_tail(k_from: int, k_to: int, n: int, p: float) -> float:
    """log P[k_from <= Bin(n, p) <= k_to], by log-sum-exp over the exact log-probabilities."""
    k = np.arange(k_from, k_to + 1)
    if p <= 0.0:
        return 0.0 if k_from == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k_to == n else -math.inf
    logs = _log_choose(n)[k_from:k_to + 1] + k * math.log(p) + (n - k) * math.log1p(-p)
    top = logs.max()
    return float(top + math.log(np.exp(logs - top).sum()))


def _bisect(predicate: Callable[[float], bool]) -> float:
    """The boundary in [0, 1] of a predicate that is true below it and false above it."""
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if predicate(mid) else (low, mid)
    return low


def cp_upper(k: int, n: int, alpha: float) -> float:
    """Exact one-sided upper confidence bound for p: the largest p with P[Bin(n, p) <= k] >= alpha."""
    if k >= n:
        return 1.0
    return _bisect(lambda p: _log_tail(0, k, n, p) >= math.log(alpha)) + 1e-15


def cp_lower(k: int, n: int, alpha: float) -> float:
    """Exact one-sided lower confidence bound for p: the smallest p with P[Bin(n, p) >= k] >= alpha."""
    if k <= 0:
        return 0.0
    return 1.0 - _bisect(lambda q: _log_tail(k, n, n, 1.0 - q) >= math.log(alpha)) - 1e-15


def epsilon_lower_bound(hits_d: int, hits_d_prime: int, delta: float = 0.0) -> float:
    """ln((p'_lower - delta) / p_upper): a lower bound on the true epsilon with confidence 1 - 2 ALPHA_EACH."""
    upper = cp_upper(hits_d, N, ALPHA_EACH)
    lower = cp_lower(hits_d_prime, N, ALPHA_EACH) - delta
    return math.log(lower / upper) if lower > 0 else -math.inf


def test_clopper_pearson_matches_closed_forms() -> None:
    for n, alpha in ((10, 0.05), (4000, ALPHA_EACH)):
        assert cp_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-9)
        assert cp_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)
    assert cp_lower(1234, 4000, ALPHA_EACH) == pytest.approx(1 - cp_upper(2766, 4000, ALPHA_EACH), abs=1e-12)
    # Near the normal approximation where it is good: p = 0.5, n = 4000, one-sided 5e-7 (z about 4.89).
    assert cp_upper(2000, 4000, ALPHA_EACH) == pytest.approx(0.5 + 4.89 * math.sqrt(0.25 / 4000), abs=0.003)


# ---------------------------------------------------------------- the experiments


@pytest.fixture(scope="module")
def base() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"x": rng.uniform(0.0, 10.0, 40), "tag": rng.integers(0, 2, 40)}


def add_rows(data: dict[str, np.ndarray], x: float, rows: int) -> dict[str, np.ndarray]:
    return {"x": np.append(data["x"], [x] * rows), "tag": np.append(data["tag"], [0] * rows)}


def hits(p: Plan, data: dict[str, np.ndarray], event: Callable[[list[Statistic]], bool]) -> int:
    return sum(event(p.release(data)) for _ in range(N))


def run(p: Plan, d: dict[str, np.ndarray], d_prime: dict[str, np.ndarray],
        event: Callable[[list[Statistic]], bool], delta: float = 0.0) -> float:
    return epsilon_lower_bound(hits(p, d, event), hits(p, d_prime, event), delta)


def value_at_least(threshold: float, index: int = 0) -> Callable[[list[Statistic]], bool]:
    return lambda stats: stats[index].value >= threshold


def check(p: Plan, d: dict[str, np.ndarray], d_prime: dict[str, np.ndarray],
          event: Callable[[list[Statistic]], bool]) -> tuple[float, float]:
    """eps_lb of the real plan (must stay within the claim) and of its half-noise variant (must exceed it)."""
    claimed = p.cost.epsilon
    real = run(p, d, d_prime, event)
    mis_scaled = run(p.with_scale_factor(0.5), d, d_prime, event)
    assert real <= claimed, f"eps_lb {real:.3f} exceeds the claimed {claimed:.3f}"
    assert mis_scaled > claimed, f"the half-noise mechanism went undetected: eps_lb {mis_scaled:.3f}"
    return real, mis_scaled


@pytest.mark.parametrize("unit", [1, 2])
def test_count_is_private_empirically(base: dict[str, np.ndarray], unit: int) -> None:
    """Discrete Laplace count; D' adds one person with `unit` rows; S = {output >= count(D')}."""
    p = plan(Query((Aggregate(AggKind.COUNT),)), COLUMNS, epsilon=EPSILON, delta=0.0, unit=unit)
    d_prime = add_rows(base, 5.0, unit)
    check(p, base, d_prime, value_at_least(len(d_prime["x"])))


@pytest.mark.parametrize("unit", [1, 2])
def test_sum_is_private_empirically(base: dict[str, np.ndarray], unit: int) -> None:
    """Laplace sum; D' adds `unit` rows beyond the upper bound, clamped to it; S = {output >= sum(D')}."""
    p = plan(Query((Aggregate(AggKind.SUM, "x"),)), COLUMNS, epsilon=EPSILON, delta=0.0, unit=unit)
    d_prime = add_rows(base, 25.0, unit)
    check(p, base, d_prime, value_at_least(float(np.clip(d_prime["x"], 0.0, 10.0).sum())))


def test_histogram_is_private_empirically(base: dict[str, np.ndarray]) -> None:
    """Discrete Laplace histogram; D' adds a row in bin [5, 7.5); S = {that bin's output >= its count in D'}."""
    p = plan(Query((Aggregate(AggKind.HISTOGRAM, "x", edges=EDGES),)), COLUMNS, epsilon=EPSILON, delta=0.0, unit=1)
    d_prime = add_rows(base, 6.0, 1)
    in_bin = int(np.count_nonzero((d_prime["x"] >= 5.0) & (d_prime["x"] < 7.5)))
    check(p, base, d_prime, value_at_least(in_bin, index=2))


def test_grouped_count_is_private_empirically(base: dict[str, np.ndarray]) -> None:
    """count_by_categories over groups; D' adds a row to group 'a'; S = {count of 'a' >= its count in D'}."""
    p = plan(Query((Aggregate(AggKind.COUNT),), group_by=("tag",)), COLUMNS, epsilon=EPSILON, delta=0.0, unit=1)
    d_prime = add_rows(base, 5.0, 1)
    check(p, base, d_prime, value_at_least(int(np.count_nonzero(d_prime["tag"] == 0))))


def test_gaussian_count_is_private_empirically(base: dict[str, np.ndarray]) -> None:
    """Discrete Gaussian count at (1, 1e-6): eps_lb = ln((p'_lower - delta) / p_upper) stays within the claim.

    Half the noise is not detectable with N = 4000 here (the Gaussian's extra
    privacy loss lives in tails of probability near delta), so the teeth are a
    variant with a tenth of the noise (rho 100 times the claim's, true epsilon
    above 10): its probabilities are about 0.93 vs 0.07, so its expected
    eps_lb is about 2.2.
    """
    delta = 1e-6
    p = plan(Query((Aggregate(AggKind.COUNT),)), COLUMNS, epsilon=EPSILON, delta=delta, unit=1)
    d_prime = add_rows(base, 5.0, 1)
    event = value_at_least(len(d_prime["x"]))
    assert run(p, base, d_prime, event, delta) <= p.cost.epsilon
    assert run(p.with_scale_factor(0.1), base, d_prime, event, delta) > p.cost.epsilon


def test_gaussian_sum_is_private_empirically(base: dict[str, np.ndarray]) -> None:
    """Gaussian sum at (1, 1e-6); D' adds a row beyond the upper bound, clamped to it; S = {output >= sum(D')}.

    The correct plan's scale is a few times the sensitivity 10, so p is about
    0.5 vs 0.4 and eps_lb stays near 0. The teeth, as for the discrete
    Gaussian, are a tenth of the noise (scale about half the sensitivity):
    about 0.5 vs 0.02, an expected eps_lb above 2.5.
    """
    delta = 1e-6
    p = plan(Query((Aggregate(AggKind.SUM, "x"),)), COLUMNS, epsilon=EPSILON, delta=delta, unit=1)
    assert p.estimates()[0].mechanism == "gaussian"
    d_prime = add_rows(base, 25.0, 1)
    event = value_at_least(float(np.clip(d_prime["x"], 0.0, 10.0).sum()))
    assert run(p, base, d_prime, event, delta) <= p.cost.epsilon
    assert run(p.with_scale_factor(0.1), base, d_prime, event, delta) > p.cost.epsilon


def test_quantile_is_private_empirically(base: dict[str, np.ndarray]) -> None:
    """Exponential-mechanism median; D' adds a row at the upper bound; S = {output > median of D}.

    Only the bound for the correct mechanism is checked: the exponential
    mechanism's worst-case event is far from any simple threshold event, so a
    2x mis-scaling is not reliably visible at this N.
    """
    p = plan(Query((Aggregate(AggKind.QUANTILE, "x", q=0.5),)), COLUMNS, epsilon=EPSILON, delta=0.0, unit=1)
    d_prime = add_rows(base, 10.0, 1)
    median = float(np.median(base["x"]))
    assert run(p, base, d_prime, lambda stats: stats[0].value > median) <= p.cost.epsilon
