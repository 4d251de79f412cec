"""The knot spawned straight into the native init (knot.nativespawn; issue #10 item 1).

posix_spawn starts init.c as pid 1 of the new pid namespace; the caller does the
host-side setup and init.c the rest. As for the forked knot (test_fork_spawn.py):
nothing of the spawner may reach the container (fds, ignored signals), before_setup
comes before anything the knot does (T-51; tested for both in test_fork_spawn.py), and it
is a knot from its first moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from broker.children import KNOT_COMM, proc_knot_name
from knot import spawn

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root


@pytest.fixture
def spawn_env(env, init_mode, monkeypatch):
    if init_mode != "native":
        pytest.skip("spawned only with the native pid 1")
    monkeypatch.delenv(spawn.SPAWN_ENV, raising=False)
    env.fork = None
    return env


def _fd_targets(pid: int) -> set[str]:
    base = Path(f"/proc/{pid}/fd")
    out = set()
    for fd in os.listdir(base):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            out.add(os.readlink(base / fd))
    return out


def test_spawn_is_the_default_with_a_native_init(monkeypatch):
    monkeypatch.delenv(spawn.SPAWN_ENV, raising=False)
    assert spawn.spawn_mode("/some/init") == "spawn"
    assert spawn.spawn_mode(None) == "exec"
    for mode in ("fork", "exec"):
        monkeypatch.setenv(spawn.SPAWN_ENV, mode)
        assert spawn.spawn_mode("/some/init") == mode


def test_nothing_of_the_spawner_reaches_the_container(spawn_env, tmp_path):
    # An inheritable fd and an ignored signal in the spawner, as a broker may have.
    secret = os.open(tmp_path / "broker-only", os.O_CREAT | os.O_RDWR, 0o600)
    os.set_inheritable(secret, True)
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        knot = spawn_env.start(spawn_env.spec(
            "grep -E '^(SigIgn|SigBlk)' /proc/self/status >&3; echo ready >&3; "
            "exec sleep 1000"), events=True)
        blocked, ignored = knot.read_event(), knot.read_event()
        assert knot.read_event() == "ready"
    finally:
        signal.signal(signal.SIGHUP, old)
        os.close(secret)
    assert ignored.split() == ["SigIgn:", "0000000000000000"]  # T-50: nothing ignored
    assert blocked.split() == ["SigBlk:", "0000000000000000"]
    children = Path(f"/proc/{knot.pid}/task/{knot.pid}/children").read_text().split()
    assert len(children) == 1
    for pid in (knot.pid, int(children[0])):
        assert not [t for t in _fd_targets(pid) if "broker-only" in t]
    # pid 1's own fds: 0-2, the service's fd 3 (events) and the stdio log, nothing else.
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{knot.pid}/fd"))[:4] == [0, 1, 2, 3]
    assert len(os.listdir(f"/proc/{knot.pid}/fd")) == 5
    assert Path(f"/proc/{knot.pid}/comm").read_text().strip() == KNOT_COMM
    assert proc_knot_name(knot.pid) == "test/svc.0"
    status = Path(f"/proc/{knot.pid}/status").read_text()
    # pid 1 ignores only SIGPIPE (its own choice), not the spawner's SIGHUP.
    assert status.split("SigIgn:")[1].split()[0] == f"{1 << (signal.SIGPIPE - 1):016x}"
    assert "NSpid:" in status and status.split("NSpid:")[1].split()[1] == "1"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0


def test_sigterm_during_setup_is_kept(spawn_env):                      # K-40
    def before_setup(pid: int) -> None:
        os.kill(pid, signal.SIGTERM)  # the knot waits for us: before any of its setup

    knot = spawn_env.start(spawn_env.spec("exec sleep 1000"), before_setup=before_setup)
    assert knot.wait() == 0  # the service started, got the SIGTERM: a normal end (K-42)
    assert "Starting" in knot.log_text() and "SIGTERM" in knot.log_text()
