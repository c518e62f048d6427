"""docs/math.md's worked numbers: docs/check_math_examples.py recomputes each one (numpy, CVXPY)
independently of lipdeq and exits 1 on any mismatch."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_worked_number_in_docs_math_is_recomputed():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "check_math_examples.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 mismatch(es)" in out.stdout
