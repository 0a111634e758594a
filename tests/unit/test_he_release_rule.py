"""The HE release rule as a library: contributions, balance on both sides of the ratio, the noise it sets, the bits
it states, magnitudes, and the opendp noise it adds. No server (the attacks through the real server are in
tests/adversarial/test_he_release_attacks.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_engine import noise
from sandbox import he_release
from sandbox.domain import ColumnSchema, ColumnType, DatasetSchema, Level
from sandbox.errors import SandboxError
from sandbox.he_release import ReleaseRule

SCHEMA = DatasetSchema("t", (
    ColumnSchema("age", ColumnType.INTEGER, Level.OPEN, lower=18, upper=100),
    ColumnSchema("pay", ColumnType.INTEGER, Level.INTERNAL, lower=-2, upper=9),
    ColumnSchema("limit", ColumnType.INTEGER, Level.INTERNAL, lower=0, upper=1_000_000),
    ColumnSchema("sex", ColumnType.INTEGER, Level.OPEN, lower=0, upper=1),
    ColumnSchema("ratio", ColumnType.FLOAT, Level.INTERNAL, lower=0, upper=2),
))
RULE = ReleaseRule()


def check(public: dict[str, float], private: tuple[float, ...] = (1.0,), bias: float = 0.0,
          rule: ReleaseRule = RULE) -> he_release.ReleaseReview:
    return he_release.check(tuple(public.items()), private, bias, SCHEMA, rule)


def test_contributions_shares_and_noise() -> None:
    rev = check({"age": 0.01, "pay": 0.1, "limit": -1e-6})
    assert [t.contribution for t in rev.terms] == pytest.approx([0.82, 1.1, 1.0])
    assert sum(t.share for t in rev.terms) == pytest.approx(1.0)
    assert rev.contribution_range == pytest.approx(2.92)
    # sigma = max(R / 20, largest integer step / 1) = max(0.146, 0.1)
    assert rev.noise_sd == pytest.approx(2.92 / 20)
    assert rev.max_abs_plain == pytest.approx(1.0 + 0.9 + 1.0)


def test_a_large_integer_step_sets_the_noise_floor() -> None:
    """A binary column's one step is its whole contribution: the noise is at least that step."""
    rev = check({"sex": 1.0, "age": 0.1 / 82 * 10, "pay": 0.1})
    assert rev.noise_sd == pytest.approx(1.0)
    assert rev.step_tv_per_entity == pytest.approx(math.erf(math.sqrt(2) / (2 * math.sqrt(2))))
    # A float column's step is not bounded (documented): its contribution counts only through R.
    rev = check({"ratio": 0.5, "age": 1 / 82, "pay": 1 / 11})
    assert rev.noise_sd == pytest.approx(rev.contribution_range / 20)


@pytest.mark.parametrize("ratio, accepted", [(10.0, True), (10.0 * (1 + 1e-9), False), (9.99, True), (1e7, False)])
def test_balance_on_both_sides_of_the_ratio(ratio: float, accepted: bool) -> None:
    public = {"age": 1 / 82, "pay": 1 / 11, "limit": ratio / 1_000_000}  # contributions 1, 1, ratio
    if accepted:
        assert check(public).terms[2].contribution == pytest.approx(ratio)
    else:
        with pytest.raises(SandboxError, match="unbalanced: 'limit' can move the score"):
            check(public)


def test_other_refusals() -> None:
    with pytest.raises(SandboxError, match="at least 3 sandbox columns"):
        check({"age": 0.01, "pay": 0.1})
    with pytest.raises(SandboxError, match="zero-weight sandbox column"):
        check({"age": 0.01, "pay": 0.1, "limit": 0.0, "sex": 0.5})
    with pytest.raises(SandboxError, match="finite"):
        check({"age": math.nan, "pay": 0.1, "limit": 1e-6})
    with pytest.raises(SandboxError, match="private weights"):
        check({"age": 0.01, "pay": 0.1, "limit": 1e-6}, private=(2.0**20 * 1.01,))
    check({"age": 0.01, "pay": 0.1, "limit": 1e-6}, private=(2.0**20,))


def test_magnitudes_on_both_sides_of_what_the_profiles_carry() -> None:
    public = {"age": 1 / 82, "pay": 1 / 11, "limit": 1 / 1_000_000}
    rev = check(public)
    headroom = he_release.MAX_PLAIN - rev.max_abs_plain - he_release.TAIL_SIGMAS * rev.noise_sd
    check(public, bias=headroom * 0.999)
    with pytest.raises(SandboxError, match="weights and bias too large"):
        check(public, bias=headroom * 1.001 + 1)
    with pytest.raises(SandboxError, match="weights and bias too large"):
        check({k: v * 1e9 for k, v in public.items()})


def test_bits_bound() -> None:
    # Both bounds, and the smaller one chosen: at R / sigma = 20 McKellips' bound (2.55 bits) is the tighter.
    assert he_release.bits_bound(20.0) == pytest.approx(math.log2(1 + 20 / math.sqrt(2 * math.pi * math.e)))
    assert he_release.bits_bound(0.5) == pytest.approx(0.5 * math.log2(1 + 0.25 / 4))
    assert 2.5 < he_release.bits_bound(20.0) < 2.6
    rev = check({"age": 1 / 82, "pay": 1 / 11, "limit": 1 / 1_000_000})
    assert rev.bits_per_score == pytest.approx(he_release.bits_bound(20.0))
    assert rev.bits_per_entity == pytest.approx(he_release.bits_bound(20.0 * math.sqrt(2)))


