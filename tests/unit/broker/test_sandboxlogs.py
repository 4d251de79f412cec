"""broker.sandboxlogs: what each knot gets as its logs, and problems said once (T-40, 1.2)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from broker.sandboxlogs import SandboxLogs, sandbox_log_settings
from protocol.config import parse_master, parse_sandbox
from protocol.sandboxlog import ERROR, INFO, WARN, SandboxLog


def configs(tmp_path: Path, master_extra: str = "", sandbox_extra: str = ""):  # type: ignore[no-untyped-def]
    master = parse_master(f"default-log-dir: {tmp_path}\n{master_extra}".encode(),
                          str(tmp_path / "master.yaml"))
    sandbox = parse_sandbox(f"image-dir: /images\n{sandbox_extra}".encode(),
                            str(tmp_path / "web.yaml"), "web")
    return master, sandbox


def test_level_precedence_cli_sandbox_master(tmp_path: Path) -> None:
    master, sandbox = configs(tmp_path, "log-level: info\n", "log-level: error\n")
    assert sandbox_log_settings(master, sandbox, None).level == ERROR
    assert sandbox_log_settings(master, sandbox, "WARN").level == WARN
    master, sandbox = configs(tmp_path, "log-level: info\n")
    assert sandbox_log_settings(master, sandbox, None) == SandboxLog(INFO)


def test_syslog_ident_is_name_dash_sandbox(tmp_path: Path) -> None:
    master, sandbox = configs(tmp_path, "syslog-facility: daemon\nsyslog-app-name: app\n")
    log = sandbox_log_settings(master, sandbox, None)
    assert (log.facility, log.ident) == (3, "app-web")


def test_open_appends_to_log_file_or_default(tmp_path: Path) -> None:
    master, sandbox = configs(tmp_path, sandbox_extra="log-file: custom.log\n")
    got = SandboxLogs(master, None).open(sandbox)
    assert got is not None
    fd, arg = got
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "custom.log").stat().st_ino
        assert SandboxLog.from_arg(arg) == SandboxLog(WARN)
    finally:
        os.close(fd)


def test_a_failure_is_said_once_per_change(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    master, sandbox = configs(tmp_path)
    logs = SandboxLogs(master, None)
    (tmp_path / "web.log").mkdir()
    caplog.set_level(logging.WARNING, logger="broker.sandboxlogs")
    assert logs.open(sandbox) is None
    assert logs.open(sandbox) is None
    stdio = tmp_path / "stderr" / "web.log"
    for _ in range(2):
        fd = logs.open_stdio(stdio)  # no stderr dir: /dev/null instead
        assert os.path.samestat(os.fstat(fd), os.stat(os.devnull))
        os.close(fd)
    (tmp_path / "web.log").rmdir()
    stdio.parent.mkdir()
    got = logs.open(sandbox)
    assert got is not None
    os.close(got[0])
    os.close(logs.open_stdio(stdio))
    assert [r.getMessage() for r in caplog.records] == [
        f"sandbox log '{tmp_path}/web.log': cannot open: EISDIR (Is a directory); the knots "
        "of sandbox web start without their log lines until this is fixed",
        f"stdio log '{stdio}': cannot open: ENOENT (No such file or directory); the services "
        "start with their output going to /dev/null until this is fixed",
        f"sandbox log '{tmp_path}/web.log': writable again",
        f"stdio log '{stdio}': writable again",
    ]
