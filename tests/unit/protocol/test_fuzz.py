"""python3 -m protocol.fuzz: the decoder raises nothing but ProtocolViolation.

The 5-second runs are part of the suite; the 60-second run is marked `fuzz` and
runs only when selected (`-m fuzz`), e.g. as a separate CI step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_fuzz(tmp_path: Path, *args: str, timeout: float) -> int:
    """Run the fuzzer (cwd: a temp dir, so no artifact lands in the repo); inputs tried."""
    result = subprocess.run(
        [sys.executable, "-m", "protocol.fuzz", *args],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("inputs tried: "), last
    assert list(tmp_path.iterdir()) == []
    return int(last.removeprefix("inputs tried: "))


def test_fuzz_default_driver_for_5_seconds(tmp_path: Path) -> None:
    assert run_fuzz(tmp_path, "--seconds", "5", timeout=60) > 1000


def test_fuzz_random_driver(tmp_path: Path) -> None:
    assert run_fuzz(tmp_path, "--seconds", "2", "--driver", "random", timeout=60) > 1000


@pytest.mark.fuzz
def test_fuzz_for_a_minute(tmp_path: Path) -> None:
    assert run_fuzz(tmp_path, "--seconds", "60", timeout=180) > 10_000
