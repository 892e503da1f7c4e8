"""The train/eval steps: pmapped over 8 CPU devices they equal one step over the global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pmap_on_8_devices_equals_single_device_step():
    proc = _run("tests.training_helpers.pmap_equivalence", "8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK pmap equivalence on 8 devices" in proc.stdout
