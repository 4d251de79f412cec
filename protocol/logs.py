"""Logging of the lithos daemons themselves: levels, line format, targets (T-40..T-42).

Owns the vocabulary every actor shares: the five levels and their precedence (1.1,
1.2), the line format `[<RFC3339 UTC>][<LEVEL>] <message>` (T-41), the syslog
facility names (1.1) and `setup_logging`, which points a logger at exactly one target:
a file (plus a stderr copy with `--log-stderr`), or syslog instead of the file.

Rules:
- One line per record: a newline inside a message (a traceback, a bad value quoted
  from a config) is written as the two characters `\\n`.
- Invalid levels are skipped silently, as the original does (T-41); `off` is invalid.
- An unparseable `syslog-facility` prints `Can't parse syslog facility: "x". Syslog
  is disabled.` on stderr and file logging is used (1.1).
- Takes plain values (paths, strings, levels), never config objects, so the tree,
  the knot, lithos_cmd and lithos_check can all call it.
The handlers (and their failure rules) live in protocol/loghandlers.py. Imports
nothing of ours but that and protocol.sandboxlog (the knot's half of the same format).
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from protocol.loghandlers import (
    QuietHandler,
    ReopeningFileHandler,
    StderrHandler,
    SyslogHandler,
    write_stderr,
)
from protocol.sandboxlog import level_name, rfc3339_seconds
from protocol.sandboxlog import syslog_address as default_syslog_address
from protocol.structs import dataclass

TRACE = 5
"""Level number of `trace`, below logging.DEBUG (10)."""

LEVELS: dict[str, int] = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
DEFAULT_LEVEL = logging.WARNING

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}


def parse_level(value: str | None) -> int | None:
    """`"Info"` -> logging.INFO; None for None or anything not in LEVELS (`off` too)."""
    if value is None:
        return None
    return LEVELS.get(value.strip().lower())


def resolve_level(cli: str | None, sandbox: str | None, master: str | None) -> int:
    """The first valid of CLI `--log-level`, sandbox `log-level`, master `log-level`, warn."""
    for candidate in (cli, sandbox, master):
        level = parse_level(candidate)
        if level is not None:
            return level
    return DEFAULT_LEVEL


def level_arg(levelno: int) -> str:
    """`--log-level=WARN`: the flag the tree passes on to its knots (T-42)."""
    return f"--log-level={level_name(levelno)}"


def parse_facility(name: str) -> int:
    """`"LOG_Local3"` -> 19. Raises ValueError listing the accepted names."""
    key = name.strip().lower()
    key = key.removeprefix("log_")
    facility = FACILITIES.get(key)
    if facility is None:
        raise ValueError(
            f"syslog-facility: {name!r} is not a syslog facility (accepted, case-insensitive "
            f"and optionally prefixed with log_: {', '.join(FACILITIES)})")
    return facility


def syslog_ident(app_name: str, sandbox: str | None) -> str:
    """`lithos` for the tree; `lithos-<sandbox>` for the knot and lithos_cmd (1.1)."""
    return app_name if sandbox is None else f"{app_name}-{sandbox}"


def log_path(default_log_dir: Path, log_file: Path) -> Path:
    """`default-log-dir` joined with `log-file`; an absolute `log-file` is used as-is."""
    return default_log_dir / log_file


def sandbox_log_path(default_log_dir: Path, sandbox: str, log_file: Path | None) -> Path:
    """The supervisor log of a sandbox: its `log-file`, by default `<sandbox>.log`."""
    return log_path(default_log_dir, log_file if log_file is not None else Path(f"{sandbox}.log"))


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def exception_text(exc: BaseException | None) -> str:
    """traceback.format_exception's text without the source lines, and without the
    traceback module: the daemons defer it (protocol/lazy.py), and past its privilege
    drop the supervisor may not be able to import it (or read sources) any more."""
    if exc is None:
        return "NoneType: None"
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    note = ""
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, note))
        if current.__cause__ is not None:
            current, note = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, note = current.__context__, _CONTEXT
        else:
            current = None
    parts = []
    for error, joiner in reversed(chain):
        lines = []
        frame = error.__traceback__
        if frame is not None:
            lines.append("Traceback (most recent call last):")
        while frame is not None:
            code = frame.tb_frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}')
            frame = frame.tb_next
        lines.append(_exception_line(error))
        parts.append("\n".join(lines) + joiner)
    return "".join(parts)


_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"


def _exception_line(error: BaseException) -> str:
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - as traceback does
        text = "<exception str() failed>"
    return f"{name}: {text}" if text else name


class _Formatter(logging.Formatter):
    """formatException by exception_text, not by the traceback module."""

    def formatException(self, ei: object) -> str:  # noqa: N802 (logging API)
        exc = ei[1] if isinstance(ei, tuple) else None
        return exception_text(exc)


class LineFormatter(_Formatter):
    """T-41: `[ts][LEVEL] msg`, and `[ts][DEBUG]<module>:<line>: msg` below INFO.

    `<module>` is the logger name, which P12 makes the dotted module (`__name__`).
    A record with a `lithos_line` (a line the supervisor formatted, relayed by the
    broker: broker/logrelay.py) is written as it is.
    """

    def format(self, record: logging.LogRecord) -> str:
        relayed = getattr(record, "lithos_line", None)
        if isinstance(relayed, str):
            return relayed
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        head = f"[{rfc3339_seconds(record.created)}][{level_name(record.levelno)}]"
        if record.levelno < logging.INFO:
            return _one_line(f"{head}{record.name}:{record.lineno}: {message}")
        return _one_line(f"{head} {message}")


class SyslogFormatter(_Formatter):
    """The message alone (syslog adds time, ident, pid and severity)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        # A relayed supervisor line (broker/logrelay.py) already names its module.
        if record.levelno < logging.INFO and not hasattr(record, "lithos_line"):
            message = f"{record.name}:{record.lineno}: {message}"
        return _one_line(message)


