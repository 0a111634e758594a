"""dp_engine's defence against a timing side channel: a release does the same per-row work whatever its filters keep.

No test here measures or asserts a time (STYLE.md 14). They check what makes the work independent
of the data: `prepare` builds, beside each aggregate's kept arrays, their complement (every row the
kept arrays leave out, as in-domain values of the same kind), kept + complement always cover exactly
n rows, the kept arrays are exactly what they were before, and `Plan.release` runs every slot's
measurement once on the complement and discards the output. An ungrouped sum (also a mean's) needs
no complement: it reads one value for every row, the clamped value where the row is kept and 0.0
where it is not.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dp_engine import (
    AggKind,
    Aggregate,
    CategoricalColumn,
    ColumnInfo,
    Filter,
    NumericColumn,
    Op,
    Query,
    plan,
    prepare,
)
from dp_engine.calibrate import Calibration
from dp_engine.prepare import _RADIX_BUCKETS, Prepared, _split_by_group, cell_dtype


plan_module = importlib.import_module("dp_engine.plan")  # `dp_engine.plan` the attribute is the function
statistics_base = importlib.import_module("dp_engine.statistics.base")

N_ROWS = 1500
REGIONS = ("north", "south", "east", "west")
SEXES = ("f", "m")
COLUMNS: dict[str, ColumnInfo] = {
    "age": NumericColumn("age", 18.0, 90.0, integer=True),
    "income": NumericColumn("income", 0.0, 100_000.0),
    "region": CategoricalColumn("region", REGIONS),
    "sex": CategoricalColumn("sex", SEXES),
}
EDGES = (20_000.0, 50_000.0)
AGGREGATES = {
    "count": Aggregate(AggKind.COUNT),
    "sum": Aggregate(AggKind.SUM, "income"),
    "sum of an integer column": Aggregate(AggKind.SUM, "age"),
    "mean": Aggregate(AggKind.MEAN, "income"),
    "quantile": Aggregate(AggKind.QUANTILE, "income", q=0.5),
    "histogram": Aggregate(AggKind.HISTOGRAM, "income", edges=EDGES),
}
FILTERS = {
    "none": (),  # no filter at all: every row kept (bar missing values and groups)
    "keeps all": (Filter("age", Op.GE, 0.0),),
    "keeps none": (Filter("age", Op.LT, 0.0),),
    "keeps some": (Filter("age", Op.GE, 40.0),),
    "keeps some, NaN fails": (Filter("income", Op.GT, 30_000.0), Filter("sex", Op.EQ, "f")),
    "in, many values": (Filter("age", Op.IN, tuple(float(a) for a in range(20, 60, 3))),),
}
GROUPINGS = {"ungrouped": (), "by region": ("region",), "by region and sex": ("region", "sex")}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240612)
    income = rng.uniform(-5_000, 105_000, N_ROWS)
    income[rng.random(N_ROWS) < 0.05] = np.nan
    region = rng.integers(0, len(REGIONS), N_ROWS).astype(np.int16)
    region[rng.random(N_ROWS) < 0.03] = -1
    data = {"age": rng.integers(18, 91, N_ROWS).astype(np.int64), "income": income, "region": region,
            "sex": rng.integers(0, 2, N_ROWS).astype(np.int16)}
    for array in data.values():
        array.setflags(write=False)  # as the server hands them over (memory-mapped)
    return data


# ---------------------------------------------------------------- the reference: the arrays as they always were


def reference_mask(filters: tuple[Filter, ...], group_by: tuple[str, ...], data: dict[str, np.ndarray]) -> np.ndarray:
    """Rows that pass the filters and have a declared code in every group-by column (plain numpy)."""
    age, income, region, sex = data["age"], data["income"], data["region"], data["sex"]
    truths: dict[tuple[str, Op], Callable[[Any], np.ndarray]] = {
        ("age", Op.GE): lambda v: age >= v, ("age", Op.LT): lambda v: age < v,
        ("age", Op.IN): lambda v: np.isin(age, np.asarray(v)), ("income", Op.GT): lambda v: income > v,
        ("sex", Op.EQ): lambda v: sex == SEXES.index(v),
    }
    mask = np.ones(N_ROWS, dtype=bool)
    for flt in filters:
        mask &= truths[flt.column, flt.op](flt.value)
    if "region" in group_by:
        mask &= region >= 0
    return mask


def reference_codes(group_by: tuple[str, ...], data: dict[str, np.ndarray]) -> np.ndarray:
    """Every row's group code; 0 (an in-domain code) for a row with a missing one."""
    codes = np.zeros(N_ROWS, dtype=np.int64)
    for name in group_by:
        codes = codes * len(COLUMNS[name].categories) + data[name]  # type: ignore[union-attr]
    return np.where(reference_mask((), group_by, data), codes, 0)


