"""dp_engine.counts: the catalogue's row count, released once with opendp's discrete Laplace (no network)."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest

from dp_engine.counts import CountRelease, count_measurement, release_count, round_to_significant

dp.enable_features("contrib")


def laplace(scale: float) -> dp.Measurement:
    return dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=scale)


@pytest.mark.parametrize(("epsilon", "unit"), [(0.1, 1), (0.1, 5), (0.5, 2), (1.0, 1)])
def test_the_scale_is_the_smallest_that_keeps_the_claimed_epsilon(epsilon: float, unit: int) -> None:
    release = release_count(1234, epsilon=epsilon, unit=unit)
    assert isinstance(release, CountRelease)
    assert release.epsilon_spent <= epsilon and release.scale == pytest.approx(unit / epsilon, rel=1e-6)
    # Both sides of the bound: the chosen scale passes the measurement's own check, a slightly smaller one fails.
    assert laplace(release.scale).check(unit, epsilon)
    assert not laplace(release.scale * 0.99).check(unit, epsilon)
    assert count_measurement(epsilon=epsilon, unit=unit).map(unit) <= epsilon  # the measurement itself, by opendp


def test_empirical_epsilon_matches_the_claim() -> None:
    """Neighbouring counts 50 and 51 (unit 1) at epsilon 1: P(release <= 50) differs by exactly e^1.

    For the discrete Laplace the one-sided tail is the event that attains the bound; values below 100 are not
    rounded and none is clamped, so the release is the noisy count itself. P(<= 50) is 0.731 and 0.269; with
    8,000 draws a side the log ratio's standard error is sqrt(0.269/(8000*0.731) + 0.731/(8000*0.269)) ~ 0.02,
    so the bounds are 5 standard errors either side of the claim.
    """
    draws = 8_000
    low = np.array([release_count(50, epsilon=1.0, unit=1).value for _ in range(draws)])
    high = np.array([release_count(51, epsilon=1.0, unit=1).value for _ in range(draws)])
    empirical = math.log(np.mean(low <= 50) / np.mean(high <= 50))
    assert 0.9 < empirical < 1.1
    assert low.min() >= 0 and len(set(low.tolist())) > 5  # noisy, not constant


def test_the_release_is_clamped_and_rounded_to_two_significant_digits() -> None:
    zeros = [release_count(0, epsilon=0.1, unit=1).value for _ in range(200)]
    assert min(zeros) == 0 and max(zeros) > 0  # never negative, yet noisy
    for _ in range(50):
        value = release_count(48_790, epsilon=0.1, unit=1).value
        assert value % 1000 == 0 and abs(value - 48_790) <= 1_000  # |noise| > 290 has probability ~e^-29
    assert [round_to_significant(n) for n in (0, -3, 7, 57, 99, 149, 150, 1049, 1050, 48_790)] == [
        0, 0, 7, 57, 99, 150, 150, 1000, 1100, 49_000]


@pytest.mark.parametrize("kw", [dict(epsilon=0.0, unit=1), dict(epsilon=float("nan"), unit=1),
                                dict(epsilon=0.1, unit=0), dict(epsilon=0.1, unit=True)])
def test_bad_parameters_are_refused(kw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        release_count(10, **kw)


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError):
        release_count(-1, epsilon=0.1, unit=1)
