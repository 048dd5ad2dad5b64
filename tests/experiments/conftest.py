"""Shared by the experiment and benchmark tests: runs in a fresh Python process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_module():
    """``run_module(module, *args)``: ``python -m module args`` in a fresh process (CPU JAX, this
    checkout on the path), asserting it succeeds. For options that must act before JAX starts,
    such as ``--host-devices``."""

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run
