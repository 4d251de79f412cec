"""The logging handlers behind `protocol.logs`: a log file that survives its disk, syslog.

Owns the three places a daemon's own log lines go (T-40): an append-only file, a
copy on stderr (`--log-stderr`), and the local syslog socket.

Rules:
- A handler never raises and never prints a traceback (logging's `handleError` is
  replaced): the daemon must keep running whatever happens to its log.
- A problem is reported on stderr ONCE per change of condition ("cannot open: EISDIR",
  then "writable again"), never once per line. Records that cannot be written are
  dropped and counted; the first line written after a gap is a WARN line with that count.
- The file is opened O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, mode 0644 (before umask).
  After any failure the next record tries to open it again. It is also reopened when
  the path no longer names the open file (moved or deleted): the path's st_dev/st_ino
  are compared with the fd's at most once per `check_interval_s` (monotonic clock,
  one stat(2) per second at most), and at once on `reopen()` (what daemons call on
  SIGHUP-like events). copytruncate needs neither: O_APPEND writes at the new end.
- Syslog never blocks the daemon: a non-blocking datagram socket; EAGAIN drops the
  record and counts it; a vanished syslog daemon is reconnected on the next record.
Imports only protocol.sandboxlog of ours (the line formats shared with the knot).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from protocol import sandboxlog

# The original created its logs 0666 & ~umask (0644 with the usual umask); operators'
# `tail` as a non-root user keeps working. To restrict, restrict the directory (0750).
FILE_MODE = 0o644
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def describe_oserror(exc: OSError) -> str:
    """`EISDIR (Is a directory)`: the errno name first, as P8 asks."""
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name} ({os.strerror(exc.errno)})"


def write_stderr(text: str) -> None:
    """Write one line on the current sys.stderr; never raises."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or gone: nobody to tell
        pass


class _Reporter:
    """Says each problem once: only when the condition differs from the last one."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.condition: str | None = None
        self.dropped = 0  # records lost since the condition began

    def failed(self, condition: str, *, line_lost: bool) -> None:
        if line_lost:
            self.dropped += 1
        if condition != self.condition:
            self.condition = condition
            write_stderr(f"lithos: {self.subject}: {condition}; "
                         "log lines are dropped until this is fixed")

    def succeeded(self) -> None:
        if self.condition is not None:
            write_stderr(f"lithos: {self.subject}: writable again "
                         f"({self.dropped} log lines were dropped)")
            self.condition = None
            self.dropped = 0


class QuietHandler(logging.Handler):
    """A handler whose errors are swallowed: losing a log line must not kill a daemon."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging API)
        pass


class StderrHandler(QuietHandler):
    """Copies records to whatever sys.stderr is at the time (`--log-stderr`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad %-format in a call site must not escape
            return
        write_stderr(line)


class ReopeningFileHandler(QuietHandler):
    """Appends one line per record to `path`; survives and recovers from a broken path."""

    def __init__(self, path: Path, *, check_interval_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.path = path
        self.fd = -1
        self.check_interval_s = check_interval_s
        self._monotonic = monotonic
        self._checked_at = monotonic()
        self._reporter = _Reporter(f"log file {str(path)!r}")

    @property
    def dropped(self) -> int:
        """Records lost since the current problem began (0 when healthy)."""
        return self._reporter.dropped

    def open(self) -> bool:
        """Open (or reopen) the path now; report a failure once; True on success."""
        return self._open(line_lost=False)

    def _open(self, *, line_lost: bool) -> bool:
        self._close_fd()
        try:
            self.fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        except OSError as exc:
            self._reporter.failed(f"cannot open: {describe_oserror(exc)}", line_lost=line_lost)
            return False
        self._checked_at = self._monotonic()
        return True

    def reopen(self) -> None:
        """Close and open the path again (logrotate without copytruncate, SIGHUP)."""
        self.acquire()
        try:
            self._open(line_lost=False)
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            self._close_fd()
        finally:
            self.release()
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            return
        if self.fd >= 0 and self._path_moved():
            self._close_fd()
        if self.fd < 0 and not self._open(line_lost=True):
            return
        if self._reporter.condition is not None and self._reporter.dropped:
            data = self._gap_note(record) + data
        try:
            _write_all(self.fd, data)
        except OSError as exc:
            # ENOSPC, EIO, EFBIG...: drop the line, and start over from open() next time,
            # which also notices a path that has become a directory meanwhile.
            self._close_fd()
            self._reporter.failed(f"cannot write: {describe_oserror(exc)}", line_lost=True)
            return
        self._reporter.succeeded()

    def _gap_note(self, record: logging.LogRecord) -> bytes:
        """A WARN line saying how many lines are missing just before this one, and why."""
        note = logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                                 "%s: %d log lines were dropped (%s)",
                                 (self._reporter.subject, self._reporter.dropped,
                                  self._reporter.condition), None)
        note.created = record.created
        try:
            return (self.format(note) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            return b""

    def _path_moved(self) -> bool:
        now = self._monotonic()
        if now - self._checked_at < self.check_interval_s:
            return False
        self._checked_at = now
        try:
            on_path = os.stat(self.path)
            open_file = os.fstat(self.fd)
        except OSError:  # deleted, or its directory went away: reopen (and report)
            return True
        return (on_path.st_dev, on_path.st_ino) != (open_file.st_dev, open_file.st_ino)

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # EIO on close: the fd is gone all the same
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def syslog_datagram(facility: int, levelno: int, ident: str, pid: int,
                    created: float, message: str) -> bytes:
    """`<PRI>Mmm dd hh:mm:ss ident[pid]: message`, the local format of syslog(3)."""
    # syslog(3) stamps local time; the daemon may restamp.
    gmtoff = time.localtime(created).tm_gmtoff
    return sandboxlog.syslog_datagram(facility, levelno, ident, pid, created, gmtoff, message)


class SyslogHandler(QuietHandler):
    """Sends each record as one datagram to a local syslog socket; never blocks."""

    def __init__(self, *, facility: int, ident: str, address: str) -> None:
        super().__init__()
        self.facility = facility
        self.ident = ident
        self.address = address
        self.sock: socket.socket | None = None
        self.dropped_total = 0  # every record lost, for metrics
        self._reporter = _Reporter(f"syslog socket {address!r}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            return
        pid = getattr(record, "lithos_pid", None)  # a relayed supervisor line's own pid
        data = syslog_datagram(self.facility, record.levelno, self.ident,
                               pid if isinstance(pid, int) else os.getpid(), record.created,
                               message)
        try:
            if self.sock is None:
                self.sock = self._connect()
            self.sock.send(data)
        except BlockingIOError:
            # The syslog daemon is behind: dropping beats blocking the supervisor.
            self._drop("socket buffer full (EAGAIN)")
            return
        except OSError as exc:
            # ECONNREFUSED/ENOENT: syslogd restarted or is gone; EMSGSIZE: line too long.
            self._close_sock()
            self._drop(f"cannot send: {describe_oserror(exc)}")
            return
        self._reporter.succeeded()

    def close(self) -> None:
        self.acquire()
        try:
            self._close_sock()
        finally:
            self.release()
        super().close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def _drop(self, condition: str) -> None:
        self.dropped_total += 1
        self._reporter.failed(condition, line_lost=True)

    def _close_sock(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
