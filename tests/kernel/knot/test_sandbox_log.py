"""The knot's own lines in the sandbox log (T-40, T-41, K-4, K-12, K-41, K-43).

Both pid 1s (the `env` fixture runs each test with the native and the Python one)
write byte for byte what protocol.sandboxlog.line() gives, at the level the spawner
passed: to a file, or as syslog datagrams to a socket (here one end of a socketpair).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from knot.spawn import spawn_knot
from protocol import sandboxlog
from protocol.sandboxlog import ERROR, INFO, WARN, SandboxLog
from protocol.stdiolog import death_message, kill_timeout_message, starting_message

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

NAME = "test/svc.0"


def start(env, spec, log: SandboxLog, slog_fd: int,  # type: ignore[no-untyped-def]
          inherited_fds: dict[int, int] | None = None) -> int:
    """env.start() with a sandbox log; returns the knot's pid (registered for clean-up)."""
    from tests.kernel.knot.conftest import Knot  # the fixture's own record of a knot

    stdio = env.tmp / f"stdio-{len(env.started)}.log"
    err = env.tmp / f"stderr-{len(env.started)}.txt"
    log_fd = os.open(stdio, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawn_knot(spec, inherited_fds=inherited_fds or {}, stdin=null, stdout=err_fd,
                         stderr=err_fd, stdio_log=log_fd, native_init=env.native_init,
                         sandbox_log=(slog_fd, log.to_arg()))
    finally:
        for fd in (log_fd, err_fd, null):
            os.close(fd)
    env.started.append(Knot(pid=pid, spec=spec, log=stdio, stderr=err))
    return pid


def expected(log: SandboxLog, levelno: int, message: str, pid: int, since: float) -> set[bytes]:
    """The line for each second from `since` to now (the stamp is the only unknown)."""
    return {sandboxlog.line(log, levelno, message, t, pid)
            for t in range(int(since), int(time.time()) + 1)}


def run_to_file(env, tmp_path: Path, spec, level: int) -> tuple[list[bytes], int, float]:  # type: ignore[no-untyped-def]
    path = tmp_path / "sandbox.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    since = time.time()
    try:
        pid = start(env, spec, SandboxLog(level), fd)
    finally:
        os.close(fd)
    env.started[-1].wait()
    return path.read_bytes().splitlines(keepends=True), pid, since


def test_file_lines_at_info(env, tmp_path) -> None:
    argv = ("/bin/sh", "-c", 'exit 7 # "q"')
    lines, pid, since = run_to_file(env, tmp_path, env.spec("", argv=argv), INFO)
    log = SandboxLog(INFO)
    assert len(lines) == 3, lines
    assert lines[0] in expected(log, INFO, f"[{NAME}] Starting container", pid, since)
    assert lines[1] in expected(log, WARN, starting_message(NAME, argv), pid, since)
    assert lines[2] in expected(log, ERROR, death_message(NAME, "exited with code 7", 0),
                                pid, since)
    assert lines[1].startswith(b"[") and b"][WARN] Starting \"test/svc.0\": " in lines[1]


def test_level_error_keeps_only_the_death_line(env, tmp_path) -> None:
    lines, pid, since = run_to_file(env, tmp_path, env.spec("kill -9 $$"), ERROR)
    assert len(lines) == 1, lines
    assert lines[0] in expected(SandboxLog(ERROR), ERROR,
                                death_message(NAME, "killed by signal SIGKILL[9]", 0), pid, since)


def test_a_failed_start_is_a_fatal_error_line(env, tmp_path) -> None:
    """K-43: `Fatal error running "<name>": <e>`, the same text as the line on stderr."""
    spec = env.spec("", executable="/nonexistent", argv=("/nonexistent",))
    lines, pid, since = run_to_file(env, tmp_path, spec, WARN)
    stderr = env.started[-1].stderr_text().strip()
    text = stderr.removeprefix(f"knot[{NAME}]: ")
    assert "exec /nonexistent: ENOENT" in text
    assert lines[-1] in expected(SandboxLog(WARN), ERROR,
                                 f'Fatal error running "{NAME}": {text}', pid, since)


def test_syslog_datagrams_with_ident_pid_and_local_time(env) -> None:
    """T-40: syslog mode writes one datagram per line: facility local3 (19), the
    spawner's UTC offset, ident and the knot's pid as the host sees it; the kill-timeout
    message at error (K-41 step 6)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    log = SandboxLog(INFO, 19, "lithos-test", 5400)
    since = time.time()
    spec = env.spec("trap '' TERM; echo up >&3; exec 3>&-; while :; do sleep 1; done",
                    kill_timeout_s=0.5, tcp_fds=(3,))
    try:
        pid = start(env, spec, log, theirs.fileno(), {3: up_w})
    finally:
        theirs.close()
        os.close(up_w)
    ours.settimeout(20)
    with ours:
        got = [ours.recv(65536) for _ in range(2)]
        try:
            assert select.select([up_r], [], [], 20)[0] and os.read(up_r, 10) == b"up\n"
        finally:
            os.close(up_r)
        os.kill(pid, signal.SIGTERM)
        assert env.started[-1].wait() == 3  # EXIT_KILL_TIMEOUT
        got.append(ours.recv(65536))
    assert got[0] in expected(log, INFO, f"[{NAME}] Starting container", pid, since)
    assert got[0].startswith(b"<158>") and f" lithos-test[{pid}]: ".encode() in got[0]
    assert got[1] in expected(log, WARN, starting_message(NAME, spec.argv), pid, since)
    assert got[2].startswith(b"<155>")
    assert any(got[2] == sandboxlog.line(log, ERROR, kill_timeout_message(NAME, 0.5, u), t, pid)
               for u in (0, 1) for t in range(int(since), int(time.time()) + 1)), got[2]
