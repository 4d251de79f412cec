"""The bench harness runs end to end in its smallest mode and leaves nothing behind.

No timing is asserted here: timing goals belong in BENCHMARKS.md, not in tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.measure import Result

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
ROOT = Path(__file__).resolve().parents[3]


def _cmdlines() -> list[str]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    return lines


@requires_root
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the bench compiles its C programs")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_spawn_with_three_samples_for_floor_and_unshare() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "spawn", "--samples", "3",
         "--contenders", "floor,unshare"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in ("C floor", "unshare"):
        row = re.search(rf"^\| {name} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
        assert row, f"no numbers for {name}:\n{out}\n{done.stderr}"
    assert "failed" not in out
    assert "| bwrap |" not in out and "| crun |" not in out  # only what was asked
    work = re.search(r"^- work dir: (\S+)", out, re.M)
    assert work, out
    assert not os.path.exists(work.group(1))  # temp dir removed
    assert not [c for c in _cmdlines() if work.group(1) in c]  # no process left behind


@requires_root
def test_unknown_measurement_is_named() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.run", "--only", "spawn,speed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert ("--only: speed is not one of spawn,many,memory,restart,tree1000,idle,recovery,"
            "reexec") in done.stderr


def test_median_and_p90() -> None:
    r = Result([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert r.median == 5.5
    assert r.p90 == 9.0
    assert Result([2.0]).median == 2.0 and Result([2.0]).p90 == 2.0
    assert Result().median is None and Result().p90 is None


def _importable(*names: str) -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(n) is not None for n in names)
    except ModuleNotFoundError:
        return False


@requires_root
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the bench compiles its C programs")
@pytest.mark.skipif(not _importable("knot.spawn", "broker.main"), reason="no knot or broker")
def test_lithos_contenders_many_memory_restart_and_cleanup() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "many,memory,restart", "--n", "2",
         "--samples", "2", "--contenders", "floor,lithos,lithos-fork,tree"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "failed" not in out, out
    for name in ("C floor", "lithos", "lithos fork", "lithos tree"):
        assert re.search(rf"^\| {name} \| 2 \| [0-9]+ \| [0-9.]+ \|", out, re.M), out  # many
        assert re.search(rf"^\| {name} \| 2 \| [0-9]\.\d\d \| [0-9]+ \|", out, re.M), out  # memory
        assert re.search(rf"^\| {name} \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out  # restart
    assert "broker + supervisor" in out
    work = re.search(r"^- work dir: (\S+)", out, re.M)
    assert work and not os.path.exists(work.group(1))
    assert not [c for c in _cmdlines() if work.group(1) in c]
    assert not list(Path("/sys/fs/cgroup").glob("*/lithos-bench-*"))  # the tree's cgroups
