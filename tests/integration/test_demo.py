"""`make demo` tells the whole story end to end; this runs it and checks each turn of the plot happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest

from clients import InvalidArgument
from clients.schema_file import load_schema_file
from clients.serde import schema_to_pb
from sandbox import he_release
from sandbox.errors import SandboxError
from sandbox.serde import schema_from_pb

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "48,790" in text and "30,000" in text and "20,190" in text  # the three datasets imported
    assert "status pending" in text and "Approved with grant g-" in text
    assert "PERMISSION_DENIED: core columns may not be used" in text
    assert "ALREADY_EXISTS" in text and "[COLUMN_NOT_NAMED]" in text and "[GRANT_REVOKED]" in text
    assert "count by sex where age >= 30 (epsilon 0.25)" in text and "95% interval" in text
    assert "RESOURCE_EXHAUSTED: privacy budget exhausted: remaining epsilon 0" in text
    he_auc = re.search(r"homomorphic scores \(CKKS, release rule\)\s*│\s*(0\.\d{4})", text)
    plain_auc = re.search(r"same model in plaintext\s*│\s*(0\.\d{4})", text)
    own_auc = re.search(r"the bank's own features alone\s*│\s*(0\.\d{4})", text)
    assert he_auc is not None and plain_auc is not None and own_auc is not None
    he, plain, own = (float(m.group(1)) for m in (he_auc, plain_auc, own_auc))
    # The README: the release rule costs a few hundredths of AUC, and the sandbox's columns still add to the bank's.
    assert plain - 0.08 < he < plain + 0.02 and he > own + 0.03, (he, plain, own)
    rule = re.search(r"noise of sd (\S+) to every score .* at most (\S+) bits about the sandbox's columns", text)
    assert rule is not None and float(rule.group(1)) > 0 and 0 < float(rule.group(2)) < 4
    noise = re.search(r"Scores minus the plaintext model: mean (\S+), sd (\S+) \(the noise\)", text)
    assert noise is not None and abs(float(noise.group(1))) < 0.15
    assert float(noise.group(2)) == pytest.approx(float(rule.group(1)), rel=0.15)  # 1,000 draws: 7 standard errors
    assert "federated without DP" in text and "centralised (all rows pooled, same model)" in text
    assert "(shares 6, threshold 4: up to 2 sites may drop out of a round)" in text
    assert re.search(r"Secure aggregation cost no accuracy worth the name: 0\.\d+ with it, 0\.\d+ without "
                     r"\(\d+\.\d points apart; each DP run draws fresh noise\), at the same price", text)
    assert "charged epsilon" in text and "withheld" in text
    assert "[GRANT_AWAITING_COSIGNATURE]" in text and "co-signed with its own key" in text
    assert "features xage, female" in text  # the reviewer read the training plan in full
    fl_he = re.search(r"Riverside Mutual scored 500 people .* release rule's noise \(sd (\S+), measured (\S+)\)\.",
                      text, re.S)
    assert fl_he is not None
    stated, measured = float(fl_he.group(1)), float(fl_he.group(2))
    # Against the registered model in plaintext the difference is the noise alone: 500 draws, 3.2% standard error.
    assert 0.85 * stated < measured < 1.15 * stated, (stated, measured)
    # Verification: every planted false claim caught, no true one refused, and the limits hold.
    assert re.search(r"age \(AGE == \?\)\s*│\s*200\s*│\s*180\s*│\s*20\s*│\s*20\s*│\s*200 / 1000", text)
    assert re.search(r"repaid \(PAY_0 == \?\)\s*│\s*200\s*│\s*190\s*│\s*10\s*│\s*10\s*│\s*400 / 1000", text)
    assert re.search(r'never an id, a claim or a consent reference: \{"certificates":true,"consents":200,'
                     r'.*"items":200,', text)
    assert "AUTH-2026" not in text  # no consent reference is printed, nor in that audit entry
    assert re.search(r"'limit'\): PERMISSION_DENIED: .*template 'limit' is not in the grant.*\[OUTSIDE_GRANT\]", text)
    assert re.search(r"stops the search: -2: NO_MATCH; -1: NO_MATCH; 0: NO_MATCH; 1: RESOURCE_EXHAUSTED: .*"
                     r"\[ENTITY_LIMIT\]", text)
    assert re.search(r"published audit key: valid \(MATCH, template age, audit entry \d+;", text)
    assert "An edited copy saying NO_MATCH: the signature does not verify with the sandbox's key." in text
    assert "Its receipt: audit entry" in text and "signed by the sandbox's published audit key" in text
    assert re.search(r"the head of \d+ entries extended it \(consistency proof checked\)", text)
    assert re.search(r"audit log OK: \d+ entries \(\d+ signed\), \d+ signed tree heads \([1-9]\d* cosigned", text)
    assert "Traceback" not in text + out.stderr


def test_the_demo_registers_the_next_run_when_the_balance_rule_refuses_one() -> None:
    """A DP run's noise can leave a model the release rule's balance check refuses (CI saw it once): the demo shows
    the refusal and registers the lab's next run; any other refusal still ends it. The refusal is the server's own
    message, made by ``he_release.check``, so the demo's test of it cannot drift from what the server says."""
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "demo" / "run_demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    schema = schema_from_pb(schema_to_pb(load_schema_file(ROOT / "data" / "schemas" / "rand_hie.toml")))
    unbalanced = (("disea", 2.0), ("female", 0.05), ("xage", 0.001))  # |w| x (upper - lower) far apart
    with pytest.raises(SandboxError) as refused:
        he_release.check(unbalanced, (0.1,), 0.0, schema, he_release.ReleaseRule())
    balance = InvalidArgument(f"INVALID_ARGUMENT: {refused.value}", status="INVALID_ARGUMENT")
    assert "contributions are unbalanced" in str(balance)

    class Lab:
        def __init__(self, refusals: list[Exception]) -> None:
            self.refusals = refusals
            self.asked: list[tuple[str, str]] = []

        def register_trained_model(self, job: str, *, name: str, private_features: list[str],
                                   description: str) -> str:
            self.asked.append((job, name))
            if self.refusals:
                raise self.refusals.pop(0)
            return "ab" * 32

    jobs = [("j-1", "DP model", "m-dp"), ("j-2", "other DP model", "m-dp"), ("j-3", "model trained without DP", "m")]
    lab = Lab([balance, balance])
    assert demo.register_first_accepted(lab, jobs, ["linc"]) == ("ab" * 32, "j-3", "model trained without DP")
    assert lab.asked == [("j-1", "m-dp"), ("j-2", "m-dp"), ("j-3", "m")]
    lab = Lab([])
    assert demo.register_first_accepted(lab, jobs, ["linc"])[1] == "j-1" and lab.asked == [("j-1", "m-dp")]
    other = InvalidArgument("INVALID_ARGUMENT: private features must be distinct features of the trained plan")
    lab = Lab([other])
    with pytest.raises(InvalidArgument):  # not the balance rule: the demo stops
        demo.register_first_accepted(lab, jobs, ["linc"])
    assert lab.asked == [("j-1", "m-dp")]
    with pytest.raises(SystemExit):  # every run refused
        demo.register_first_accepted(Lab([balance] * 3), jobs, ["linc"])
