"""broker.logrelay: the supervisor's stderr lines reach the broker's handlers (T-40)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from broker.logrelay import MAX_LINE_BYTES, LogRelay, record_of
from protocol.logs import LineFormatter, SyslogFormatter


class Collect(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, self.format(record)))


class Pipe:
    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)

    def write(self, data: bytes) -> None:
        os.write(self.w, data)

    def close_writer(self) -> None:
        fd, self.w = self.w, -1
        if fd >= 0:
            os.close(fd)


@pytest.fixture
def relay(no_fd_leak: None) -> Iterator[tuple[LogRelay, Pipe, Collect, Collect]]:
    logger = logging.getLogger("lithos_test.relay")
    logger.propagate = False
    files, syslog = Collect(LineFormatter()), Collect(SyslogFormatter())
    logger.addHandler(files)
    logger.addHandler(syslog)
    pipe = Pipe()
    relay = LogRelay(pipe.r, 4242, logger)
    try:
        yield relay, pipe, files, syslog
    finally:
        logger.removeHandler(files)
        logger.removeHandler(syslog)
        relay.close()
        pipe.close_writer()


def test_lines_keep_their_text_for_files_and_lose_the_prefix_for_syslog(relay) -> None:
    lr, w, files, syslog = relay
    w.write(b"[2026-11-28T11:00:00Z][INFO] web/app.0: STARTING -> RUNNING (pid 7)\n"
                b"[2026-11-28T11:00:01Z][DEBUG]supervisor.main:95: x\n[2026-11-28T1")
    assert lr.on_readable()
    assert files.lines == [
        (20, "[2026-11-28T11:00:00Z][INFO] web/app.0: STARTING -> RUNNING (pid 7)"),
        (10, "[2026-11-28T11:00:01Z][DEBUG]supervisor.main:95: x")]
    assert [text for _, text in syslog.lines] == ["web/app.0: STARTING -> RUNNING (pid 7)",
                                                 "supervisor.main:95: x"]
    w.write(b"1:00:02Z][ERROR] half\n")
    assert lr.on_readable()
    assert files.lines[-1] == (40, "[2026-11-28T11:00:02Z][ERROR] half")


def test_a_foreign_line_is_an_error_formatted_as_ours(relay) -> None:
    lr, w, files, _ = relay
    w.write(b"Traceback (most recent call last):\n")
    lr.on_readable()
    level, text = files.lines[0]
    assert level == logging.ERROR
    assert text.endswith("][ERROR] Traceback (most recent call last):")


def test_long_lines_are_cut_and_eof_flushes(relay) -> None:
    lr, w, files, _ = relay
    w.write(b"[t][WARN] " + b"x" * (MAX_LINE_BYTES + 100))
    while len(files.lines) < 1:
        assert lr.on_readable()
    assert len(files.lines[0][1]) == MAX_LINE_BYTES
    w.write(b"x" * 100 + b"\n")  # still the long line: dropped
    assert lr.on_readable()
    assert len(files.lines) == 1
    w.write(b"[t][WARN] tail without newline")
    w.close_writer()
    while lr.on_readable():  # until EOF
        pass
    assert files.lines[-1] == (30, "[t][WARN] tail without newline")


def test_record_pid_is_the_supervisors() -> None:
    record = record_of("[t][WARN] m", 99)
    assert record.lithos_pid == 99 and record.getMessage() == "m"  # type: ignore[attr-defined]
