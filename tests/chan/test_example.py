"""The fan-out example runs, gets the two fastest answers, and gives up at its deadline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fanout.py"


@pytest.mark.timeout(20)
def test_fanout_example_runs_within_three_seconds() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=10, check=True
    ).stdout.splitlines()
    assert len(out) == 4
    for line in (out[0], out[2]):
        assert "pricing: ok" in line and "stock: ok" in line and "reviews" not in line
    for line in (out[1], out[3]):
        assert "gave up: context deadline exceeded" in line
    total = sum(float(line.rsplit(" in ", 1)[1].rstrip("s")) for line in out)
    assert total < 3
