"""The sandbox log: the own lines of lithos_knot and lithos_cmd (T-40, K-4, K-12, K-41).

Owns what a knot needs to write `<default-log-dir>/<log-file>` (default
`<sandbox>.log`), or to syslog instead, from inside its container:
- `SandboxLog`, the settings the spawner hands to the knot as one argv word beside
  the log's fd (level, and for syslog the facility, the ident, the UTC offset);
- `open_sandbox_log`, which opens that fd in the spawner (the broker or lithos_cmd):
  the file in append mode, or a datagram socket connected to the syslog socket;
- `line`, the bytes of one record, which knot/init.c writes byte-identical:
  `[<RFC3339 UTC>][<LEVEL>] <message>\\n` (T-41), or the syslog(3) datagram
  `<PRI>Mmm dd hh:mm:ss <ident>[<pid>]: <message>`.

Rules:
- The knot opens nothing: after pivot_root the host's paths are gone, so the spawner
  opens the fd and the knot only writes to it. A failed write is ignored (pid 1 must
  not stop over its log); the broker's own log says when the open failed.
- The file is opened again at every knot start (like the stdio log), so a renamed
  log is left behind at the next restart; copytruncate works at once (O_APPEND).
- Syslog time stamps are local time; the knot has no /etc/localtime after
  pivot_root, so the spawner passes its UTC offset (`gmtoff_s`).
Imports only os, time, json and dataclasses at module level: every knot imports it.
`LITHOS_SYSLOG_SOCKET` (for tests) replaces `/dev/log` (see `syslog_address`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from protocol.structs import dataclass

ERROR, WARN, INFO, DEBUG, TRACE = 40, 30, 20, 10, 5
"""The logging module's level numbers (TRACE is lithos's 5)."""

DEFAULT_SYSLOG_SOCKET = "/dev/log"
SYSLOG_SOCKET_ENV = "LITHOS_SYSLOG_SOCKET"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def syslog_address() -> str:
    """`/dev/log`, or `$LITHOS_SYSLOG_SOCKET` when set (tests bind their own socket)."""
    return os.environ.get(SYSLOG_SOCKET_ENV) or DEFAULT_SYSLOG_SOCKET


def level_name(levelno: int) -> str:
    """The upper-case name lithos prints: ERROR, WARN, INFO, DEBUG, TRACE."""
    for threshold, name in ((ERROR, "ERROR"), (WARN, "WARN"), (INFO, "INFO"), (DEBUG, "DEBUG")):
        if levelno >= threshold:
            return name
    return "TRACE"


def rfc3339_seconds(created: float) -> str:
    """`2026-11-28T11:00:00Z` for a time.time() value (fractions are cut, not rounded)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(created)))


def syslog_severity(levelno: int) -> int:
    """err (3), warning (4), info (6), else debug (7)."""
    for threshold, severity in ((ERROR, 3), (WARN, 4), (INFO, 6)):
        if levelno >= threshold:
            return severity
    return 7


def syslog_datagram(facility: int, levelno: int, ident: str, pid: int,
                    created: float, gmtoff_s: int, message: str) -> bytes:
    """`<PRI>Mmm dd hh:mm:ss ident[pid]: message`, the local format of syslog(3)."""
    priority = facility * 8 + syslog_severity(levelno)
    tm = time.gmtime(int(created) + gmtoff_s)
    stamp = f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:" \
            f"{tm.tm_sec:02d}"
    return f"<{priority}>{stamp} {ident}[{pid}]: {message}".encode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class SandboxLog:
    """How a knot writes its sandbox log; `facility` None means the file."""

    level: int                    # records below it are not written
    facility: int | None = None   # syslog facility number (0..23) in syslog mode
    ident: str = ""               # `<syslog-name>-<sandbox>` in syslog mode
    gmtoff_s: int = 0             # the spawner's UTC offset, for syslog time stamps

    def to_arg(self) -> str:
        """One argv word (compact JSON)."""
        return json.dumps([self.level, self.facility, self.ident, self.gmtoff_s],
                          separators=(",", ":"))

    @classmethod
    def from_arg(cls, text: str) -> SandboxLog:
        """The inverse of to_arg. Raises ValueError naming what is wrong."""
        try:
            level, facility, ident, gmtoff_s = json.loads(text)
        except (ValueError, TypeError):
            raise ValueError(f"--sandbox-log: {text!r} is not [level,facility,ident,gmtoff]"
                             ) from None
        if not isinstance(level, int) or not 0 <= level <= 100:
            raise ValueError(f"--sandbox-log: level {level!r} is not 0..100")
        if facility is not None and (not isinstance(facility, int) or not 0 <= facility <= 23):
            raise ValueError(f"--sandbox-log: facility {facility!r} is not 0..23 or null")
        if not isinstance(ident, str) or "\0" in ident:
            raise ValueError(f"--sandbox-log: ident {ident!r} is not a string")
        if not isinstance(gmtoff_s, int) or abs(gmtoff_s) > 86400:
            raise ValueError(f"--sandbox-log: gmtoff {gmtoff_s!r} is not a UTC offset")
        return cls(level, facility, ident, gmtoff_s)

    @property
    def syslog(self) -> bool:
        return self.facility is not None


def settings(level: int, facility: int | None, ident: str) -> SandboxLog:
    """SandboxLog for a resolved level (protocol.logs.resolve_level) and parsed facility."""
    gmtoff = time.localtime().tm_gmtoff if facility is not None else 0
    return SandboxLog(level, facility, ident if facility is not None else "", gmtoff)


def open_sandbox_log(path: Path, log: SandboxLog) -> int:
    """The fd the knot writes to: `path` opened for appending, or a connected syslog socket.

    Raises OSError (its filename set to the path or the socket's address).
    """
    if not log.syslog:
        from protocol.loghandlers import FILE_MODE

        return os.open(path, _OPEN_FLAGS, FILE_MODE)
    import socket

    address = syslog_address()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        # Non-blocking: a syslog daemon that is behind drops the knot's line, never
        # blocks pid 1 (EAGAIN is ignored like every other write error).
        sock.setblocking(False)
        sock.connect(address)
    except OSError as e:
        sock.close()
        e.filename = address
        raise
    return sock.detach()


def line(log: SandboxLog, levelno: int, message: str, created: float, pid: int) -> bytes:
    """One record as written to the fd; b"" below the level. Newlines become `\\n`."""
    if levelno < log.level:
        return b""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    if log.facility is not None:
        return syslog_datagram(log.facility, levelno, log.ident, pid, created, log.gmtoff_s,
                               message)
    return (f"[{rfc3339_seconds(created)}][{level_name(levelno)}] {message}\n"
            ).encode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Writer:
    """A knot's (or lithos_cmd's) open sandbox log: the fd, its settings, the host pid."""

    fd: int
    log: SandboxLog
    pid: int  # as the host sees it: named in syslog datagrams

    def write(self, levelno: int, message: str) -> None:
        """Writes one record (nothing below the level); never raises."""
        data = line(self.log, levelno, message, time.time(), self.pid)
        if data:
            try:  # noqa: SIM105 - contextlib may not be loaded after pivot_root
                os.write(self.fd, data)
            except OSError:  # a full disk, a syslog daemon gone: pid 1 goes on
                pass
