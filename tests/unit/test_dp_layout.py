"""Where DP code lives: opendp only inside dp_engine, and each statistic in one module listed in one table.

Adding a statistic should touch its module in dp_engine/statistics/, its AggKind member and STATISTICS entry
(dp_engine/statistics/__init__.py), the proto and the client SDK: so no other module of dp_engine may name a
kind, and every kind has exactly one entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dp_engine.statistics import STATISTICS, AggKind
from dp_engine.statistics.base import StatisticKind

ROOT = Path(__file__).resolve().parents[2]
#: Packages that must not import opendp: their DP goes through dp_engine.
NO_OPENDP = ("sandbox", "clients", "fl_server", "he_engine", "wire")
#: Files outside dp_engine that import opendp, and why. fl_server prices and draws its training noise with
#: opendp (make_gaussian, composition, zCDP to (epsilon, delta)); it may import none of our other packages
#: (tests/unit/test_architecture.py), so it cannot use dp_engine. Any other file there fails the test.
OPENDP_ALLOWED = {"fl_server/accounting.py"}
TABLE = ROOT / "dp_engine" / "statistics" / "__init__.py"


def imports_opendp(path: Path) -> bool:
    """Whether the file imports opendp anywhere (including inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "opendp" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "opendp":
            return True
        if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("import_module", "__import__")
                and node.args and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] == "opendp"):
            return True
    return False


def opendp_importers(root: Path) -> list[str]:
    return [str(path.relative_to(root)) for package in NO_OPENDP for path in sorted((root / package).rglob("*.py"))
            if imports_opendp(path)]


def kind_mentions(root: Path) -> list[str]:
    """Every `AggKind.<MEMBER>` (also as `x.AggKind.<MEMBER>`) and every comparison with a kind's value
    ("count", ...) in dp_engine outside dp_engine/statistics/."""
    members, values = set(AggKind.__members__), {k.value for k in AggKind}
    found = []
    for path in sorted((root / "dp_engine").rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[:2] == ("dp_engine", "statistics"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr in members and (
                    (isinstance(node.value, ast.Name) and node.value.id == "AggKind")
                    or (isinstance(node.value, ast.Attribute) and node.value.attr == "AggKind")):
                found.append(f"{rel}:{node.lineno} AggKind.{node.attr}")
            elif isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in values for o in operands):
                    found.append(f"{rel}:{node.lineno} compares with a kind's name")
    return found


def table_keys(path: Path) -> list[str]:
    """The AggKind members written as keys of the STATISTICS literal, in order, duplicates kept."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "STATISTICS"
                and isinstance(node.value, ast.Dict)):
            return [ast.unparse(key) for key in node.value.keys if key is not None]
    raise AssertionError(f"no `STATISTICS: ... = {{...}}` literal in {path}")


# ---------------------------------------------------------------- opendp stays in dp_engine


def test_no_opendp_import_outside_dp_engine() -> None:
    assert sorted(set(opendp_importers(ROOT)) - OPENDP_ALLOWED) == []


def test_every_allowed_opendp_importer_still_imports_it() -> None:
    """An exception that no longer applies is removed, so it cannot cover a new import later."""
    assert sorted(OPENDP_ALLOWED - set(opendp_importers(ROOT))) == []


def test_the_opendp_scan_catches_an_import(tmp_path: Path) -> None:
    for package in NO_OPENDP:
        (tmp_path / package).mkdir()
    (tmp_path / "sandbox" / "noise.py").write_text("import opendp.prelude as dp\n")
    (tmp_path / "clients" / "late.py").write_text("def f():\n    from opendp.mod import enable_features\n")
    (tmp_path / "wire" / "dynamic.py").write_text("import importlib\nimportlib.import_module('opendp.prelude')\n")
    (tmp_path / "he_engine" / "fine.py").write_text("import opendp_like\n# import opendp\n")
    assert sorted(opendp_importers(tmp_path)) == ["clients/late.py", "sandbox/noise.py", "wire/dynamic.py"]


# ---------------------------------------------------------------- one module per statistic, one table


def test_every_kind_has_exactly_one_statistic() -> None:
    assert sorted(STATISTICS) == sorted(AggKind) and len(STATISTICS) == len(AggKind)
    keys = table_keys(TABLE)  # a literal with a key twice would silently keep the last one
    assert sorted(keys) == sorted(f"AggKind.{k.name}" for k in AggKind), keys


@pytest.mark.parametrize("kind", list(AggKind), ids=lambda k: k.value)
def test_each_statistic_lives_in_its_own_module(kind: AggKind) -> None:
    statistic = STATISTICS[kind]
    assert isinstance(statistic, StatisticKind)
    assert type(statistic).__module__ == f"dp_engine.statistics.{kind.value}"


def test_the_table_check_catches_a_duplicate_entry(tmp_path: Path) -> None:
    table = tmp_path / "table.py"
    table.write_text(TABLE.read_text(encoding="utf-8").replace(
        "AggKind.SUM: SUM,", "AggKind.SUM: SUM,\n    AggKind.COUNT: SUM,"))
    keys = table_keys(table)
    assert keys.count("AggKind.COUNT") == 2
    assert sorted(keys) != sorted(f"AggKind.{k.name}" for k in AggKind)


def test_no_kind_is_named_outside_the_statistics() -> None:
    assert kind_mentions(ROOT) == []


def test_the_kind_scan_catches_a_mention(tmp_path: Path) -> None:
    (tmp_path / "dp_engine" / "statistics").mkdir(parents=True)
    (tmp_path / "dp_engine" / "validate.py").write_text(
        "def f(agg):\n    return agg.kind is AggKind.HISTOGRAM\n")
    (tmp_path / "dp_engine" / "plan.py").write_text(
        "import dp_engine\ndef g(agg, p):\n    return agg.kind is not dp_engine.AggKind.COUNT or p.kind == 'sum'\n")
    (tmp_path / "dp_engine" / "generic.py").write_text(
        "def h(agg):\n    return STATISTICS[agg.kind], isinstance(agg.kind, AggKind), 'count takes no column'\n")
    (tmp_path / "dp_engine" / "statistics" / "count.py").write_text("X = AggKind.COUNT\n")
    assert sorted(kind_mentions(tmp_path)) == ["dp_engine/plan.py:3 AggKind.COUNT", "dp_engine/plan.py:3 compares "
                                               "with a kind's name", "dp_engine/validate.py:2 AggKind.HISTOGRAM"]
