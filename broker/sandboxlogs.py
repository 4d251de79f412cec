"""Opening the logs of each knot (T-40, K-4, K-5): the broker's and lithos_cmd's part.

Owns the choice of what a knot gets as its sandbox log: `<default-log-dir>/<log-file>`
(the sandbox's `log-file`, by default `<sandbox>.log`) opened for appending, or, with
`syslog-facility`, a datagram socket connected to the syslog socket (ident
`<syslog-name>-<sandbox>`); and the level (`--log-level` of the tree, then the
sandbox's `log-level`, then the master's, then warn: 1.2, T-42).

Rules:
- A log that cannot be opened never stops a start: the knot runs without it (and
  the stdio log is replaced by /dev/null), and the problem is logged once per change
  of condition per path (`cannot open: EISDIR`, then `writable again`), not once per
  start (SandboxLogs keeps that memory).
- The fd is opened at every start, so a renamed file is left behind at the next
  start of each knot (and copytruncate works at once: O_APPEND).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from protocol.config import MasterConfig, SandboxConfig, sandbox_log_path
from protocol.loghandlers import describe_oserror
from protocol.logs import parse_facility, resolve_level, syslog_ident
from protocol.sandboxlog import SandboxLog, open_sandbox_log, settings, syslog_address
from protocol.stdiolog import StdioLogError, open_stdio_log

log = logging.getLogger(__name__)


def sandbox_log_settings(master: MasterConfig, sandbox: SandboxConfig,
                         cli_level: str | None) -> SandboxLog:
    """The level and syslog settings of `sandbox`'s knots."""
    level = resolve_level(cli_level, sandbox.log_level.value if sandbox.log_level else None,
                          master.log_level.value if master.log_level else None)
    facility = None
    if master.syslog_facility is not None:
        try:
            facility = parse_facility(master.syslog_facility)
        except ValueError:  # reported at start-up by setup_logging: files are used
            facility = None
    return settings(level, facility, syslog_ident(master.syslog_app_name, sandbox.name))


class SandboxLogs:
    """Opens sandbox logs for knots; remembers each path's last failure to say it once."""

    def __init__(self, master: MasterConfig, cli_level: str | None) -> None:
        self.master = master
        self.cli_level = cli_level
        self.failures: dict[str, str] = {}  # path or socket -> condition last reported

    def open(self, sandbox: SandboxConfig) -> tuple[int, str] | None:
        """(fd, settings) for spawn_knot's sandbox_log, or None when it cannot be opened."""
        slog = sandbox_log_settings(self.master, sandbox, self.cli_level)
        path = sandbox_log_path(self.master, sandbox)
        where = (f"syslog socket {syslog_address()!r}" if slog.syslog
                 else f"sandbox log {str(path)!r}")
        try:
            fd = open_sandbox_log(path, slog)
        except OSError as e:
            self._failed(where, f"cannot open: {describe_oserror(e)}",
                         f"the knots of sandbox {sandbox.name} start without their log lines")
            return None
        self._succeeded(where)
        return fd, slog.to_arg()

    def open_stdio(self, path: Path) -> int:
        """The stdio log of a start, or /dev/null when it cannot be opened (said once);
        never raises (-1 if even /dev/null cannot be opened).

        A log that cannot be opened (its directory gone, a directory in its place)
        does not keep the service from running: its output is lost until a later
        start finds the path writable again.
        """
        where = f"stdio log {str(path)!r}"
        try:
            fd = open_stdio_log(path.parent, path.stem)
        except StdioLogError as e:
            condition = f"cannot open: {describe_errno(e.errno)}" if e.errno else str(e)
            self._failed(where, condition, "the services start with their output "
                         "going to /dev/null")
            try:
                return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:  # EMFILE...: the starter tries the log again and refuses
                return -1
        self._succeeded(where)
        return fd

    def _failed(self, where: str, condition: str, consequence: str) -> None:
        if self.failures.get(where) != condition:
            self.failures[where] = condition
            log.warning("%s: %s; %s until this is fixed", where, condition, consequence)

    def _succeeded(self, where: str) -> None:
        if self.failures.pop(where, None) is not None:
            log.warning("%s: writable again", where)


def describe_errno(number: int) -> str:
    """`EISDIR (Is a directory)`."""
    return describe_oserror(OSError(number, os.strerror(number)))