def groups_of(group_by: tuple[str, ...]) -> int:
    return int(np.prod([len(COLUMNS[name].categories) for name in group_by]))  # type: ignore[union-attr]


def check_inputs(agg: Aggregate, filters: tuple[Filter, ...], group_by: tuple[str, ...],
                 data: dict[str, np.ndarray]) -> None:
    """Kept arrays exactly as before; the complement holds every other row, in-domain; together n rows."""
    (inputs,) = prepare(Query((agg,), filters, group_by), COLUMNS, data).inputs
    mask = reference_mask(filters, group_by, data)
    codes = reference_codes(group_by, data)
    groups = groups_of(group_by)
    if agg.kind is AggKind.COUNT:
        assert inputs.values == () and inputs.complement_values is None
        if group_by:
            assert np.array_equal(inputs.cells, codes[mask])
            assert inputs.cells.dtype == inputs.complement_cells.dtype == cell_dtype(groups)  # type: ignore[union-attr]
            assert np.all((inputs.complement_cells >= 0) & (inputs.complement_cells < groups))  # type: ignore[operator]
        else:
            assert inputs.cells.dtype == inputs.complement_cells.dtype == np.bool_  # type: ignore[union-attr]
            assert len(inputs.cells) == np.count_nonzero(mask)  # type: ignore[arg-type]
        assert len(inputs.cells) + len(inputs.complement_cells) == N_ROWS  # type: ignore[arg-type]
        return
    column = COLUMNS[agg.column]
    assert isinstance(column, NumericColumn)
    raw = data[agg.column].astype(np.float64)
    kept = mask & ~np.isnan(raw)
    filled = np.where(np.isnan(raw), column.lower, raw)  # the complement's stand-in for a missing value
    if agg.kind is AggKind.HISTOGRAM:
        nbins = len(agg.edges) + 1
        cells = np.searchsorted(agg.edges, filled, side="right") + codes * nbins
        assert np.array_equal(inputs.cells, cells[kept])
        assert np.array_equal(inputs.complement_cells, cells[~kept])  # every row left out, in row order
        dtype = cell_dtype(groups * nbins)
        assert inputs.cells.dtype == inputs.complement_cells.dtype == dtype  # type: ignore[union-attr]
        return
    summed = agg.kind in (AggKind.SUM, AggKind.MEAN)
    values = np.clip(filled, column.lower, column.upper) if summed else filled  # a sum's runner reads clamped values
    if summed and not group_by:  # every row: its clamped value if kept, else 0.0; no complement
        (got,) = inputs.values
        assert got.dtype == np.float64 and got.flags.writeable and len(got) == N_ROWS
        assert np.array_equal(got, np.where(kept, values, 0.0)) and inputs.complement_values is None
        assert got.sum() == pytest.approx(np.clip(raw[kept], column.lower, column.upper).sum())
    elif summed and groups <= statistics_base.MASKED_GROUPS:  # one masked array of n per group; no complement
        assert len(inputs.values) == groups and inputs.complement_values is None
        for g, got in enumerate(inputs.values):
            assert got.dtype == np.float64 and got.flags.writeable and len(got) == N_ROWS
            assert np.array_equal(got, np.where(kept & (codes == g), values, 0.0))
    else:
        # A sum's split keeps row order within each group; a quantile's parts are each in ascending order.
        arrange = np.sort if agg.kind is AggKind.QUANTILE else (lambda a: a)
        expected = [arrange(values[kept & (codes == g)]) for g in range(groups)]
        assert len(inputs.values) == groups
        for got, want in zip(inputs.values, expected):
            assert got.dtype == np.float64 and got.flags.writeable and np.array_equal(got, want)
        rest = inputs.complement_values
        assert rest is not None and rest.dtype == np.float64 and rest.flags.writeable and not np.isnan(rest).any()
        assert np.array_equal(rest, arrange(values[~kept]))
        assert sum(len(v) for v in inputs.values) + len(rest) == N_ROWS
    if agg.kind is AggKind.MEAN:
        if group_by:
            assert np.array_equal(inputs.cells, codes[kept])
            assert np.array_equal(inputs.complement_cells, codes[~kept])
        else:  # a count reads the length: two slices of one array of zeros
            assert len(inputs.cells) == np.count_nonzero(kept)  # type: ignore[arg-type]
            assert inputs.cells.base is inputs.complement_cells.base  # type: ignore[union-attr]
        assert len(inputs.cells) + len(inputs.complement_cells) == N_ROWS  # type: ignore[arg-type]
    else:
        assert inputs.cells is None and inputs.complement_cells is None


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("filtering", sorted(FILTERS))
@pytest.mark.parametrize("kind", sorted(AGGREGATES))
def test_kept_arrays_are_unchanged_and_with_the_complement_cover_every_row(
        data: dict[str, np.ndarray], kind: str, filtering: str, grouping: str) -> None:
    check_inputs(AGGREGATES[kind], FILTERS[filtering], GROUPINGS[grouping], data)


