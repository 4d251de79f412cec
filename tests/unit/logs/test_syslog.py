"""Syslog mode: PRI, ident and message on a unix datagram socket the test binds (T-40, 1.1)."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.logs import FACILITIES, TRACE, LogMode, setup_logging

DATAGRAM = re.compile(
    r"<(\d+)>(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d "
    r"([^\[ ]+)\[(\d+)\]: (.*)$", re.S)


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for /dev/log; recv waits at most 5 s."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "log"))
    sock.settimeout(5)
    yield sock
    sock.close()


def syslog_target(logger: logging.Logger, address: str, *, facility: str = "daemon",
                  level: int = TRACE, ident: str = "lithos-web", log_stderr: bool = False,
                  log_file: Path | None = None):
    return setup_logging(log_file=log_file, level=level, log_stderr=log_stderr,
                         syslog_facility=facility, syslog_ident=ident,
                         syslog_address=address, logger=logger)


def receive(sock: socket.socket) -> tuple[int, str, int, str]:
    data = sock.recv(65536).decode()
    match = DATAGRAM.match(data)
    assert match, data
    return int(match.group(1)), match.group(3), int(match.group(4)), match.group(5)


@pytest.mark.parametrize(("level", "severity"), [
    (logging.CRITICAL, 3), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7), (TRACE, 7),
])
def test_pri_is_facility_times_8_plus_severity(logger, syslogd, level, severity) -> None:
    target = syslog_target(logger, syslogd.getsockname(), facility="local3")
    assert target.mode is LogMode.SYSLOG
    logger.log(level, "hello %s", "world")
    pri, ident, pid, message = receive(syslogd)
    assert pri == 19 * 8 + severity
    assert (ident, pid) == ("lithos-web", os.getpid())
    if level >= logging.INFO:
        assert message == "hello world"
    else:
        assert re.fullmatch(rf"{re.escape(logger.name)}:\d+: hello world", message)


@pytest.mark.parametrize("name", sorted(FACILITIES))
def test_every_facility_reaches_syslog(logger, syslogd, name) -> None:
    syslog_target(logger, syslogd.getsockname(), facility=f"LOG_{name.upper()}")
    logger.warning("x")
    assert receive(syslogd)[0] == FACILITIES[name] * 8 + 4


def test_syslog_replaces_the_file_and_ignores_log_stderr(logger, syslogd, tmp_path,
                                                         capsys) -> None:
    path = tmp_path / "master.log"
    target = syslog_target(logger, syslogd.getsockname(), log_stderr=True, log_file=path)
    assert target.mode is LogMode.SYSLOG and target.path is None
    logger.error("only syslog")
    assert receive(syslogd)[3] == "only syslog"
    assert not path.exists()
    assert capsys.readouterr().err == ""


def test_unparseable_facility_falls_back_to_the_file(logger, tmp_path, capsys) -> None:
    path = tmp_path / "master.log"
    target = syslog_target(logger, str(tmp_path / "nowhere"), facility="bogus",
                           log_file=path)
    assert target.mode is LogMode.FILE
    assert capsys.readouterr().err == \
        "Can't parse syslog facility: \"bogus\". Syslog is disabled.\n"
    logger.error("in the file")
    assert path.read_text().endswith("] in the file\n")


def test_one_datagram_per_record_on_one_line(logger, syslogd) -> None:
    syslog_target(logger, syslogd.getsockname())
    logger.error("a\nb")
    assert receive(syslogd)[3] == "a\\nb"


def test_full_socket_never_blocks_drops_and_counts(logger, syslogd, capsys) -> None:
    target = syslog_target(logger, syslogd.getsockname())
    handler = target.syslog_handler
    sent = 0
    while handler.dropped_total == 0:            # the receiver queue fills up: EAGAIN
        logger.error("line %d", sent)
        sent += 1
        assert sent < 100_000, "sending never hit EAGAIN"
    for _ in range(50):
        logger.error("dropped too")
    assert handler.dropped_total == 51
    err = capsys.readouterr().err.splitlines()
    assert err == [f"lithos: syslog socket '{syslogd.getsockname()}': socket buffer full "
                   "(EAGAIN); log lines are dropped until this is fixed"]
    syslogd.setblocking(False)
    while True:                                  # drain: syslogd caught up
        try:
            syslogd.recv(65536)
        except BlockingIOError:
            break
    logger.error("after")
    assert "writable again (51 log lines were dropped)" in capsys.readouterr().err
    syslogd.settimeout(5)
    assert receive(syslogd)[3] == "after"


def test_missing_syslog_daemon_reported_once_then_reconnects(logger, tmp_path,
                                                             capsys) -> None:
    address = str(tmp_path / "log")
    target = syslog_target(logger, address)
    logger.error("lost 1")
    logger.error("lost 2")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot send: ENOENT" in err[0]
    assert target.syslog_handler.dropped_total == 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        logger.error("delivered")
        assert receive(sock)[3] == "delivered"
    logger.error("gone again")  # ECONNREFUSED: the socket file is there, nobody reads
    assert "cannot send: ECONNREFUSED" in capsys.readouterr().err


def test_close_releases_the_socket(no_fd_leak, logger, syslogd) -> None:
    target = syslog_target(logger, syslogd.getsockname())
    logger.error("x")
    assert receive(syslogd)[3] == "x"
    target.close()
    assert target.syslog_handler is None and ours(logger) == []


def ours(logger: logging.Logger) -> list[logging.Handler]:
    """The logger's handlers other than pytest's capture (newer pytest adds one per logger)."""
    return [h for h in logger.handlers if type(h).__module__.startswith("protocol")]
