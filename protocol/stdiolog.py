"""The stdio log: the file a sandbox's services write their stdout and stderr to.

Owns `<stdio-log-dir>/<sandbox>.log` (1.1 `stdio-log-dir`) and the marker lines
written into it around each process start (K-41), so that the knot and the broker
write byte-identical lines:

    2026-11-28T11:00:00Z: ----- Starting "web/django.0": "/usr/bin/python3" "app.py" -----
    2026-11-28T11:05:00Z: ----- Process "web/django.0" exited with code 1, uptime 300s -----

Rules:
- Opened O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, mode 0644 (before umask): the services
  hold it as fds 1 and 2, lithos never reads or rotates it. It is opened again at each
  process start, so logrotate's copytruncate works, and so does a rename followed by a
  restart of the processes.
- Names and arguments are quoted as the original quotes them (Rust's `{:?}`), so
  existing greps keep working.
- Exit codes are printed as the process passed them, 0..255 (the original printed
  them as signed bytes: 255 as -1; T-37).
Pure apart from `open_stdio_log`. Imports only protocol.loghandlers of ours, and that
only inside `open_stdio_log`: every knot imports this module for the lines, and
loghandlers (logging, socket) would add ~10 ms to each container's start.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class StdioLogError(Exception):
    """The stdio log could not be opened; the message names the path and the errno."""

    def __init__(self, message: str, path: Path, errno: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


def stdio_log_path(stdio_log_dir: Path, sandbox: str) -> Path:
    """`<stdio-log-dir>/<sandbox>.log`. Raises ValueError for a name that is not a file name."""
    if not sandbox or "/" in sandbox or sandbox in (".", "..") or "\0" in sandbox:
        raise ValueError(f"sandbox name {sandbox!r} cannot name a log file")
    return stdio_log_dir / f"{sandbox}.log"


def open_stdio_log(stdio_log_dir: Path, sandbox: str) -> int:
    """Open the sandbox's stdio log for appending; the caller owns the returned fd.

    Raises StdioLogError naming the path.
    """
    from protocol.loghandlers import FILE_MODE, describe_oserror

    path = stdio_log_path(stdio_log_dir, sandbox)
    try:
        return os.open(path, _OPEN_FLAGS, FILE_MODE)
    except OSError as exc:
        raise StdioLogError(
            f"Error opening output file \"{path}\": {describe_oserror(exc)} "
            "(stdio-log-dir must be an existing, writable directory)",
            path, exc.errno) from None


def rust_quote(text: str) -> str:
    """`"a \\"b\\"\\n"`: a string quoted the way Rust's `{:?}` quotes it."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # nothing to escape (the usual case, on every start)
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02X}")
        elif char.isprintable() or char == " ":
            out.append(char)
        else:
            out.append(f"\\u{{{code:x}}}")
    out.append('"')
    return "".join(out)


_ESCAPES = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"', "\0": "\\0"}


def command_text(argv: Sequence[str]) -> str:
    """`"/usr/bin/python3" "app.py"`: the executable path, then each argument, quoted."""
    return " ".join(rust_quote(arg) for arg in argv)


def status_text(exit_code: int | None, signal_number: int | None,
                core_dumped: bool = False) -> str:
    """`exited with code 1` or `killed by signal SIGTERM[15]`; exactly one must be given."""
    if (exit_code is None) == (signal_number is None):
        raise ValueError("give exactly one of exit_code and signal_number")
    if exit_code is not None:
        return f"exited with code {exit_code}"
    assert signal_number is not None
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"SIG{signal_number}"
    core = " (core dumped)" if core_dumped else ""
    return f"killed by signal {name}[{signal_number}]{core}"


def status_text_of(wait_status: int) -> str:
    """status_text of a raw status from os.waitpid / os.wait4."""
    if os.WIFSIGNALED(wait_status):
        return status_text(None, os.WTERMSIG(wait_status), os.WCOREDUMP(wait_status))
    return status_text(os.waitstatus_to_exitcode(wait_status), None)


def seconds_text(value_s: float) -> str:
    """`5` for 5.0, `0.5` for 0.5: how the original prints `kill-timeout`."""
    return str(int(value_s)) if float(value_s).is_integer() else repr(float(value_s))


def rfc3339(now: datetime) -> str:
    """`2026-11-28T11:00:00Z`; `now` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# The log messages (knot, P12 vocabulary) and the stdio-log lines, side by side.

def starting_message(name: str, argv: Sequence[str]) -> str:
    """`Starting "web/django.0": "/usr/bin/python3" "app.py"` (warn level, K-41)."""
    return f"Starting {rust_quote(name)}: {command_text(argv)}"


def start_line(name: str, argv: Sequence[str], now: datetime) -> bytes:
    """`<ts>: ----- Starting "<name>": "<exe>" "<arg>" -----\\n` (K-41)."""
    return f"{rfc3339(now)}: ----- {starting_message(name, argv)} -----\n".encode(
        "utf-8", "backslashreplace")


def death_message(name: str, status: str, uptime_s: float) -> str:
    """`Process "web/django.0" exited with code 1, uptime 300s` (error level, K-41)."""
    return f"Process {rust_quote(name)} {status}, uptime {int(uptime_s)}s"


def death_line(name: str, status: str, uptime_s: float, now: datetime) -> bytes:
    """`<ts>: ----- Process "<name>" <status>, uptime <N>s -----\\n` (K-41)."""
    return f"{rfc3339(now)}: ----- {death_message(name, status, uptime_s)} -----\n".encode(
        "utf-8", "backslashreplace")


def kill_timeout_message(name: str, kill_timeout_s: float, uptime_s: float) -> str:
    """The error logged when the app outlives its `kill-timeout` (K-41 step 6)."""
    return (f"Process {rust_quote(name)} did not respond to SIGTERM in "
            f"{seconds_text(kill_timeout_s)}s, uptime {int(uptime_s)}s. "
            "Killing container so hanging process will die.")


def kill_timeout_line(name: str, kill_timeout_s: float, uptime_s: float,
                      now: datetime) -> bytes:
    """`<ts>: ----- Process "<name>" did not respond to SIGTERM in <kt>, uptime <N>s.
    Killing.. -----\\n`, on one line (K-41 step 6; the original has no `s` after kt)."""
    return (f"{rfc3339(now)}: ----- Process {rust_quote(name)} did not respond to SIGTERM "
            f"in {seconds_text(kill_timeout_s)}, uptime {int(uptime_s)}s. Killing.. -----\n"
            ).encode("utf-8", "backslashreplace")
