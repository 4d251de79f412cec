"""Properties: one line per record whatever the message; rotation never loses order."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.configlog import append_config_log
from protocol.logs import TRACE, LineFormatter
from protocol.stdiolog import rust_quote, start_line

NOW = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from([logging.ERROR, logging.WARNING, logging.INFO,
                                   logging.DEBUG, TRACE]))
def test_a_record_is_always_one_line(message: str, level: int) -> None:
    record = logging.LogRecord("x.y", level, "f.py", 7, "%s", (message,), None)
    line = LineFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.startswith("[") and "Z][" in line


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4), st.text())
def test_stdio_start_line_is_one_line(argv: list[str], name: str) -> None:
    line = start_line(name, argv, NOW)
    assert line.endswith(b" -----\n") and line.count(b"\n") == 1
    for arg in argv:
        assert rust_quote(arg).encode("utf-8", "backslashreplace") in line


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=25),
       st.integers(min_value=1, max_value=60), st.integers(min_value=1, max_value=4))
def test_rotation_keeps_the_newest_lines_in_order(sizes: list[int], max_bytes: int,
                                                  keep: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        written = []
        for n, size in enumerate(sizes):
            payload = f'"{n:03d}{"x" * size}"'
            assert append_config_log(directory, "sb", payload, NOW + timedelta(seconds=n),
                                     max_bytes=max_bytes, keep=keep) is None
            written.append(payload)
        files = [directory / f"sb.log.{i}" for i in range(keep, 0, -1)] + [directory / "sb.log"]
        kept = [line.split(" ", 1)[1] for f in files if f.exists()
                for line in f.read_text().splitlines()]
        assert kept == written[len(written) - len(kept):]  # a suffix, in order
        assert kept[-1] == written[-1]
        assert sorted(p.name for p in directory.iterdir()) == \
            sorted(f.name for f in files if f.exists())
