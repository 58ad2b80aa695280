"""The benchmark scripts' directory, and a script's --smoke run as its users start it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO

BENCHMARKS_DIR = REPO / "benchmarks"


def run_smoke(script: str, out: Path) -> dict:
    """Runs ``benchmarks/<script>.py --smoke`` as its users do (one CPU device: no simulated
    devices from the test set-up), prints its output and returns the results file it wrote."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS_DIR / f"{script}.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    return json.loads(out.read_text())
