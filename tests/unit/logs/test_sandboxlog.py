"""protocol.sandboxlog: the knot's settings word and its line formats (T-40, T-41)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import sandboxlog
from protocol.sandboxlog import DEBUG, ERROR, INFO, TRACE, WARN, SandboxLog

T0 = 1795863600.9  # 2026-11-28T11:00:00.9Z


def test_file_line_is_the_t41_format() -> None:
    log = SandboxLog(INFO)
    assert sandboxlog.line(log, WARN, 'Starting "a/b.0": "/bin/sh"', T0, 42) == \
        b'[2026-11-28T11:00:00Z][WARN] Starting "a/b.0": "/bin/sh"\n'
    assert sandboxlog.line(log, ERROR, "x\ny\rz", T0, 42) == \
        b"[2026-11-28T11:00:00Z][ERROR] x\\ny\\rz\n"


def test_below_the_level_nothing_is_written() -> None:
    log = SandboxLog(ERROR)
    assert sandboxlog.line(log, WARN, "m", T0, 1) == b""
    assert sandboxlog.line(SandboxLog(TRACE), TRACE, "m", T0, 1).startswith(b"[2026")


def test_syslog_datagram_uses_facility_ident_pid_and_offset() -> None:
    log = SandboxLog(DEBUG, 19, "lithos-web", -3600)
    assert sandboxlog.line(log, ERROR, "dead", T0, 4121) == \
        b"<155>Nov 28 10:00:00 lithos-web[4121]: dead"
    assert sandboxlog.line(log, INFO, "m", T0 + 86400 * 4, 1).startswith(b"<158>Dec  2 ")
    assert sandboxlog.line(log, DEBUG, "m", T0, 1).startswith(b"<159>")
    assert sandboxlog.line(log, WARN, "m", T0, 1).startswith(b"<156>")


@settings(max_examples=60, deadline=None)
@given(level=st.integers(0, 100), facility=st.none() | st.integers(0, 23),
       ident=st.text(max_size=20).filter(lambda s: "\0" not in s),
       gmtoff=st.integers(-86400, 86400))
def test_settings_round_trip(level: int, facility: int | None, ident: str, gmtoff: int) -> None:
    log = SandboxLog(level, facility, ident, gmtoff)
    assert SandboxLog.from_arg(log.to_arg()) == log


@pytest.mark.parametrize("text", ["", "[]", "[20]", '[20,null,"",0,1]', '["20",null,"",0]',
                                  '[20,24,"",0]', '[20,null,3,0]', '[20,null,"",90000]',
                                  '[-1,null,"",0]', '[20,null,"a\\u0000",0]', "{}"])
def test_bad_settings_are_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--sandbox-log"):
        SandboxLog.from_arg(text)


def test_settings_file_mode_has_no_ident_or_offset() -> None:
    assert sandboxlog.settings(WARN, None, "lithos-web") == SandboxLog(WARN)
    log = sandboxlog.settings(INFO, 3, "lithos-web")
    assert (log.facility, log.ident, log.gmtoff_s) == (3, "lithos-web",
                                                        time.localtime().tm_gmtoff)


def test_syslog_address_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandboxlog.SYSLOG_SOCKET_ENV, raising=False)
    assert sandboxlog.syslog_address() == "/dev/log"
    monkeypatch.setenv(sandboxlog.SYSLOG_SOCKET_ENV, "/tmp/x.sock")
    assert sandboxlog.syslog_address() == "/tmp/x.sock"


def test_open_file_appends_and_writer_never_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "web.log"
    path.write_bytes(b"old\n")
    fd = sandboxlog.open_sandbox_log(path, SandboxLog(WARN))
    writer = sandboxlog.Writer(fd, SandboxLog(WARN), 1)
    writer.write(WARN, "one")
    writer.write(INFO, "hidden")
    import os

    os.close(fd)
    writer.write(ERROR, "fd closed: EBADF is swallowed")
    text = path.read_text().splitlines()
    assert text[0] == "old" and text[1].endswith("][WARN] one") and len(text) == 2


def test_open_syslog_without_a_daemon_names_the_socket(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(sandboxlog.SYSLOG_SOCKET_ENV, str(tmp_path / "none.sock"))
    with pytest.raises(OSError) as info:
        sandboxlog.open_sandbox_log(tmp_path / "x.log", SandboxLog(WARN, 1, "i"))
    assert info.value.filename == str(tmp_path / "none.sock")