class LogMode(enum.Enum):
    FILE = "file"
    SYSLOG = "syslog"
    STDERR = "stderr"  # no log file given (lithos_check, tests)


@dataclass(eq=False)
class LogTarget:
    """Where a logger's records go, as set up by `setup_logging`; `close()` undoes it."""

    logger: logging.Logger
    mode: LogMode
    level: int
    handlers: list[QuietHandler]
    path: Path | None = None

    @property
    def file_handler(self) -> ReopeningFileHandler | None:
        for handler in self.handlers:
            if isinstance(handler, ReopeningFileHandler):
                return handler
        return None

    @property
    def syslog_handler(self) -> SyslogHandler | None:
        for handler in self.handlers:
            if isinstance(handler, SyslogHandler):
                return handler
        return None

    def reopen(self) -> None:
        """Reopen the log file now (after logrotate's rename, or on SIGHUP)."""
        handler = self.file_handler
        if handler is not None:
            handler.reopen()

    def close(self) -> None:
        """Detach and close every handler this target added."""
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.handlers = []


def setup_logging(*, log_file: Path | None, level: int, log_stderr: bool,
                  syslog_facility: str | None, syslog_ident: str,
                  syslog_address: str | None = None,
                  logger: logging.Logger | None = None) -> LogTarget:
    """Send `logger`'s records (the root logger by default) to syslog or to `log_file`.

    `level` is the resolved number (see `resolve_level`). `syslog_address` defaults to
    `/dev/log`, or `$LITHOS_SYSLOG_SOCKET` (protocol.sandboxlog.syslog_address, for
    tests: they bind their own socket). Syslog is used when
    `syslog_facility` parses; otherwise the file, plus a stderr copy if `log_stderr`;
    with no file either, stderr alone. Handlers a previous call added stay: call
    `LogTarget.close()` first. Never raises for a bad path: it is reported on stderr
    and retried at each record.
    """
    target_logger = logger if logger is not None else logging.getLogger()
    facility: int | None = None
    if syslog_facility is not None:
        try:
            facility = parse_facility(syslog_facility)
        except ValueError:
            write_stderr(f"Can't parse syslog facility: \"{syslog_facility}\". "
                         "Syslog is disabled.")
    handlers: list[QuietHandler] = []
    if facility is not None:
        mode = LogMode.SYSLOG
        address = syslog_address if syslog_address is not None else default_syslog_address()
        syslog = SyslogHandler(facility=facility, ident=syslog_ident, address=address)
        syslog.setFormatter(SyslogFormatter())
        handlers.append(syslog)
    else:
        if log_file is not None:
            mode = LogMode.FILE
            file_handler = ReopeningFileHandler(log_file)
            file_handler.open()  # report a bad path at start, not at the first record
            handlers.append(file_handler)
        else:
            mode = LogMode.STDERR
        if log_file is None or log_stderr:
            handlers.append(StderrHandler())
        for handler in handlers:
            handler.setFormatter(LineFormatter())
    target_logger.setLevel(level)
    for handler in handlers:
        target_logger.addHandler(handler)
    return LogTarget(logger=target_logger, mode=mode, level=level, handlers=handlers,
                     path=log_file if mode is LogMode.FILE else None)
