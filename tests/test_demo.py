"""`make demo` tells the whole story end to end; this runs it and checks each turn of the plot happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    assert "homomorphic scores (CKKS)" in text and "same model in plaintext" in text
    he_auc = re.search(r"homomorphic scores \(CKKS\)\s*│\s*(0\.\d{4})", text)
    plain_auc = re.search(r"same model in plaintext\s*│\s*(0\.\d{4})", text)
    assert he_auc is not None and plain_auc is not None
    assert he_auc.group(1) == plain_auc.group(1) and float(he_auc.group(1)) > 0.6  # the README: agree to 4 decimals
    diff = re.search(r"Largest absolute difference between the two sets of logits: (\S+)\.", text)
    assert diff is not None and float(diff.group(1)) < 1e-3
    assert "federated without DP" in text and "centralised (all rows pooled, same model)" in text
    assert "charged epsilon" in text and "withheld" in text
    fl_he = re.search(r"Riverside Mutual scored 500 people .* largest difference from the lab's model in\s+plaintext (\S+)\.",
                      text, re.S)
    assert fl_he is not None and float(fl_he.group(1)) < 1e-3
    assert "audit log OK" in text
    assert "Traceback" not in text + out.stderr
