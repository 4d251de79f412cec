"""The stdio log and its marker lines, byte-exact (K-41, 1.1 stdio-log-dir)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from protocol.stdiolog import (
    StdioLogError,
    command_text,
    death_line,
    death_message,
    kill_timeout_line,
    kill_timeout_message,
    open_stdio_log,
    rust_quote,
    start_line,
    starting_message,
    status_text,
    status_text_of,
)

NOW = datetime(2026, 11, 28, 11, 0, 0, 999999, tzinfo=UTC)


def test_k41_start_line_byte_exact() -> None:
    assert start_line("web/django.0", ["/usr/bin/python3", "/code/sock.py"], NOW) == (
        b'2026-11-28T11:00:00Z: ----- Starting "web/django.0": '
        b'"/usr/bin/python3" "/code/sock.py" -----\n')
    assert start_line("web/cmd.x.12", ["/bin/true"], NOW) == \
        b'2026-11-28T11:00:00Z: ----- Starting "web/cmd.x.12": "/bin/true" -----\n'


def test_k41_death_line_byte_exact() -> None:
    assert death_line("web/django.0", status_text(1, None), 300.9, NOW) == (
        b'2026-11-28T11:00:00Z: ----- Process "web/django.0" exited with code 1, '
        b'uptime 300s -----\n')
    assert death_line("web/django.0", status_text(None, 15), 0, NOW) == (
        b'2026-11-28T11:00:00Z: ----- Process "web/django.0" killed by signal SIGTERM[15], '
        b'uptime 0s -----\n')


def test_k41_kill_timeout_line_byte_exact() -> None:
    assert kill_timeout_line("web/django.0", 5, 17.2, NOW) == (
        b'2026-11-28T11:00:00Z: ----- Process "web/django.0" did not respond to SIGTERM '
        b'in 5, uptime 17s. Killing.. -----\n')
    assert kill_timeout_line("a", 0.5, 1, NOW).count(b"in 0.5, uptime 1s.") == 1


def test_k41_log_messages_share_the_vocabulary() -> None:
    assert starting_message("web/a.0", ["/bin/sh", "-c", "x"]) == \
        'Starting "web/a.0": "/bin/sh" "-c" "x"'
    assert death_message("web/a.0", "exited with code 2", 3.5) == \
        'Process "web/a.0" exited with code 2, uptime 3s'
    assert kill_timeout_message("web/a.0", 5.0, 9) == (
        'Process "web/a.0" did not respond to SIGTERM in 5s, uptime 9s. '
        "Killing container so hanging process will die.")


def test_timestamps_are_utc_and_need_a_timezone() -> None:
    tz = timezone(timedelta(hours=-5))
    assert start_line("a", ["/x"], datetime(2026, 11, 28, 6, 0, tzinfo=tz)).startswith(
        b"2026-11-28T11:00:00Z: ")
    with pytest.raises(ValueError):
        start_line("a", ["/x"], datetime(2026, 11, 28))


def test_quoting_is_rusts_debug_quoting() -> None:
    assert rust_quote('say "hi"\\\n\t\r\0') == r'"say \"hi\"\\\n\t\r\0"'
    assert rust_quote("it's é ✓") == "\"it's é ✓\""
    assert rust_quote("\x01\x7f\u200b") == r'"\u{1}\u{7f}\u{200b}"'
    assert rust_quote(os.fsdecode(b"a\xffb")) == r'"a\xFFb"'
    assert command_text(["/bin/echo", "a b", ""]) == '"/bin/echo" "a b" ""'


@pytest.mark.parametrize(("args", "text"), [
    ((0, None), "exited with code 0"),
    ((255, None), "exited with code 255"),
    ((None, signal.SIGKILL), "killed by signal SIGKILL[9]"),
    ((None, 15), "killed by signal SIGTERM[15]"),
    ((None, 6, True), "killed by signal SIGABRT[6] (core dumped)"),
])
def test_status_text(args: tuple, text: str) -> None:
    assert status_text(*args) == text


def test_status_text_needs_exactly_one() -> None:
    with pytest.raises(ValueError):
        status_text(None, None)
    with pytest.raises(ValueError):
        status_text(1, 9)


def test_status_text_of_real_wait_statuses() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    _, status = os.waitpid(exited.pid, 0)
    assert status_text_of(status) == "exited with code 3"
    exited.returncode = 3
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.send_signal(signal.SIGTERM)
    _, status = os.waitpid(killed.pid, 0)
    killed.returncode = -15
    assert status_text_of(status) == "killed by signal SIGTERM[15]"


def test_open_stdio_log_appends_cloexec_0644(tmp_path: Path, no_fd_leak) -> None:
    old = os.umask(0)
    try:
        fd = open_stdio_log(tmp_path, "web")
    finally:
        os.umask(old)
    try:
        path = tmp_path / "web.log"
        assert path.stat().st_mode & 0o777 == 0o644
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY
        assert not os.get_inheritable(fd)
        os.write(fd, start_line("web/a.0", ["/bin/true"], NOW))
    finally:
        os.close(fd)
    fd = open_stdio_log(tmp_path, "web")      # reopened at each start: appends
    try:
        os.write(fd, death_line("web/a.0", "exited with code 0", 1, NOW))
    finally:
        os.close(fd)
    assert path.read_bytes().count(b"\n") == 2


def test_open_stdio_log_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "stderr"
    with pytest.raises(StdioLogError) as info:
        open_stdio_log(missing, "web")
    assert str(info.value).startswith(
        f'Error opening output file "{missing}/web.log": ENOENT (No such file or directory)')
    assert info.value.path == missing / "web.log"
    with pytest.raises(ValueError):
        open_stdio_log(tmp_path, "../etc")
