"""Verification check templates (核验): the grammar both sides parse the same way.

A template is a predicate over a dataset's columns whose ``?`` are the applicant's claim, in order::

    AGE >= 18                      a fixed threshold (op one of == != < <= > >=; no claim)
    PAY_0 == ?                     the claimed value equals the stored one
    |LIMIT_BAL - ?| <= 10%         a claimed number within a tolerance of the stored one (or ``<= 5000``)
    AGE >= 18 and PAY_0 == ?       a conjunction of these

Column names are bare (``LIMIT_BAL``) or double-quoted (``"default-payment-next-month"``); fixed values are
numbers or double-quoted strings (for categorical columns). ``canonical`` is the form a grant pins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Atom", "Template", "TemplateError", "parse", "NAME_RE"]

#: A template's name in the grant.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_EXPRESSION = 500
MAX_ATOMS = 8
OPS = ("==", "!=", "<=", ">=", "<", ">")

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | "(?P<quoted>[^"\\]{1,128})"
  | (?P<op>==|!=|<=|>=|<|>|\||-|\?)
)""", re.VERBOSE)
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """The expression is not a template (the message says where)."""


@dataclass(frozen=True)
class Atom:
    """One condition: ``kind`` is "claim" (COL == ?), "fixed" (COL op value) or "tolerance" (|COL - ?| <= tol)."""

    kind: str
    column: str
    op: str = "=="
    value: float | str | None = None  # fixed: the number or category; tolerance: the tolerance
    percent: bool = False  # tolerance: relative to the stored value

    def canonical(self) -> str:
        col = _quote(self.column)
        if self.kind == "claim":
            return f"{col} == ?"
        if self.kind == "tolerance":
            return f"|{col} - ?| <= {_number(float(self.value))}{'%' if self.percent else ''}"  # type: ignore[arg-type]
        shown = f'"{self.value}"' if isinstance(self.value, str) else _number(float(self.value))  # type: ignore[arg-type]
        return f"{col} {self.op} {shown}"

    @property
    def takes_claim(self) -> bool:
        return self.kind in ("claim", "tolerance")


@dataclass(frozen=True)
class Template:
    atoms: tuple[Atom, ...]

    def canonical(self) -> str:
        return " and ".join(a.canonical() for a in self.atoms)

    @property
    def parameters(self) -> tuple[Atom, ...]:
        """The atoms that take a claim value, in the order of the claim's values."""
        return tuple(a for a in self.atoms if a.takes_claim)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.column for a in self.atoms))

    @property
    def equality_only(self) -> bool:
        """True if every claimed value is compared for equality (what private mode can check blind)."""
        return bool(self.parameters) and all(a.kind != "tolerance" for a in self.atoms)


def _quote(column: str) -> str:
    return column if _BARE.match(column) and column.lower() != "and" else f'"{column}"'


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"cannot read the template at character {pos + 1}: {text[pos:pos + 12]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "ident" and value.lower() == "and":
            kind = "and"
        out.append((kind, value))
        pos = m.end()
    return out


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise TemplateError(f"{text!r} is not a finite number")
    return x


def parse(expression: str) -> Template:
    """Parse a template; TemplateError names what is wrong."""
    if not expression.strip() or len(expression) > MAX_EXPRESSION:
        raise TemplateError(f"a template is 1 to {MAX_EXPRESSION} characters")
    toks = _tokens(expression)
    atoms: list[Atom] = []
    i = 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal i
        if i >= len(toks) or toks[i][0] != kind or (value is not None and toks[i][1] != value):
            found = toks[i][1] if i < len(toks) else "the end"
            raise TemplateError(f"expected {value or kind} but found {found!r}")
        i += 1
        return toks[i - 1][1]

    def column() -> str:
        nonlocal i
        if i < len(toks) and toks[i][0] in ("ident", "quoted"):
            i += 1
            return toks[i - 1][1]
        found = toks[i][1] if i < len(toks) else "the end"
        raise TemplateError(f"expected a column name but found {found!r}")

    while True:
        if i < len(toks) and toks[i] == ("op", "|"):
            i += 1
            col = column()
            take("op", "-")
            take("op", "?")
            take("op", "|")
            take("op", "<=")
            tol = take("num")
            percent = tol.endswith("%")
            value = _finite(tol.rstrip("%"))
            if value < 0 or (percent and value > 100):
                raise TemplateError("a tolerance is at least 0 (and a percentage at most 100)")
            atoms.append(Atom("tolerance", col, "<=", value, percent))
        else:
            col = column()
            if i >= len(toks) or toks[i][0] != "op" or toks[i][1] not in OPS:
                found = toks[i][1] if i < len(toks) else "the end"
                raise TemplateError(f"expected one of {' '.join(OPS)} after {col!r} but found {found!r}")
            op = toks[i][1]
            i += 1
            if i < len(toks) and toks[i] == ("op", "?"):
                if op != "==":
                    raise TemplateError(f"a claimed value is compared with == only (use |{col} - ?| <= X for a range)")
                i += 1
                atoms.append(Atom("claim", col))
            elif i < len(toks) and toks[i][0] == "num" and not toks[i][1].endswith("%"):
                atoms.append(Atom("fixed", col, op, _finite(toks[i][1])))
                i += 1
            elif i < len(toks) and toks[i][0] == "quoted":
                if op not in ("==", "!="):
                    raise TemplateError("a category is compared with == or != only")
                atoms.append(Atom("fixed", col, op, toks[i][1]))
                i += 1
            else:
                found = toks[i][1] if i < len(toks) else "the end"
                raise TemplateError(f"expected ?, a number or a quoted category after {op} but found {found!r}")
        if i == len(toks):
            break
        take("and")
    if len(atoms) > MAX_ATOMS:
        raise TemplateError(f"a template has at most {MAX_ATOMS} conditions")
    return Template(tuple(atoms))
