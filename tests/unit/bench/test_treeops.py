"""The pure helpers of the 1000-container measures (bench/treeops.py, bench/big.py,
bench/supervisord.py): parsers of /proc and inotify records, the limits check, the
supervisord config. No timing, no processes."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench import big, treeops
from bench.measure import Result
from bench.supervisord import supervisord_conf

ROOT = Path(__file__).resolve().parents[3]
STAT = ("4242 (python3 -m bro) S 1 4242 4242 0 -1 4194560 9000 0 3 0 "
        "117 42 0 0 20 0 1 0 1000 100000000 5000 18446744073709551615 1 1 0 0 0 0 0 "
        "16781312 65536 0 0 0 17 1 0 0 0 0 0")


def test_stat_ticks_sums_utime_and_stime_even_with_spaces_and_parens_in_comm() -> None:
    assert treeops.stat_ticks(STAT) == 117 + 42
    assert treeops.stat_ticks(STAT.replace("(python3 -m bro)", "(a) b (c)")) == 159


def test_schedstat_slices() -> None:
    assert treeops.schedstat_slices("123456 789 42\n") == (123456, 42)


def test_inotify_names_reads_consecutive_padded_records() -> None:
    def record(name: bytes, pad: int) -> bytes:
        body = name + b"\0" * pad
        return struct.pack("iIII", 1, 0x100, 0, len(body)) + body

    buf = record(b"metrics.prom", 4) + record(b"control.sock", 4) + record(b"x", 15)
    assert treeops.inotify_names(buf) == ["metrics.prom", "control.sock", "x"]
    assert treeops.inotify_names(b"") == []


def test_limits_enough_and_each_shortage_named() -> None:
    assert treeops.limit_problems(1000, 32768, 400, 190000, 20000, 20 << 20) == []
    problems = treeops.limit_problems(1000, 2048, 400, 190000, 100, 512 << 10)
    assert len(problems) == 3
    assert "kernel.pid_max 2048" in problems[0]
    assert "RLIMIT_NOFILE 100" in problems[1]
    assert "MemAvailable is 512 MB" in problems[2]
    # threads-max lower than pid_max bounds too
    assert treeops.limit_problems(1000, 4 << 20, 0, 1000, 20000, 20 << 20)


def test_supervisord_conf_has_one_program_per_container() -> None:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(supervisord_conf("/tmp/w", "/tmp/w/lbhostfifo", 3))
    programs = [s for s in cp.sections() if s.startswith("program:")]
    assert programs == ["program:s0", "program:s1", "program:s2"]
    assert cp["program:s2"]["command"] == "/tmp/w/lbhostfifo"
    assert cp["supervisord"]["nodaemon"] == "true"


def test_ratio_and_idle_percent() -> None:
    assert big.ratio(30.0, 10.0) == "3.0"
    assert big.ratio(None, 10.0) == "-" and big.ratio(3.0, None) == "-"
    idle = treeops.Idle(60.0, {"broker": (0, 0, 0), "supervisor": (6, 1, 2)})
    assert idle.percent("broker") == 0.0
    assert abs(idle.percent("supervisor") - 100.0 * 6 / treeops.CLK_TCK / 60.0) < 1e-9
    assert Result([1.0]).median == 1.0


def _importable(*names: str) -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(n) is not None for n in names)
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the bench compiles its C programs")
@pytest.mark.skipif(not _importable("knot.spawn", "broker.main"), reason="no knot or broker")
def test_tree_ops_smallest_run_reports_every_measure_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "tree1000,idle,recovery,reexec",
         "--big-n", "3", "--idle-s", "1", "--ops-samples", "1", "--contenders", "floor,tree"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "failed" not in out, out
    assert re.search(r"^\| lithos tree \| 3 \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out
    assert re.search(r"^idle 1 s with 3 containers: broker \d+ ticks", out, re.M), out
    assert re.search(r"^idle 1 s with 3 containers: supervisor \d+ ticks", out, re.M), out
    for what in ("supervisor kill -9 -> reconciled 3 children",
                 "broker SIGQUIT -> control request answered",
                 "broker SIGQUIT -> new supervisor reconciled 3"):
        assert re.search(rf"^\| {what} \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out
    work = re.search(r"^- work dir: (\S+)", out, re.M)
    assert work and not os.path.exists(work.group(1))
    assert not list(Path("/sys/fs/cgroup").glob("*/lithos-bench-*"))
