"""The privacy cost of a training plan, known before it runs, from opendp's own maps.

Each round releases one noisy sum: the holders' model updates, each clipped to
L2 norm C (``clipping_norm``), summed, plus Gaussian noise of standard
deviation ``noise_multiplier * C`` on every coordinate (the server divides by
the number of updates afterwards, which is post-processing). That release is
opendp's ``make_gaussian`` on float vectors under the L2 distance with scale
``noise_multiplier * C``; the same measurement draws the noise at run time
(``round_measurement``), so what is priced is what runs. Rounds compose
(``make_composition``, zCDP) and the total converts to (epsilon, delta) with
``make_zCDP_to_approxDP`` and ``make_fix_delta``.

The privacy unit, and so the sensitivity d_in each round is priced at:

    PERSON (default)  one person's rows added, removed or changed. A person's rows are all at one holder
                      (RAND HIE: the site is part of the person key), and changing them can move that
                      holder's clipped update anywhere in the ball of radius C, so the sum moves by at
                      most 2C: d_in = 2C, rho = 2 / noise_multiplier**2 per round.
    HOLDER            one holder's whole update present or absent (Flower's and McMahan et al.'s
                      "client-level" DP): d_in = C, rho = 1 / (2 noise_multiplier**2) per round. This is
                      a quarter of the PERSON cost and does NOT bound what one person's change reveals
                      while their holder keeps taking part; use it only to compare with Flower's figures.

Not amplified by sampling: a plan that asks fewer than all holders per round is
priced as if all took part (conservative). A round whose update is not
released (too few holders answered) spends nothing, so a run spends at most
its plan's cost. The per-round federated metrics are not covered (see
``TrainingPlan.release_metrics_under_dp``).
"""

from __future__ import annotations

import enum
import functools
import math

import opendp.prelude as dp

from fl_server.plan import TrainingPlan

dp.enable_features("contrib")

#: zCDP rho above which opendp's conversion to (epsilon, delta) overflows; such a plan costs infinity.
MAX_RHO = 50_000.0


class Unit(str, enum.Enum):
    PERSON = "person"
    HOLDER = "holder"


_VECTORS = dp.vector_domain(dp.atom_domain(T=float, nan=False))
_L2 = dp.l2_distance(T=float)


@functools.lru_cache(maxsize=64)
def _gaussian(scale: float) -> dp.Measurement:
    return dp.m.make_gaussian(_VECTORS, _L2, scale=scale)


def round_measurement(plan: TrainingPlan) -> dp.Measurement:
    """The Gaussian mechanism one round runs on the flattened sum of clipped updates (DP plans only)."""
    if not plan.dp:
        raise ValueError("the plan adds no noise")
    return _gaussian(float(plan.noise_multiplier * plan.clipping_norm))


def sensitivity(plan: TrainingPlan, unit: Unit = Unit.PERSON) -> float:
    """The L2 distance between neighbouring rounds' sums of clipped updates, for the privacy unit."""
    return (2.0 if unit is Unit.PERSON else 1.0) * plan.clipping_norm


def composed_measurement(plan: TrainingPlan, rounds: int, delta: float | None = None) -> dp.Measurement:
    """``rounds`` releases composed and converted to (epsilon, delta): the measurement a cost is the map of."""
    parts = [round_measurement(plan)] * rounds
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.c.make_composition(parts)),
                               plan.delta if delta is None else delta)


def rho_after_rounds(plan: TrainingPlan, rounds: int, unit: Unit = Unit.PERSON) -> float:
    if rounds <= 0:
        return 0.0
    if not plan.dp:
        return math.inf
    return float(dp.c.make_composition([round_measurement(plan)] * rounds).map(sensitivity(plan, unit)))


def epsilon_after_rounds(plan: TrainingPlan, rounds: int, delta: float | None = None,
                         unit: Unit = Unit.PERSON) -> float:
    """Epsilon (at ``delta``, default the plan's) spent by ``rounds`` released rounds: 0 for none,
    infinity without DP or beyond what opendp can convert."""
    if rounds <= 0:
        return 0.0
    if not plan.dp:
        return math.inf
    return _epsilon(float(plan.noise_multiplier * plan.clipping_norm), sensitivity(plan, unit), rounds,
                    plan.delta if delta is None else delta)


@functools.lru_cache(maxsize=1024)
def _epsilon(scale: float, d_in: float, rounds: int, delta: float) -> float:
    """``composed_measurement``'s map at ``d_in``, kept: a job asks for the same price at the start and round by
    round (building and mapping the composition took about 8 ms of a 10-round job's start)."""
    composed = dp.c.make_composition([_gaussian(scale)] * rounds)
    if float(composed.map(d_in)) > MAX_RHO:
        return math.inf
    epsilon, _ = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(composed), delta).map(d_in)
    return float(epsilon)


def plan_cost(plan: TrainingPlan, delta: float | None = None, unit: Unit = Unit.PERSON) -> tuple[float, float]:
    """(epsilon, delta) of the whole plan, every round released; (inf, delta) for a plan without DP."""
    d = plan.delta if delta is None else delta
    return epsilon_after_rounds(plan, plan.rounds, d, unit), d