@pytest.mark.parametrize("grouping", ["by region", "by region and sex"])
@pytest.mark.parametrize("filtering", sorted(FILTERS))
@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_grouped_sums_over_more_groups_than_masked_split_by_group(
        data: dict[str, np.ndarray], kind: str, filtering: str, grouping: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MASKED_GROUPS groups a sum reads its values split by group, and the complement."""
    monkeypatch.setattr(statistics_base, "MASKED_GROUPS", 1)
    check_inputs(AGGREGATES[kind], FILTERS[filtering], GROUPINGS[grouping], data)


def test_the_filters_of_the_cases_keep_what_their_names_say(data: dict[str, np.ndarray]) -> None:
    """Otherwise the cases above would not cover both ends."""
    assert reference_mask(FILTERS["keeps all"], (), data).all()
    assert not reference_mask(FILTERS["keeps none"], (), data).any()
    some = reference_mask(FILTERS["keeps some"], ("region",), data)
    assert 0 < np.count_nonzero(some) < N_ROWS


def test_missing_values_and_groups_go_to_the_complement_as_in_domain_values() -> None:
    income = np.array([np.nan, 5.0, np.nan, 7.0, 1e9])
    region = np.array([0, -1, 1, 3, 9], dtype=np.int64)  # -1 missing, 9 undeclared
    data = {"income": income, "region": region}
    query = Query((Aggregate(AggKind.SUM, "income"), Aggregate(AggKind.COUNT)), group_by=("region",))
    total, count = prepare(query, COLUMNS, data).inputs
    # A few groups: one masked array per group, 0.0 for every row not in it (missing values and groups included)
    assert [list(v) for v in total.values] == [[0.0] * 5, [0.0] * 5, [0.0] * 5, [0.0, 0.0, 0.0, 7.0, 0.0]]
    assert total.complement_values is None
    assert list(count.cells) == [0, 1, 3] and list(count.complement_cells) == [0, 0]  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:  # many groups: split, and the complement
        patch.setattr(statistics_base, "MASKED_GROUPS", 1)
        total, _ = prepare(query, COLUMNS, data).inputs
    assert [list(v) for v in total.values] == [[], [], [], [7.0]]
    # NaN as the lower bound, and clamped as everything a sum reads
    assert list(total.complement_values) == [0.0, 5.0, 0.0, 100_000.0]  # type: ignore[arg-type]


@pytest.mark.parametrize("buckets", [2, 5, 256, 257, _RADIX_BUCKETS, _RADIX_BUCKETS + 1])
def test_the_grouped_split_is_a_stable_split_by_key_for_any_keys(buckets: int) -> None:
    """The sentinel-padded radix sort: all keys alike (e.g. every row left out), one byte alike, or mixed."""
    rng = np.random.default_rng(buckets)
    n = 3000
    values = rng.normal(size=n)
    for key in (np.full(n, buckets - 1), np.zeros(n, dtype=np.int64), rng.integers(0, buckets, n),
                np.sort(rng.integers(0, buckets, n)), np.full(n, 255 % buckets)):
        parts = _split_by_group(values, key.astype(np.int32), buckets)
        assert len(parts) == buckets
        for g in {0, 1, 255 % buckets, buckets - 1}:
            assert np.array_equal(parts[g], values[key == g])
        assert sum(len(p) for p in parts) == n


def test_many_value_in_filters_match_like_equality(data: dict[str, np.ndarray]) -> None:
    """`in` with many values: a sorted look-up per row, the same rows as np.isin (NaN and out-of-range never match)."""
    income = data["income"]
    wanted = tuple(float(v) for v in income[:30] if not np.isnan(v)) + (-1.0, float("nan"))
    (count,) = prepare(Query((Aggregate(AggKind.COUNT),), (Filter("income", Op.IN, wanted),)), COLUMNS, data).inputs
    assert len(count.cells) == np.count_nonzero(np.isin(income, wanted))  # type: ignore[arg-type]
    ages = tuple(float(a) for a in range(0, 40)) + (1e300, -1e300, 2.0**63)
    (count,) = prepare(Query((Aggregate(AggKind.COUNT),), (Filter("age", Op.IN, ages),)), COLUMNS, data).inputs
    assert len(count.cells) == np.count_nonzero(data["age"] < 40)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the discarded run


POISON = 987_654_321.0


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """Every measurement call a release makes: (primitive kind, rows read, on a complement?).

    A call on a complement returns a poison value, so a test can check that nothing of it is released.
    """
    calls: list[tuple[str, int, bool]] = []
    complements: set[int] = set()
    real_prepare, real_measurement = plan_module.prepare, Calibration.measurement

    def prepare_spy(*args: Any) -> Prepared:
        prepared = real_prepare(*args)
        for inputs in prepared.inputs:
            complements.update(id(a) for a in (inputs.complement_cells, inputs.complement_values) if a is not None)
        return prepared

    def measurement_spy(self: Calibration, primitive: Any, factor: float = 1.0) -> Callable[[np.ndarray], Any]:
        measurement = real_measurement(self, primitive, factor)

        def run(array: np.ndarray) -> Any:
            out = measurement(array)
            complement = id(array) in complements
            calls.append((primitive.kind, len(array), complement))
            if complement:
                return [POISON] * len(out) if isinstance(out, list) else POISON
            return out

        return run

    monkeypatch.setattr(plan_module, "prepare", prepare_spy)
    monkeypatch.setattr(Calibration, "measurement", measurement_spy)
    return calls


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("filtering", ["keeps all", "keeps none", "keeps some", "keeps some, NaN fails"])
def test_release_runs_each_measurement_on_the_complement_last_and_drops_it(
        data: dict[str, np.ndarray], recorded: list[tuple[str, int, bool]], filtering: str, grouping: str) -> None:
    group_by = GROUPINGS[grouping]
    aggregates = tuple(AGGREGATES[k] for k in ("count", "sum", "mean", "quantile", "histogram"))
    p = plan(Query(aggregates, FILTERS[filtering], group_by), COLUMNS, epsilon=1e6, delta=0.0, unit=1)
    stats = p.release(data)

    slots = [slot for slots in p.calibration.layouts for slot in slots]
    masked = not group_by or groups_of(group_by) <= statistics_base.MASKED_GROUPS
    covering = [masked and slot.primitive.kind == "sum" for slot in slots]  # reads every row: no complement
    real = [c for c in recorded if not c[2]]
    discarded = [c for c in recorded if c[2]]
    assert recorded == real + discarded  # every discarded call comes after every real one
    assert [kind for kind, _, _ in discarded] == [slot.primitive.kind for slot, all_rows in zip(slots, covering)
                                                  if not all_rows]  # one per slot without a covering input
    assert len(real) == sum(slot.copies for slot in slots)  # the real calls are as before: one per group and slot
    # What makes the work independent of the filter: per slot, real and discarded calls read n rows in all.
    read, thrown = iter(real), iter(discarded)
    for slot, all_rows in zip(slots, covering):
        if all_rows:  # every copy (one per group) reads a masked array of all n rows
            assert [next(read)[1] for _ in range(slot.copies)] == [N_ROWS] * slot.copies
            continue
        assert sum(next(read)[1] for _ in range(slot.copies)) + next(thrown)[1] == N_ROWS
    assert all(s.value != POISON for s in stats)
    mask = reference_mask(FILTERS[filtering], group_by, data)
    counts = [s.value for s in stats if s.aggregate == "count"]
    assert sum(counts) == pytest.approx(np.count_nonzero(mask), abs=len(counts))  # epsilon 1e6: exact to a unit


def test_a_plain_count_reads_two_slices_of_one_array_of_n_rows(data: dict[str, np.ndarray]) -> None:
    """Nothing is allocated or copied in proportion to the rows kept."""
    for filters in FILTERS.values():
        (count,) = prepare(Query((Aggregate(AggKind.COUNT),), filters), COLUMNS, data).inputs
        assert count.cells is not None and count.complement_cells is not None
        assert count.cells.base is not None and count.cells.base is count.complement_cells.base
        assert len(count.cells.base) >= N_ROWS
