"""Both pid 1s write the same stdio-log lines; the native one falls back to Python.

The lines are compared byte for byte with protocol.stdiolog's (K-41), in both
modes (the `env` fixture runs each test with the native and the Python pid 1).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from knot import initbin
from knot.spawn import AUTO
from knot.spec import Volume, VolumeKind
from protocol.stdiolog import death_line, start_line, status_text

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

# Every signal whose default action ends a process, and a few real-time ones (not
# SIGQUIT: busybox sh ignores it).
DEADLY = [s for s in (*range(1, 32), 34, 40, 64) if s not in (
    signal.SIGQUIT, signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGURG, signal.SIGWINCH)]


def stamp(line: bytes) -> datetime:
    return datetime.strptime(line[:20].decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_start_and_death_lines_are_byte_identical_to_stdiolog(env):
    # The argv needs quoting: a tab, quotes, a backslash, non-ASCII, a newline; and it
    # is long (no line is cut).
    argv = ("/bin/sh", "-c", 'exit 7 # \t"é" \\ \u2028 \x01\n', "x" * 20000)
    code, knot = env.run(env.spec("", argv=argv))
    assert code == 2
    start, death = knot.log.read_bytes().splitlines(keepends=True)
    assert start == start_line("test/svc.0", argv, stamp(start))
    assert death == death_line("test/svc.0", status_text(7, None), 0, stamp(death))


@pytest.mark.parametrize("signo", DEADLY)
def test_death_by_each_signal_is_worded_as_stdiolog(env, signo):
    code, knot = env.run(env.spec(f"kill -{signo} $$"))
    death = knot.log.read_bytes().splitlines(keepends=True)[-1]
    core = b"(core dumped)" in death
    assert death == death_line("test/svc.0", status_text(None, signo, core), 0, stamp(death))


def test_status_fd_gets_each_raw_wait_status(env):
    # lithos_cmd's --status-fd: one decimal line per death, the service never sees the fd.
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        spec = env.spec("echo fds:; ls /proc/$$/fd; echo :fds; "
                        "[ -e /tmp/ran ] && kill -USR1 $$; touch /tmp/ran; exit 3",
                        restart_process_only=True, restart_timeout_s=0,
                        volumes=(Volume(VolumeKind.TMPFS, "/tmp", None, size_bytes=1 << 20),))
        knot = env.start(spec, status_fd=status_w)
        os.close(status_w)
        status_w = -1
        lines = b""
        while lines.count(b"\n") < 2:
            ready, _, _ = select.select([status_r], [], [], 20)
            assert ready, knot.log_text()
            lines += os.read(status_r, 100)
        # exit 3, then killed by SIGUSR1 at every restart (restart-timeout 0: on a busy
        # host more deaths than two may be in the pipe by the time we read it; the last
        # line read may be cut)
        first, second, *more = lines[:lines.rindex(b"\n")].splitlines()
        assert (first, second) == (b"768", b"10") and set(more) <= {b"10"}, lines
        os.kill(knot.pid, signal.SIGTERM)
        knot.wait()
    finally:
        os.close(status_r)
        if status_w >= 0:
            os.close(status_w)
    assert knot.log_text().split("fds:\n")[1].split(":fds")[0].split() == ["0", "1", "2"]


@pytest.fixture
def no_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A PATH without cc, an empty cache dir, and choose()'s memo cleared around the test."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv(initbin.CACHE_ENV, str(tmp_path / "init-cache"))
    monkeypatch.delenv(initbin.MODE_ENV, raising=False)
    initbin.choose.cache_clear()
    yield
    initbin.choose.cache_clear()


def test_without_a_compiler_the_python_pid_1_runs(env, no_compiler, caplog):
    caplog.set_level(logging.WARNING, logger="lithos.knot.init")
    env.native_init = AUTO  # what the broker passes: knot.initbin.choose() decides
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    assert b"knot.lithos_knot" in Path(f"/proc/{knot.pid}/cmdline").read_bytes()  # Python
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0
    assert env.run(env.spec("exit 0"))[0] == 2      # a second knot: nothing logged again
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "no C compiler (cc)" in logged[0], logged
    assert "Python pid 1" in logged[0]


def test_python_is_forced_by_the_environment(env, monkeypatch):
    monkeypatch.setenv(initbin.MODE_ENV, "python")
    initbin.choose.cache_clear()
    try:
        assert initbin.choose() is None
    finally:
        initbin.choose.cache_clear()


def test_the_native_pid_1_is_named_lithos_knot(env, init_mode):
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    comm = Path(f"/proc/{knot.pid}/comm").read_text().strip()
    # The Python pid 1 keeps the interpreter's name (comm: the exec'd file's
    # basename, 15 bytes at most): python3 here, python in a venv.
    python = os.path.basename(sys.executable)[:15]
    assert comm == ("lithos_knot" if init_mode == "native" else python)
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0


def test_a_native_init_that_cannot_be_execd_falls_back_to_python(env):
    bogus = env.tmp / "not-an-elf"
    bogus.write_text("not a program\n")
    bogus.chmod(0o755)
    env.native_init = bogus
    env.fork = False  # an exec'd knot has a Python pid 1 of its own to fall back on
    code, knot = env.run(env.spec("exit 5", normal_exit_codes=(5,)))
    assert code == 0                                  # the Python pid 1 ran the service
    assert knot.stderr_text() == ("knot[test/svc.0]: exec native init: ENOEXEC (Exec format "
                                  "error); the Python pid 1 runs instead\n")
    assert "exited with code 5, uptime 0s -----" in knot.log_text()


def test_a_forked_knot_whose_native_init_cannot_be_execd_fails_its_setup(env):
    # A Python pid 1 forked from the spawner would keep the spawner's heap: no fallback.
    bogus = env.tmp / "not-an-elf"
    bogus.write_text("not a program\n")
    bogus.chmod(0o755)
    env.native_init = bogus
    env.fork = True
    code, knot = env.run(env.spec("exit 5", normal_exit_codes=(5,)))
    assert code == 78
    assert knot.stderr_text() == ("knot[test/svc.0]: exec native init: ENOEXEC (Exec format "
                                  "error); a forked knot has no Python pid 1 to fall back on\n")
    assert "exited with code" not in knot.log_text()


def test_a_missing_native_init_is_a_setup_failure(env):
    env.native_init = env.tmp / "missing"
    code, knot = env.run(env.spec("exit 0"))
    assert code == 78
    assert knot.stderr_text() == (f"knot[test/svc.0]: open native init: {env.tmp}/missing: "
                                  "ENOENT (No such file or directory)\n")
