"""The knot stays resident for every container: its memory after setup (DESIGN, issue 4)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

PSS_LIMIT_KB = 12 * 1024  # a regression guard, not a goal; the figure is in the report


def rollup(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields


def test_knot_pss_while_waiting(env):
    started = time.monotonic()
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    print(f"\nspawn_knot to the service's first line: {(time.monotonic() - started) * 1e3:.0f} ms")
    mem = rollup(knot.pid)
    print(f"\nknot memory while waiting: Pss {mem['Pss']} kB, Rss {mem['Rss']} kB, "
          f"Private {mem['Private_Clean'] + mem['Private_Dirty']} kB")
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0
    assert mem["Pss"] < PSS_LIMIT_KB
