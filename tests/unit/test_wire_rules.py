"""The rules the server and the SDK must agree on live in ``wire/`` only; a copy in clients/ or sandbox/ fails here.

What ``wire/`` defines is read from its source (so a rule added there is guarded at once): its public functions
and classes may not be defined again (a method of the same name is its class's API, not a copy), its constants
may not be assigned again, its regular expressions and its signing domain separators (``sandbox.v1-request`` ...)
may not be written again. Besides: no ``x-sandbox-*`` metadata name as a literal, no budget unit (10**9, 10**18)
as a number, no nonce made or base64 or key file encoded by hand, outside ``wire/``. And ``wire/`` imports
neither gRPC nor protobuf nor either side.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIDES = ("clients", "sandbox")
#: The shared rules this test was written for; they must stay defined in wire/ (and so guarded).
EXPECTED = {
    "signing": {"stream_digest", "StreamDigest", "stream_body", "signing_payload", "principal_id_for",
                "verify_signature", "PRINCIPAL_RE", "is_principal_id", "NONCE_RE", "new_nonce", "is_nonce",
                "b64_encode", "b64_decode", "sha256_hex", "MD_PRINCIPAL", "MD_TIMESTAMP", "MD_NONCE", "MD_SIGNATURE",
                "MD_PUBLIC_KEY", "MD_STREAM_BYTES", "MD_STREAM_SHA256", "ERROR_TRAILER", "RECEIPT_TRAILER",
                "answer_trailers", "trailer_value", "error_code_of", "receipt_of"},
    "keys": {"public_key_bytes", "write_private_key", "read_private_key", "public_key_path", "public_key_text",
             "write_public_key", "read_public_key"},
    "budget": {"NANO", "ATTO", "to_units", "from_units"},
}
#: Made by hand, each of these is a copy of a wire rule: (module, attribute) of a call or attribute use.
HAND_MADE = {
    ("base64", "b64encode"): "base64 by hand (wire.signing.b64_encode)",
    ("base64", "b64decode"): "base64 by hand (wire.signing.b64_decode)",
    ("serialization", "load_pem_private_key"): "a key file read by hand (wire.keys.read_private_key)",
    ("PrivateFormat", "PKCS8"): "a key file written by hand (wire.keys.write_private_key)",
}
FORBIDDEN_IMPORTS = {"grpc", "google", "sandbox", "clients"}


@dataclass(frozen=True)
class WireRules:
    definitions: frozenset[str]  # public functions and classes
    constants: frozenset[str]  # names assigned at module level
    patterns: frozenset[str]  # regular expressions, anchors stripped
    separators: frozenset[str]  # "sandbox.v1-..." domain separators of signed payloads


def _strip_anchors(pattern: str) -> str:
    return re.sub(r"^(\^|\\A)|(\$|\\Z)$", "", pattern)


def _strings(tree: ast.AST) -> list[tuple[ast.Constant, str]]:
    return [(n, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def read_wire(root: Path) -> WireRules:
    definitions: set[str] = set()
    constants: set[str] = set()
    patterns: set[str] = set()
    separators: set[str] = set()
    for path in sorted((root / "wire").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                definitions.add(node.name)
            targets: list[ast.expr] = (node.targets if isinstance(node, ast.Assign) else [node.target]
                                       if isinstance(node, ast.AnnAssign) else [])
            constants.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
        for call in ast.walk(tree):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "compile"
                    and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
                patterns.add(_strip_anchors(call.args[0].value))
        for _, value in _strings(tree):
            if value.startswith("sandbox.v1-"):
                separators.add(value.split("\n")[0])
    return WireRules(frozenset(definitions), frozenset(constants), frozenset(patterns), frozenset(separators))


def _is_budget_unit(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value in (10**9, 10**18)
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.left, ast.Constant)
            and node.left.value == 10 and isinstance(node.right, ast.Constant) and node.right.value in (9, 18))


def _dotted(node: ast.AST) -> tuple[str, str] | None:
    if isinstance(node, ast.Attribute):
        base = node.value
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
        return (name, node.attr) if name else None
    return None


def copies_in(path: Path, rules: WireRules, shown: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{shown}:{getattr(node, 'lineno', 0)}: {what}")

    for const, value in _strings(tree):
        if value.startswith("x-sandbox-"):
            bad(const, f"metadata name {value!r} (use wire.signing's constant)")
        if any(value == s or value.startswith(s + "\n") for s in rules.separators):
            bad(const, f"signing domain separator {value.split(chr(10))[0]!r} (a payload built outside wire)")
        if _strip_anchors(value) in rules.patterns or "p-[0-9a-f]{24}" in value:
            bad(const, f"the pattern {value!r} of wire (use its compiled regex)")
    methods = {id(m) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for m in c.body}
    for node in ast.walk(tree):
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in rules.definitions
                and id(node) not in methods):  # a method of the same name is an API of its class (the SDK's)
            bad(node, f"{node.name} defined again (it is wire's)")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in rules.constants:
                    bad(node, f"{t.id} assigned again (it is wire's)")
        elif _is_budget_unit(node):
            bad(node, "a budget unit written as a number (wire.budget.NANO / ATTO)")
        elif isinstance(node, ast.Attribute) and _dotted(node) in HAND_MADE:
            bad(node, HAND_MADE[_dotted(node)])  # type: ignore[index]
        elif (isinstance(node, ast.Call) and _dotted(node.func) == ("secrets", "token_hex") and node.args
              and isinstance(node.args[0], ast.Constant) and node.args[0].value == 16):
            bad(node, "a nonce made by hand (wire.signing.new_nonce)")
    return found


def copies(root: Path) -> list[str]:
    rules = read_wire(root)
    found: list[str] = []
    for side in SIDES:
        for path in sorted((root / side).rglob("*.py")):
            found += copies_in(path, rules, str(path.relative_to(root)))
    return found


def wire_imports(root: Path) -> list[str]:
    bad = []
    for path in sorted((root / "wire").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if (
                isinstance(node, ast.ImportFrom) and node.level == 0) else []
            bad += [f"{path.relative_to(root)} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
    return bad


def test_no_copy_of_a_wire_rule_outside_wire() -> None:
    assert copies(ROOT) == []


def test_the_shared_rules_are_defined_in_wire() -> None:
    for module, names in EXPECTED.items():
        tree = ast.parse((ROOT / "wire" / f"{module}.py").read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert names - defined == set(), f"wire/{module}.py lost {sorted(names - defined)}"
    rules = read_wire(ROOT)
    assert {"sandbox.v1-request", "sandbox.v1-audit-entry", "sandbox.v1-tree-head"} <= rules.separators
    assert "p-[0-9a-f]{24}" in rules.patterns and "[0-9a-f]{32}" in rules.patterns


def test_wire_imports_neither_grpc_protobuf_nor_a_side() -> None:
    assert wire_imports(ROOT) == []


PLANTED_CLIENT = '''"""Docs may name ``x-sandbox-principal``."""
import base64, hashlib, re, secrets
from wire.signing import MD_PRINCIPAL

HEADER = "x-sandbox-principal"
NANO = 10**9
_PRINCIPAL_RE = re.compile(r"^p-[0-9a-f]{24}$")


def stream_digest(messages):
    h = hashlib.sha256()
    for m in messages:
        h.update(len(m).to_bytes(8, "big") + m)
    return h.hexdigest()


def sign(key, method, ts, nonce, body):
    nonce = secrets.token_hex(16)
    payload = f"sandbox.v1-request\\n{method}\\n{ts}\\n{nonce}\\n{body}".encode()
    return base64.b64encode(key.sign(payload)).decode()
'''

PLANTED_SERVER = '''import re
from cryptography.hazmat.primitives import serialization

_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
ATTO = 1_000_000_000_000_000_000


class StreamDigest:
    pass


def load(raw):
    return serialization.load_pem_private_key(raw, password=None)
'''


def test_the_checker_catches_each_kind_of_copy(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "wire", tmp_path / "wire")
    for side in SIDES:
        (tmp_path / side).mkdir()
    (tmp_path / "clients" / "ok.py").write_text('"""Mentions ``x-sandbox-receipt`` and 10**9 in prose."""\n'
                                                "from wire.signing import MD_PRINCIPAL, new_nonce\n"
                                                "ID = secrets.token_hex(8)\nMAX = 10**15\n")
    assert copies(tmp_path) == []
    (tmp_path / "clients" / "copy.py").write_text(PLANTED_CLIENT)
    (tmp_path / "sandbox" / "copy.py").write_text(PLANTED_SERVER)
    found = "\n".join(copies(tmp_path))
    for expected in [
        "clients/copy.py:5: metadata name 'x-sandbox-principal'",
        "clients/copy.py:6: NANO assigned again",
        "clients/copy.py:6: a budget unit written as a number",
        "clients/copy.py:7: the pattern '^p-[0-9a-f]{24}$'",
        "clients/copy.py:10: stream_digest defined again",
        "clients/copy.py:18: a nonce made by hand",
        "clients/copy.py:19: signing domain separator 'sandbox.v1-request'",
        "clients/copy.py:20: base64 by hand",
        "sandbox/copy.py:4: the pattern '^[0-9a-f]{32}$'",
        "sandbox/copy.py:5: ATTO assigned again",
        "sandbox/copy.py:5: a budget unit written as a number",
        "sandbox/copy.py:8: StreamDigest defined again",
        "sandbox/copy.py:13: a key file read by hand",
    ]:
        assert expected in found, f"not caught: {expected}\n{found}"
    assert "copy.py:1:" not in found  # a docstring naming a header is prose


def test_the_import_check_catches_grpc_in_wire(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "wire", tmp_path / "wire")
    (tmp_path / "wire" / "leak.py").write_text("def f():\n    import grpc\n    from google.protobuf import message\n"
                                               "    from sandbox.errors import ErrorCode\n")
    assert wire_imports(tmp_path) == ["wire/leak.py imports grpc", "wire/leak.py imports google.protobuf",
                                      "wire/leak.py imports sandbox.errors"]
