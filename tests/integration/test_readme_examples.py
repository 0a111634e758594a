"""Every ```python block in README.md runs as written against a real TLS server.

The blocks are found at run time, in the README's order, so a block added later is checked too: a new
block must run. They run as the README's set-up says a reader runs them: in one Python session (one
namespace: a block may use what an earlier block defined or did), in a fresh directory holding ``city/``
from ``sandbox init ./city`` and a link to the repository's ``data/``, with ``sandbox serve ./city``
running. The server listens on a free port, which the blocks reach through ``SANDBOX_SERVER`` (clients
given no address connect there; a fixed port could be taken on a busy machine), so a block must not name
``localhost:50051`` itself; and since the README says to paste them into ``python``, no blank line may sit
inside an indented suite. The code is compiled exactly as written, with README.md's line numbers, so a
failure points at the README's own line.

A block that raises fails the test. Where a block produces something worth checking (an answer, scores,
a model, a verified grant), a check below looks at it right after that block ran; each check must find
its block, so the checks cannot silently drift away from the README.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.server import start_server
from tests.conftest import DATA, ROOT, Sandbox

README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    line: int  # README.md's line number of the block's first line of code
    code: str


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, in order (an indented fence, in a list item, too)."""
    blocks = []
    for m in FENCE.finditer(text):
        indent = m.group("indent")
        lines = m.group("code").splitlines(keepends=True)
        code = "".join(line[len(indent):] if line.startswith(indent) else line for line in lines)
        blocks.append(Block(text.count("\n", 0, m.start("code")) + 1, code))
    return blocks


def pastable(block: Block) -> bool:
    """No blank line inside an indented suite: pasted into the interactive interpreter (the README's set-up),
    a blank line ends the statement and the next indented line is an IndentationError."""
    lines = block.code.splitlines()
    return not any(not a.strip() and b[:1].isspace() for a, b in zip(lines, lines[1:]))


def compiled(block: Block) -> Any:
    """The block's code as written, with README.md's file name and line numbers for tracebacks."""
    tree = ast.parse(block.code, filename=str(README))
    ast.increment_lineno(tree, block.line - 1)
    return compile(tree, str(README), "exec")


def test_python_blocks_are_found_with_their_line_numbers() -> None:
    text = "intro\n```python\nx = 1\n```\n\n1. a step:\n\n   ```python\n   y = x + 1\n   ```\n```\nnot python\n```\n"
    assert python_blocks(text) == [Block(3, "x = 1\n"), Block(9, "y = x + 1\n")]


def test_a_blank_line_inside_a_suite_is_not_pastable() -> None:
    assert pastable(Block(1, "with a:\n    b()\n\nc()\n"))
    assert not pastable(Block(1, "with a:\n    b()\n\n    c()\n"))


# --- what the blocks produce ------------------------------------------------------------------------------
# Each check: (a call that marks its block, what must hold after that block ran, given its namespace and output).

Check = Callable[[dict[str, Any], str], None]


def dp_answer(ns: dict[str, Any], out: str) -> None:
    """The office's grouped mean: one noisy value per education category, inside its 95% interval."""
    stats = ns["result"].statistics
    assert len(stats) >= 2 and all(st.aggregate.startswith("mean") and len(st.group) == 1 for st in stats)
    assert all(math.isfinite(st.value) and st.low <= st.value <= st.high for st in stats)
    lines = out.strip().splitlines()
    assert ns["result"].epsilon_charged == Decimal(lines[0].split()[0]) > 0  # charged what the estimate said
    assert len(lines) == 1 + len(stats)


def he_scores(ns: dict[str, Any], out: str) -> None:
    """The bank decrypted one probability per entity, with the release rule's noise on every score."""
    result = ns["result"]
    assert result.entity_ids == list(ns["entity_ids"])
    assert result.probabilities.shape == (len(ns["entity_ids"]),)
    assert np.all((result.probabilities > 0) & (result.probabilities < 1))
    assert result.noise_sd > 0
    assert float(out.split()[0]) == pytest.approx(result.noise_sd)  # the noise the administrator's review stated


def fl_model(ns: dict[str, Any], out: str) -> None:
    """Training ran every round to completion and the researcher received the aggregate model."""
    states = [line.split()[-1] for line in out.strip().splitlines()]
    assert states[-1] == "completed" and len(states) >= 2, out
    assert ns["weights"] and all(np.all(np.isfinite(w)) for w in ns["weights"])
    assert list(ns["coefficients"]) == ns["features"]  # one raw-unit coefficient per feature, named


def verified_grant(ns: dict[str, Any], out: str) -> None:
    """The narrowed grant verified offline (epsilon 0.5, not the 1 applied for) and allows the census column."""
    assert out.splitlines()[1:] == ["0.5", "approved"]
    assert "adult_census" in out.splitlines()[0]


def verification(ns: dict[str, Any], out: str) -> None:
    """One bit per claim (ID 1 is 24, ID 2 is not 30), the template the grant does not pin refused, and the
    certificate valid offline against the published key while an edited copy is not."""
    assert ns["checked"].results == ("MATCH", "NO_MATCH") and len(ns["checked"].certificates) == 2
    assert out.splitlines() == ["('MATCH', 'NO_MATCH') 2", "OUTSIDE_GRANT", "True",
                                "(\"the signature does not verify with the sandbox's key\",)"], out


CHECKS: dict[str, Check] = {
    ".run_query(": dp_answer,
    ".score(": he_scores,
    ".start_training(": fl_model,
    ".verify_grant(": verified_grant,
    "certificate_check(": verification,
}


# --- the README's set-up, and the run ---------------------------------------------------------------------

@pytest.fixture()
def readme_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The README's set-up: a fresh directory with ``data`` linked and ``sandbox init ./city`` done, the
    server serving ``./city`` (on a free port, named in ``SANDBOX_SERVER``), the session started there."""
    (tmp_path / "data").symlink_to(DATA, target_is_directory=True)
    init = init_data_dir(tmp_path / "city")
    cfg = load_config(init.config.data_dir, flags={"port": 0}, environ={})
    sbx = Sandbox(init.config.data_dir, start_server(cfg), init.admin_key_path)
    monkeypatch.setenv("SANDBOX_SERVER", f"localhost:{sbx.running.port}")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sbx.stop()


@pytest.mark.slow
def test_every_python_block_in_the_readme_runs(readme_directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    namespace: dict[str, Any] = {"__name__": "__main__"}
    checked = set()
    for block in blocks:
        assert pastable(block), f"README.md line {block.line}: a blank line inside an indented suite"
        code = compiled(block)
        try:
            exec(code, namespace)
        except BaseException as exc:  # SystemExit too: a block must run to its end
            exc.add_note(f"in the Python example at README.md line {block.line}")
            raise
        out = capsys.readouterr().out
        for marker, check in CHECKS.items():
            if marker in block.code:
                check(namespace, out)
                checked.add(marker)
    assert checked == set(CHECKS), f"no README block calls {sorted(set(CHECKS) - checked)}"
