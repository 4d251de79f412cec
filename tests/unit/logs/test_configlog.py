"""The config log and its rotation (T-27, T-28)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from protocol.configlog import (
    KEEP_FILES,
    MAX_BYTES,
    append_config_log,
    format_line,
    rotate,
)

NOW = datetime(2018, 1, 1, 0, 0, 0, 750000, tzinfo=UTC)
JSON = '{"instances":1,"image":"web.v1","config":"/config/main.yaml","kind":"Daemon"}'


def test_t27_line_format() -> None:
    assert format_line(JSON, NOW) == f"2018-01-01T00:00:00Z {JSON}\n"
    plus3 = datetime(2018, 1, 1, 3, 0, 0, tzinfo=timezone(timedelta(hours=3)))
    assert format_line("{}", plus3) == "2018-01-01T00:00:00Z {}\n"
    with pytest.raises(ValueError):
        format_line("{}", datetime(2018, 1, 1))


def test_t27_appends_a_line_at_every_call(tmp_path: Path) -> None:
    assert append_config_log(tmp_path, "web", JSON, NOW) is None
    assert append_config_log(tmp_path, "web", JSON, NOW + timedelta(seconds=61)) is None
    assert append_config_log(tmp_path, "db", "{}", NOW) is None
    assert (tmp_path / "web.log").read_text() == \
        f"2018-01-01T00:00:00Z {JSON}\n2018-01-01T00:01:01Z {JSON}\n"
    assert (tmp_path / "db.log").read_text() == "2018-01-01T00:00:00Z {}\n"


def test_t28_defaults() -> None:
    assert (MAX_BYTES, KEEP_FILES) == (10_485_760, 100)


def contents(tmp_path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(tmp_path.iterdir())}


def test_t28_rotation_shifts_and_drops_the_oldest(tmp_path: Path) -> None:
    line_bytes = len(format_line("{}", NOW))                      # 24
    for n in range(7):
        stamp = NOW + timedelta(seconds=n)
        assert append_config_log(tmp_path, "web", "{}", stamp, max_bytes=line_bytes,
                                 keep=3) is None
    # A one-line file (24 bytes) is not *over* the limit, so each file holds two lines.
    files = contents(tmp_path)
    assert sorted(files) == ["web.log", "web.log.1", "web.log.2", "web.log.3"]
    assert files["web.log"] == "2018-01-01T00:00:06Z {}\n"
    assert files["web.log.1"] == "2018-01-01T00:00:04Z {}\n2018-01-01T00:00:05Z {}\n"
    assert files["web.log.2"] == "2018-01-01T00:00:02Z {}\n2018-01-01T00:00:03Z {}\n"
    assert files["web.log.3"] == "2018-01-01T00:00:00Z {}\n2018-01-01T00:00:01Z {}\n"
    append_config_log(tmp_path, "web", "{}", NOW + timedelta(seconds=7),
                      max_bytes=line_bytes, keep=3)
    append_config_log(tmp_path, "web", "{}", NOW + timedelta(seconds=8),
                      max_bytes=line_bytes, keep=3)
    files = contents(tmp_path)
    assert sorted(files) == ["web.log", "web.log.1", "web.log.2", "web.log.3"]
    assert files["web.log"] == "2018-01-01T00:00:08Z {}\n"
    assert files["web.log.3"].startswith("2018-01-01T00:00:02Z")  # 00 and 01 dropped


def test_t28_only_strictly_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "web.log"
    path.write_bytes(b"x" * 100)
    append_config_log(tmp_path, "web", "{}", NOW, max_bytes=100)
    assert not (tmp_path / "web.log.1").exists()
    append_config_log(tmp_path, "web", "{}", NOW, max_bytes=100)
    assert (tmp_path / "web.log.1").read_bytes().startswith(b"x" * 100)


def test_rotate_skips_gaps(tmp_path: Path) -> None:
    path = tmp_path / "web.log"
    for name, text in [("web.log", "cur"), ("web.log.2", "two"), ("web.log.5", "five"),
                       ("web.log.4", "four")]:
        (tmp_path / name).write_text(text)
    rotate(path, keep=5)
    assert contents(tmp_path) == {"web.log.1": "cur", "web.log.3": "two",
                                  "web.log.5": "four"}


def test_t28_write_errors_are_logged_and_returned_not_raised(tmp_path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="protocol.configlog")
    missing = tmp_path / "no-such-dir"
    error = append_config_log(missing, "web", "{}", NOW)
    assert error == f"{missing / 'web.log'}: ENOENT (No such file or directory)"
    assert caplog.messages == [f"Error writing config log: {error}"]
    (tmp_path / "web.log").mkdir()
    assert "EISDIR" in append_config_log(tmp_path, "web", "{}", NOW)


@pytest.mark.parametrize("sandbox", ["", ".", "..", "a/b", "x\0"])
def test_bad_sandbox_names_are_errors(tmp_path: Path, sandbox: str) -> None:
    error = append_config_log(tmp_path, sandbox, "{}", NOW)
    assert error is not None and "cannot name a log file" in error
    assert os.listdir(tmp_path) == []


def test_multiline_json_is_refused(tmp_path: Path) -> None:
    assert "compact" in append_config_log(tmp_path, "web", '{\n"a": 1}', NOW)
    assert os.listdir(tmp_path) == []
