"""The config log: one line per sandbox per tree start, with its whole process config.

Owns `<config-log-dir>/<sandbox>.log` (T-27) and its rotation (T-28). Each line is
`<RFC3339 UTC seconds> <compact JSON>\\n`; the caller builds the JSON (T-27 fixes its
key order), this module only stores it.

Rules:
- Rotation is checked before each write: when the file is over `max_bytes`
  (10 485 760), `.100` is deleted, `.99` -> `.100` ... `.1` -> `.2`, then the log
  becomes `.1`. Missing numbers are skipped, so a gap never stops the shift.
- Write errors are logged (`Error writing config log: ...`) and returned, never raised
  (T-28): the config log must not stop a tree from starting its services.
- `config-log-dir: null` means the caller never calls this.
- Files are created mode 0644 (before umask), opened O_APPEND and closed after each
  line, so an outside rotation (copytruncate or rename) is always safe.
Imports only protocol.loghandlers of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from protocol.loghandlers import FILE_MODE, describe_oserror

log = logging.getLogger(__name__)

MAX_BYTES = 10_485_760
KEEP_FILES = 100


def config_log_path(config_log_dir: Path, sandbox: str) -> Path:
    """`<config-log-dir>/<sandbox>.log`. Raises ValueError for a name that is not a file name."""
    if not sandbox or "/" in sandbox or sandbox in (".", "..") or "\0" in sandbox:
        raise ValueError(f"sandbox name {sandbox!r} cannot name a log file")
    return config_log_dir / f"{sandbox}.log"


def format_line(line_json: str, now: datetime) -> str:
    """`2018-01-01T00:00:00Z {"instances":1,...}` plus the newline."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} {line_json}\n"


def rotate(path: Path, keep: int = KEEP_FILES) -> None:
    """Shift `path.N` to `path.N+1` (dropping `path.<keep>`), then `path` to `path.1`.

    Raises OSError for anything but a missing file.
    """
    _remove_if_present(Path(f"{path}.{keep}"))
    for n in range(keep - 1, 0, -1):
        _rename_if_present(Path(f"{path}.{n}"), Path(f"{path}.{n + 1}"))
    _rename_if_present(path, Path(f"{path}.1"))


def append_config_log(config_log_dir: Path, sandbox: str, line_json: str, now: datetime, *,
                      max_bytes: int = MAX_BYTES, keep: int = KEEP_FILES) -> str | None:
    """Append one line for `sandbox`, rotating first if needed; the error text, or None."""
    try:
        path = config_log_path(config_log_dir, sandbox)
        if "\n" in line_json:
            raise ValueError("the JSON must be compact: one line, no newline")
        data = format_line(line_json, now).encode("utf-8")
    except ValueError as exc:
        return _report(f"{config_log_dir}: {exc}")
    try:
        if _size(path) > max_bytes:
            rotate(path, keep)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        return _report(f"{where}: {describe_oserror(exc)}")
    return None


def _report(error: str) -> str:
    log.error("Error writing config log: %s", error)
    return error


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove_if_present(path: Path) -> None:
    path.unlink(missing_ok=True)


def _rename_if_present(source: Path, target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # a gap, or not rotated that far yet
        source.rename(target)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
