"""The README's main job: ``python examples/demo.py`` runs, with its search calls under a
deadline and its signup event fanned out to emails and payments."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT


def test_demo_runs_with_calls_and_events(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OFFLOAD_BROKER"}
    env["DEMO_INDEX_MB"] = "4"
    out = subprocess.run(
        [sys.executable, "examples/demo.py", "--users", "20"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(out.stdout.split())  # rich wraps long lines
    assert "front_search('shoes') -> ['red shoes', 'blue shoes', 'black shoes']" in text
    assert "front_page fanned out 3 searches under one deadline" in text
    assert "4 double-submits charged and welcomed once" in text
    assert "every task finished or was dead-lettered with its reason" in text
