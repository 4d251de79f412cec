"""Levels, precedence and the line format of the daemons' own logs (T-41, 1.1, 1.2)."""

from __future__ import annotations

import logging
import re
import sys
import traceback

import pytest

from protocol.logs import (
    FACILITIES,
    TRACE,
    LineFormatter,
    SyslogFormatter,
    exception_text,
    level_arg,
    level_name,
    parse_facility,
    parse_level,
    resolve_level,
    rfc3339_seconds,
    syslog_ident,
)

T0 = 1795863600.75  # 2026-11-28T11:00:00.75Z


def record(level: int, msg: str, *args: object, name: str = "supervisor.main",
           lineno: int = 42) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, "/x/supervisor/main.py", lineno, msg, args, None)
    rec.created = T0
    return rec


def test_rfc3339_cuts_fractions() -> None:
    assert rfc3339_seconds(T0) == "2026-11-28T11:00:00Z"


@pytest.mark.parametrize(("level", "text"), [
    (logging.CRITICAL, "ERROR"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARN"),
    (logging.INFO, "INFO"),
])
def test_t41_error_warn_info_format(level: int, text: str) -> None:
    line = LineFormatter().format(record(level, "web.3: %s -> %s", "STARTING", "RUNNING"))
    assert line == f"[2026-11-28T11:00:00Z][{text}] web.3: STARTING -> RUNNING"


@pytest.mark.parametrize(("level", "text"), [(logging.DEBUG, "DEBUG"), (TRACE, "TRACE")])
def test_t41_debug_trace_format_has_module_and_line(level: int, text: str) -> None:
    line = LineFormatter().format(record(level, "reaped %d", 4121))
    assert line == f"[2026-11-28T11:00:00Z][{text}]supervisor.main:42: reaped 4121"


def test_one_line_per_record_even_with_newlines_and_tracebacks() -> None:
    assert LineFormatter().format(record(logging.ERROR, "a\nb\r")) == \
        "[2026-11-28T11:00:00Z][ERROR] a\\nb\\r"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record(logging.ERROR, "failed")
        rec.exc_info = sys.exc_info()
    line = LineFormatter().format(rec)
    assert "\n" not in line and line.startswith("[2026-11-28T11:00:00Z][ERROR] failed\\n")
    assert "RuntimeError: boom" in line


CHAINED = """
def inner():
    raise KeyError("k")
def middle():
    try:
        inner()
    except KeyError as e:
        raise ValueError("bad") from e
def outer():
    try:
        middle()
    except ValueError:
        raise OSError(2, "gone")
class Quiet(Exception):
    pass
def suppressed():
    try:
        outer()
    except OSError:
        raise Quiet() from None
"""


@pytest.mark.parametrize("entry", ["inner", "middle", "outer", "suppressed"])
def test_exception_text_is_tracebacks_without_the_source_lines(entry: str) -> None:
    """The same text, but for the indented source lines (and ^^^ marks) traceback adds."""
    scope: dict[str, object] = {"__name__": "probe"}
    exec(compile(CHAINED, "<no source>", "exec"), scope)
    try:
        scope[entry]()  # type: ignore[operator]
    except Exception as e:  # noqa: BLE001 - any of them
        theirs = "".join(traceback.format_exception(e)).splitlines()
        assert exception_text(e).splitlines() == [x for x in theirs if not x.startswith("    ")]
    assert exception_text(None) == "NoneType: None"


def test_syslog_formatter_is_the_message_alone() -> None:
    assert SyslogFormatter().format(record(logging.WARNING, "hi %s", "x")) == "hi x"
    assert SyslogFormatter().format(record(logging.DEBUG, "d")) == "supervisor.main:42: d"


@pytest.mark.parametrize(("value", "level"), [
    ("error", logging.ERROR), ("WARN", logging.WARNING), ("Info", logging.INFO),
    ("debug", logging.DEBUG), ("TRACE", TRACE), (" info ", logging.INFO),
])
def test_levels_are_case_insensitive(value: str, level: int) -> None:
    assert parse_level(value) == level


@pytest.mark.parametrize("value", ["off", "OFF", "warning", "verbose", "", "5", None])
def test_invalid_levels_parse_to_none(value: str | None) -> None:
    assert parse_level(value) is None


def test_precedence_cli_then_sandbox_then_master_then_warn() -> None:
    assert resolve_level("debug", "error", "info") == logging.DEBUG
    assert resolve_level(None, "error", "info") == logging.ERROR
    assert resolve_level(None, None, "info") == logging.INFO
    assert resolve_level(None, None, None) == logging.WARNING


def test_invalid_values_are_skipped_not_fatal() -> None:
    # 1.2: "Invalid values are skipped silently"; `off` is rejected like any typo.
    assert resolve_level("off", "bogus", "info") == logging.INFO
    assert resolve_level("verbose", None, "nope") == logging.WARNING
    assert resolve_level("off", "trace", None) == TRACE


def test_level_name_and_t42_flag() -> None:
    assert [level_name(n) for n in (50, 40, 30, 20, 10, 5, 1)] == \
        ["ERROR", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "TRACE"]
    assert level_arg(resolve_level(None, None, "info")) == "--log-level=INFO"


def test_every_facility_name_of_the_11_table() -> None:
    expected = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
                "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
                "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
                "local5": 21, "local6": 22, "local7": 23}
    assert expected == FACILITIES
    for name, number in expected.items():
        assert parse_facility(name) == number
        assert parse_facility(name.upper()) == number
        assert parse_facility(f"log_{name}") == number
        assert parse_facility(f"LOG_{name.upper()}") == number


@pytest.mark.parametrize("bad", ["", "local8", "logdaemon", "log_", "daemon2", "security"])
def test_bad_facility_names_the_value_and_lists_accepted(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_facility(bad)
    message = str(info.value)
    assert message.startswith(f"syslog-facility: {bad!r} is not a syslog facility")
    assert re.search(r"kern, user, .*local7\)$", message)
    assert "log_" in message


def test_syslog_ident_of_tree_and_knot() -> None:
    assert syslog_ident("lithos", None) == "lithos"
    assert syslog_ident("lithos", "web") == "lithos-web"
