"""`make demo` tells the whole story end to end; this runs it and checks each turn of the plot happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
