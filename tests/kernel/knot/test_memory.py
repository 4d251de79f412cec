"""The knot stays resident for every container: its memory after setup (DESIGN, issue 4)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

# Regression guards, not goals; the figures are in BENCHMARKS.md ("Native pid 1"). On
# private dirty memory: what each container adds. The native pid 1's clean pages are its
# static binary's, shared by every container (alone, they count fully in its Pss).
DIRTY_LIMIT_KB = {"python": 12 * 1024, "native": 256}


def rollup(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields


def test_knot_pss_while_waiting(env, init_mode):
    started = time.monotonic()
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    print(f"\nspawn_knot to the service's first line: {(time.monotonic() - started) * 1e3:.0f} ms")
    mem = rollup(knot.pid)
    print(f"\n{init_mode} knot memory while waiting: Pss {mem['Pss']} kB, Rss {mem['Rss']} kB, "
          f"Private {mem['Private_Clean'] + mem['Private_Dirty']} kB "
          f"(dirty {mem['Private_Dirty']} kB, anonymous {mem['Anonymous']} kB)")
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0
    assert mem["Private_Dirty"] < DIRTY_LIMIT_KB[init_mode]
