"""README command 1 (issue 9): the bundled example starts, three web instances
answer on one port, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]


def test_demo_serves_three_instances_and_cleans_up(wait_file_text) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, LITHOS_DEMO_PYTHON=sys.executable, LITHOS_DEMO_SECONDS="120")
    proc = subprocess.Popen(
        ["bash", str(REPO / "examples/demo/run")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if "supervisor ready:" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "\n".join(lines[-30:])
        assert proc.poll() is None, "\n".join(lines[-30:])
        log = Path("/run/lithos-demo/log/stderr/demo.log")
        for i in range(3):  # each instance says so once it accepts on fd 3
            wait_file_text(log, rf"demo/web\.{i}: serving on fd 3", 60)
        seen: set[str] = set()
        for _ in range(60):  # bounded: the kernel spreads accepts over the three
            # The broker listens before the services run: a connection waits in
            # the shared backlog until an instance accepts it.
            with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=30) as r:
                body = r.read().decode()
            seen.add(re.search(r"demo/web\.\d", body).group(0))  # type: ignore[union-attr]
            if len(seen) == 3:
                break
        assert seen == {"demo/web.0", "demo/web.1", "demo/web.2"}, "\n".join(lines[-30:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    assert not Path("/run/lithos-demo").exists()
    assert not list(Path("/sys/fs/cgroup").glob("*/lithos-demo.slice"))
