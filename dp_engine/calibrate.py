"""Choose every primitive's noise scale from one global parameter so the composed cost meets the budget.

For each distinct primitive i, opendp's own map gives its cost at scale 1 for
d_in = unit: c_i (epsilon under pure DP, rho under zCDP). With a global s,
primitive i gets scale s * c_i (pure: epsilon is proportional to 1/scale, so
each costs 1/s) or s * sqrt(c_i) (zCDP: rho is proportional to 1/scale**2,
so each costs 1/s**2): an even split of the budget. All primitives are then
composed with `dp.c.make_composition` (and, when delta > 0, converted with
`make_zCDP_to_approxDP` and `make_fix_delta`), and `dp.binary_search` (the
search behind `dp.binary_search_param`, with a predicate that treats a map
opendp cannot evaluate as too costly) finds the smallest s whose composed
map(unit) fits the requested epsilon.
The reported cost is that composed measurement's own map(unit); no privacy
arithmetic is done here. With delta > 0 a plan never spends more than
rho = MAX_RHO (epsilon about 5e4), where opendp's conversion overflows; asking
for more gives a plan that costs less than asked, never more.

The privacy unit: `unit` is the most rows one person can contribute. The
sandbox rejects at import any person with more rows than declared, so
neighbouring datasets (one person added or removed) are at symmetric
distance at most `unit`, and every map is evaluated at d_in = unit.

Calibrations are cached on the query's shape: the primitives (aggregates,
group counts, clamp bounds, quantile candidates), epsilon, delta and unit.
Filters are not part of the key at all, because they run before any
measurement and change neither the measurements nor their cost.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import opendp.prelude as dp

from dp_engine.primitives import Primitive, Slot
from dp_engine.spec import Cost, QueryError

Layouts = tuple[tuple[Slot, ...], ...]

_CACHE_SIZE = 256
#: Largest zCDP rho a plan may spend (epsilon about 5e4): opendp's conversion to (epsilon, delta)
#: overflows a little above it.
MAX_RHO = 50_000.0


@dataclass(frozen=True)
class Calibration:
    """A calibrated set of primitives: the global parameter `s` and the cost it buys."""

    layouts: Layouts
    zcdp: bool
    delta: float
    unit: int
    unit_costs: dict[Primitive, float] = field(compare=False)
    s: float
    cost: Cost
    _built: dict[tuple[Primitive, float], dp.Measurement] = field(default_factory=dict, compare=False, repr=False)

    def scale(self, primitive: Primitive, factor: float = 1.0) -> float:
        return scale_at(self.s, self.unit_costs[primitive], self.zcdp) * factor

    def measurement(self, primitive: Primitive, factor: float = 1.0) -> dp.Measurement:
        """What a release runs for the primitive at its calibrated scale times `factor`, built once.

        That is `primitive.runner`: the priced measurement (`build`) without a leading 1-stable cast.
        As a guard, opendp's own maps must agree that it costs no more than the priced one at d_in = unit.
        """
        key = (primitive, factor)
        if key not in self._built:
            scale = self.scale(primitive, factor)
            runner = primitive.runner(scale, self.zcdp)
            if runner.map(self.unit) > primitive.build(scale, self.zcdp).map(self.unit):
                raise RuntimeError(f"the {primitive.kind} measurement a release runs costs more than the priced one")
            self._built[key] = runner
        return self._built[key]

    def composed(self) -> dp.Measurement:
        """The composed measurement whose map(unit) is `cost`."""
        return compose(self.layouts, self.unit_costs, self.s, self.zcdp, self.delta)


def scale_at(s: float, unit_cost: float, zcdp: bool) -> float:
    return s * math.sqrt(unit_cost) if zcdp else s * unit_cost


def unit_costs(layouts: Layouts, zcdp: bool, unit: int) -> dict[Primitive, float]:
    """Each distinct primitive's cost at scale 1 and d_in = unit, from its own map."""
    distinct = dict.fromkeys(slot.primitive for slots in layouts for slot in slots)
    return {p: float(p.build(1.0, zcdp).map(unit)) for p in distinct}


def compose(layouts: Layouts, costs: dict[Primitive, float], s: float, zcdp: bool, delta: float,
            convert: bool = True) -> dp.Measurement:
    """All primitives at global parameter s, composed (and converted to (epsilon, delta) under zCDP)."""
    built = {p: p.build(scale_at(s, c, zcdp), zcdp) for p, c in costs.items()}
    parts = [built[slot.primitive] for slots in layouts for slot in slots for _ in range(slot.copies)]
    measurement = dp.c.make_composition(parts)
    if zcdp and convert:
        measurement = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta)
    return measurement


@functools.lru_cache(maxsize=_CACHE_SIZE)
def calibrate(layouts: Layouts, epsilon: float, delta: float, unit: int) -> Calibration:
    """The smallest global parameter whose composed cost at d_in = unit is within (epsilon, delta)."""
    zcdp = delta > 0.0
    costs = unit_costs(layouts, zcdp, unit)
    d_out = (epsilon, delta) if zcdp else epsilon

    def build(s: float) -> dp.Measurement:
        return compose(layouts, costs, s, zcdp, delta)

    def fits(s: float) -> bool:
        # binary_search_param's predicate, except that a huge rho counts as "does not fit" without
        # asking opendp to convert it (the conversion overflows, and its error is slow to raise).
        # Saying "does not fit" can only move the search towards more noise, never less.
        try:
            if zcdp and compose(layouts, costs, s, zcdp, delta, convert=False).map(unit) > min(2 * epsilon + 100,
                                                                                                 MAX_RHO):
                return False
            return bool(build(s).check(unit, d_out))
        except dp.OpenDPException:
            return False

    s = None
    for bounds in (_bracket(layouts, epsilon, delta), (1e-12, 1e15)):
        try:
            s = dp.binary_search(fits, bounds=bounds, T=float)
            break
        except (ValueError, dp.OpenDPException):
            continue
    if s is None:
        raise QueryError("no noise scale meets this epsilon and delta")
    measurement = build(s)
    extra: dict[str, float] = {}
    if zcdp:
        spent_epsilon, spent_delta = measurement.map(unit)
        extra["rho"] = float(compose(layouts, costs, s, zcdp, delta, convert=False).map(unit))
    else:
        spent_epsilon, spent_delta = measurement.map(unit), 0.0
    cost = Cost(epsilon=float(spent_epsilon), delta=float(spent_delta), extra=extra)
    return Calibration(layouts, zcdp, delta, unit, costs, float(s), cost)


def _bracket(layouts: Layouts, epsilon: float, delta: float) -> tuple[float, float]:
    """A search range around the even split (a guess only; the search and the maps decide)."""
    k = sum(slot.copies for slots in layouts for slot in slots)
    if delta == 0.0:
        return (k / epsilon / 2, 2 * k / epsilon)
    log_term = -math.log(delta)
    rho_low = (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2  # classic rho + 2 sqrt(rho log 1/delta)
    return (math.sqrt(k / epsilon) / 2, 2 * math.sqrt(k / rho_low))