def test_rule_settings_are_checked() -> None:
    for bad in (dict(range_ratio=0), dict(step_ratio=-1), dict(max_contribution_ratio=0.5), dict(scores_per_entity=0)):
        with pytest.raises(ValueError):
            ReleaseRule(**bad)  # type: ignore[arg-type]


def test_release_noise_is_gaussian_with_the_stated_sd() -> None:
    plain = np.linspace(-3, 3, 20_000)
    noisy = noise.release_noise(plain, 0.7)
    diff = noisy - plain
    # 20,000 draws: the sd within 3% and the mean within 0.05 sigma (> 5 standard errors each).
    assert np.std(diff) == pytest.approx(0.7, rel=0.03)
    assert abs(np.mean(diff)) < 0.05 * 0.7
    assert np.mean(np.abs(diff) < 0.7) == pytest.approx(0.6827, abs=0.02)  # Gaussian, not Laplace (0.76)
    assert len(np.unique(diff)) == len(diff)  # fresh noise on every entry
    again = noise.release_noise(plain, 0.7)
    assert not np.array_equal(again, noisy)


def test_a_trained_models_small_terms_are_folded_into_the_bias() -> None:
    """RegisterTrainedModel's conversion: a term dominated more than 10:1 by the largest is replaced by its
    mid-range value; what is left passes the balance rule, and every row's score moves by at most half of each
    folded term. A model the rule accepts, or one that would keep fewer than 3 columns, is left as it is."""
    # Dominated: contributions 1, 1, 9.5, 0.9; 9.5 > 10 x 0.9. As given, the balance rule refuses the model.
    dominated = {"age": 1 / 82, "pay": 1 / 11, "limit": 9.5 / 1_000_000, "sex": 0.9}
    with pytest.raises(SandboxError, match="unbalanced: 'limit' can move the score .* as far as 'sex'"):
        check(dominated)
    kept, bias, dropped = he_release.fold_small_terms(tuple(dominated.items()), 0.25, SCHEMA, RULE)
    assert [c for c, _ in dropped] == ["sex"] and dropped[0][1] == pytest.approx(0.9)
    assert [c for c, _ in kept] == ["age", "pay", "limit"]
    assert bias == pytest.approx(0.25 + 0.9 * 0.5)  # the folded term at mid-range
    check(dict(kept))
    # For every row the folded model differs from the full one by at most half of each folded contribution.
    both = {**dominated, "ratio": 0.02}  # contribution 0.04: dominated too
    kept, bias, dropped = he_release.fold_small_terms(tuple(both.items()), 0.0, SCHEMA, RULE)
    assert {c for c, _ in dropped} == {"sex", "ratio"}
    check(dict(kept))
    rng = np.random.default_rng(7)
    for _ in range(200):
        row = {"age": rng.integers(18, 101), "pay": rng.integers(-2, 10), "limit": rng.integers(0, 1_000_001),
               "sex": rng.integers(0, 2), "ratio": rng.uniform(0, 2)}
        full = sum(w * row[c] for c, w in both.items())
        folded = bias + sum(w * row[c] for c, w in kept)
        assert abs(full - folded) <= sum(x / 2 for _, x in dropped) + 1e-9
    # Accepted as given, though one term (0.1) is below the noise (0.105): nothing is folded, so 3 columns stay.
    accepted = {"age": 1 / 82, "pay": 1 / 11, "ratio": 0.05}
    check(accepted)
    assert he_release.fold_small_terms(tuple(accepted.items()), 0.1, SCHEMA, RULE) == (
        tuple(accepted.items()), 0.1, [])
    # Folding would leave 2 columns: left as it is, and refused with the two columns named.
    two_left = {"age": 1 / 82, "pay": 1 / 11, "limit": 0.05 / 1_000_000}
    assert he_release.fold_small_terms(tuple(two_left.items()), 0.0, SCHEMA, RULE) == (
        tuple(two_left.items()), 0.0, [])
    with pytest.raises(SandboxError, match="unbalanced: '(age|pay)' can move the score .* as far as 'limit'"):
        check(two_left)


def test_the_noise_reservoir_hands_out_each_sample_once_under_concurrency() -> None:
    """Eight threads take from one reservoir at once (with its background filler running): no sample appears twice
    (values are multiples of 2**-40 spread over about 2**43 of them: a chance repeat among 16,000 has probability
    about 1e-5), and together they are standard normal."""
    import threading

    reservoir = noise.NoiseReservoir(capacity=4096, chunk=1024)
    got: list[np.ndarray] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(4):
            part = reservoir.take(500)
            with lock:
                got.append(part)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    every = np.concatenate(got)
    assert len(every) == 8 * 4 * 500
    assert len(np.unique(every)) == len(every)
    assert abs(float(np.mean(every))) < 0.04 and abs(float(np.std(every)) - 1.0) < 0.03  # 16,000: 5 standard errors
