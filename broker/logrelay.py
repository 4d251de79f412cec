"""The supervisor's log lines, relayed by the broker into the tree's own log (T-40).

Owns the read end of the pipe that is the supervisor's stderr. The supervisor runs
unprivileged and may not open master.log (root's) nor, in tests, a root-only syslog
socket; so it writes its formatted lines (`[ts][LEVEL] message`) to stderr, and the
broker hands each line to its own handlers (protocol.logs): the same file, reopened
after logrotate's rename, the same report-once rules when the disk is full, the same
`--log-stderr` copy, or syslog instead (ident `syslog-name`, the supervisor's pid).

Rules: non-blocking reads from the loop, never a wait; one record per line, whatever
the supervisor's level said (it filtered already); a line that is not of that form
(a traceback of a crash) is relayed at ERROR as it is; a line longer than
MAX_LINE_BYTES is cut there (the rest, up to its newline, is dropped). The file
keeps the supervisor's own time stamp.
"""

from __future__ import annotations

import logging
import os
import re
import select

from protocol.logs import LEVELS

MAX_LINE_BYTES = 16 * 1024
_LINE_RE = re.compile(r"^\[[^\]]*\]\[(ERROR|WARN|INFO|DEBUG|TRACE)\] ?(.*)$", re.S)
_LEVELS = {name.upper(): number for name, number in LEVELS.items()}


def record_of(line: str, pid: int, logger_name: str = "supervisor") -> logging.LogRecord:
    """The record the broker's handlers write for one relayed line.

    `lithos_line` (the line as the supervisor formatted it) is what file and stderr
    handlers write; the message alone, at the parsed level, is what syslog gets.
    """
    match = _LINE_RE.match(line)
    levelno, message = (_LEVELS[match[1]], match[2]) if match else (logging.ERROR, line)
    record = logging.LogRecord(logger_name, levelno, __file__, 0, "%s", (message,), None)
    record.lithos_line = line if match else None  # None: format it as ours
    record.lithos_pid = pid
    return record


class LogRelay:
    """Reads one supervisor's stderr pipe; each complete line goes to `logger`'s handlers."""

    def __init__(self, fd: int, pid: int, logger: logging.Logger | None = None) -> None:
        self.fd = fd
        self.pid = pid
        self.logger = logger if logger is not None else logging.getLogger()
        self._partial = b""
        self._skipping = False
        os.set_blocking(fd, False)

    def on_readable(self) -> bool:
        """Reads what is there and relays whole lines; False at EOF (then close())."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._flush()
            return False
        if self._skipping:  # the rest of a line that was cut
            _, newline, data = data.partition(b"\n")
            if not newline:
                return True
            self._skipping = False
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            lines.append(self._partial[:MAX_LINE_BYTES])
            self._partial = b""
            self._skipping = True
        for line in lines:
            self._relay(line)
        return True

    def drain(self) -> None:
        """Relays whatever the pipe still holds (at shut-down), without waiting."""
        while self.fd >= 0 and _readable(self.fd) and self.on_readable():
            pass

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _flush(self) -> None:
        if self._partial:
            self._relay(self._partial)
            self._partial = b""

    def _relay(self, raw: bytes) -> None:
        line = raw[:MAX_LINE_BYTES].decode("utf-8", "backslashreplace").rstrip("\r")
        if line:
            self.logger.handle(record_of(line, self.pid))


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
