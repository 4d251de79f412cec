"""File logging: targets, --log-stderr, and surviving a broken log path (T-40, issue 12)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from protocol.loghandlers import ReopeningFileHandler
from protocol.logs import TRACE, LineFormatter, LogMode, setup_logging

TS = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\]"
LINE = re.compile(TS + r"\[(ERROR|WARN|INFO)\] (.*)$")
DEBUG_LINE = re.compile(TS + r"\[(DEBUG|TRACE)\]([\w.]+):(\d+): (.*)$")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def messages(path: Path) -> list[str]:
    out = []
    for line in lines(path):
        match = LINE.match(line) or DEBUG_LINE.match(line)
        assert match, line
        out.append(match.groups()[-1])
    return out


def file_target(logger: logging.Logger, path: Path, level: int = logging.WARNING,
                log_stderr: bool = False):
    return setup_logging(log_file=path, level=level, log_stderr=log_stderr,
                         syslog_facility=None, syslog_ident="lithos", logger=logger)


def test_t40_file_mode_appends_one_line_per_record(logger, tmp_path, capsys) -> None:
    path = tmp_path / "master.log"
    path.write_text("[2020-01-01T00:00:00Z][WARN] kept\n")
    target = file_target(logger, path, level=TRACE)
    assert target.mode is LogMode.FILE and target.path == path
    logger.error("e %d", 1)
    logger.warning("w")
    logger.info("i")
    logger.debug("d")
    logger.log(TRACE, "t")
    all_lines = lines(path)
    assert all_lines[0] == "[2020-01-01T00:00:00Z][WARN] kept"
    assert [LINE.match(x).group(1) for x in all_lines[1:4]] == ["ERROR", "WARN", "INFO"]
    debug = DEBUG_LINE.match(all_lines[4])
    assert debug and debug.group(1) == "DEBUG" and debug.group(2) == logger.name
    assert int(debug.group(3)) > 0
    assert DEBUG_LINE.match(all_lines[5]).group(1) == "TRACE"
    assert messages(path)[1:] == ["e 1", "w", "i", "d", "t"]
    assert capsys.readouterr().err == ""


def test_level_filters_records(logger, tmp_path) -> None:
    path = tmp_path / "master.log"
    file_target(logger, path, level=logging.WARNING)
    logger.info("hidden")
    logger.debug("hidden")
    logger.warning("shown")
    assert messages(path) == ["shown"]


def test_file_is_append_only_and_0644(logger, tmp_path) -> None:
    path = tmp_path / "master.log"
    old = os.umask(0)
    try:
        target = file_target(logger, path)
    finally:
        os.umask(old)
    logger.warning("x")
    assert path.stat().st_mode & 0o777 == 0o644
    import fcntl
    fd = target.file_handler.fd
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    assert not os.get_inheritable(fd)


def test_log_stderr_copies_records_in_file_mode(logger, tmp_path, capsys) -> None:
    path = tmp_path / "master.log"
    file_target(logger, path, log_stderr=True)
    logger.warning("both %s", "places")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and LINE.match(err[0]).group(2) == "both places"
    assert lines(path) == err


def test_without_log_stderr_nothing_on_stderr(logger, tmp_path, capsys) -> None:
    file_target(logger, tmp_path / "master.log")
    logger.error("only in the file")
    assert capsys.readouterr().err == ""


def test_no_file_means_stderr(logger, capsys) -> None:
    target = setup_logging(log_file=None, level=logging.INFO, log_stderr=False,
                           syslog_facility=None, syslog_ident="lithos", logger=logger)
    assert target.mode is LogMode.STDERR
    logger.info("hello")
    assert LINE.match(capsys.readouterr().err.strip()).group(2) == "hello"


def test_close_detaches(logger, tmp_path) -> None:
    path = tmp_path / "master.log"
    target = file_target(logger, path)
    target.close()
    logger.error("after close")
    assert ours(logger) == [] and lines(path) == []


# --- bad input: the daemon keeps running, says it once, recovers by itself ---


def reports(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lithos: log file")]


def test_directory_instead_of_file_reported_once_then_recovers(logger, tmp_path, capsys):
    path = tmp_path / "master.log"
    path.mkdir()
    target = file_target(logger, path)
    for n in range(5):
        logger.error("lost %d", n)
    err = reports(capsys.readouterr().err)
    assert err == [f"lithos: log file '{path}': cannot open: EISDIR (Is a directory); "
                   "log lines are dropped until this is fixed"]
    assert target.file_handler.dropped == 5
    path.rmdir()
    logger.error("back")
    assert messages(path) == [
        f"log file '{path}': 5 log lines were dropped (cannot open: EISDIR (Is a directory))",
        "back"]
    assert LINE.match(lines(path)[0]).group(1) == "WARN"
    assert reports(capsys.readouterr().err) == [
        f"lithos: log file '{path}': writable again (5 log lines were dropped)"]
    logger.error("more")
    assert messages(path)[1:] == ["back", "more"]
    assert capsys.readouterr().err == ""


def test_path_under_a_regular_file_then_fixed(logger, tmp_path, capsys) -> None:
    parent = tmp_path / "logdir"
    parent.write_text("not a directory")
    path = parent / "web.log"
    file_target(logger, path)
    logger.error("a")
    logger.error("b")
    assert len(reports(capsys.readouterr().err)) == 1
    parent.unlink()
    parent.mkdir()
    logger.error("c")
    assert messages(path)[1:] == ["c"]
    assert messages(path)[0].endswith("2 log lines were dropped (cannot open: ENOTDIR "
                                      "(Not a directory))")


def test_change_of_condition_is_reported_again(logger, tmp_path, capsys) -> None:
    parent = tmp_path / "logdir"
    path = parent / "web.log"
    file_target(logger, path)           # ENOENT: no such directory
    parent.write_text("")
    logger.error("x")                   # ENOTDIR: a new condition
    logger.error("y")
    err = reports(capsys.readouterr().err)
    assert len(err) == 2 and "ENOENT" in err[0] and "ENOTDIR" in err[1]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_reported_once_then_recovers(logger, tmp_path, capsys) -> None:
    path = tmp_path / "master.log"
    path.symlink_to("/dev/full")        # open succeeds, every write fails with ENOSPC
    file_target(logger, path)
    for n in range(10):
        logger.error("lost %d", n)
    err = reports(capsys.readouterr().err)
    assert len(err) == 1 and "cannot write: ENOSPC" in err[0]
    path.unlink()                       # space again: the next record reopens the path
    logger.error("kept")
    assert messages(path)[1:] == ["kept"]
    assert "10 log lines were dropped (cannot write: ENOSPC" in messages(path)[0]
    assert "writable again (10 log lines were dropped)" in capsys.readouterr().err


def _unwritable_dir_scenario(base: Path) -> dict[str, object]:
    """Log into a mode-0500 dir, make it writable, log again; what stderr and file saw."""
    import io
    import sys
    logdir = base / "log"
    logdir.mkdir(mode=0o500)
    path = logdir / "master.log"
    err = io.StringIO()
    sys.stderr, saved = err, sys.stderr
    lg = logging.getLogger("lithos_test.unwritable")
    lg.propagate = False
    try:
        target = file_target(lg, path)
        lg.error("lost")
        lg.error("lost")
        logdir.chmod(0o700)
        lg.error("kept")
        target.close()
    finally:
        sys.stderr = saved
    return {"reports": reports(err.getvalue()), "messages": messages(path)}


def test_unwritable_dir_reported_once_then_recovers() -> None:
    # chmod does not stop root: as root, run the scenario in a child that is nobody, in a
    # directory nobody can reach (pytest's tmp_path is under a 0700 directory).
    import json
    import tempfile
    import traceback
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        base.chmod(0o777)
        if os.geteuid() != 0:
            result = _unwritable_dir_scenario(base)
        else:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: never return into pytest
                try:
                    os.close(read_end)
                    os.setgid(65534)
                    os.setuid(65534)
                    reply = json.dumps(_unwritable_dir_scenario(base))
                except BaseException:
                    reply = json.dumps({"error": traceback.format_exc()})
                finally:
                    os.write(write_end, reply.encode())
                    os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            result = json.loads(data)
    assert "error" not in result, result.get("error")
    assert len(result["reports"]) == 2
    assert "cannot open: EACCES (Permission denied)" in result["reports"][0]
    assert "writable again (2 log lines were dropped)" in result["reports"][1]
    assert result["messages"][1:] == ["kept"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def clocked_handler(logger: logging.Logger, path: Path, clock: FakeClock):
    handler = ReopeningFileHandler(path, monotonic=clock)
    handler.setFormatter(LineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    assert handler.open()
    return handler


def test_moved_file_is_noticed_within_the_check_interval(logger, tmp_path, capsys) -> None:
    clock = FakeClock()
    path = tmp_path / "master.log"
    clocked_handler(logger, path, clock)
    logger.info("one")
    path.rename(tmp_path / "master.log.1")       # logrotate without copytruncate
    clock.now += 0.5
    logger.info("two")                            # within a second: still the old fd
    clock.now += 0.5
    logger.info("three")                          # stat says another file: reopen
    assert messages(tmp_path / "master.log.1") == ["one", "two"]
    assert messages(path) == ["three"]
    assert capsys.readouterr().err == ""


def test_deleted_file_is_recreated(logger, tmp_path) -> None:
    clock = FakeClock()
    path = tmp_path / "master.log"
    clocked_handler(logger, path, clock)
    logger.info("one")
    path.unlink()
    clock.now += 1
    logger.info("two")
    assert messages(path) == ["two"]


def test_file_replaced_by_directory_while_open(logger, tmp_path, capsys) -> None:
    clock = FakeClock()
    path = tmp_path / "master.log"
    handler = clocked_handler(logger, path, clock)
    logger.info("one")
    path.rename(tmp_path / "old.log")
    path.mkdir()
    clock.now += 1
    for _ in range(3):
        clock.now += 5
        logger.info("lost")
    err = reports(capsys.readouterr().err)
    assert len(err) == 1 and "EISDIR" in err[0]
    assert handler.dropped == 3
    shutil.rmtree(path)
    logger.info("back")
    assert messages(path)[1:] == ["back"]
    assert "3 log lines were dropped" in messages(path)[0]


def test_copytruncate_keeps_writing_at_the_end(logger, tmp_path) -> None:
    path = tmp_path / "master.log"
    file_target(logger, path)
    logger.error("before")
    shutil.copy(path, tmp_path / "master.log.1")
    os.truncate(path, 0)
    logger.error("after")
    assert path.read_bytes().startswith(b"[")    # no hole of NUL bytes: O_APPEND
    assert messages(path) == ["after"]


def test_explicit_reopen(logger, tmp_path) -> None:
    path = tmp_path / "master.log"
    target = file_target(logger, path)
    logger.error("one")
    path.rename(tmp_path / "master.log.1")
    target.reopen()
    logger.error("two")
    assert messages(path) == ["two"]
    assert messages(tmp_path / "master.log.1") == ["one"]


def test_no_fd_leak_across_failures_and_reopens(no_fd_leak, logger, tmp_path) -> None:
    clock = FakeClock()
    path = tmp_path / "master.log"
    handler = clocked_handler(logger, path, clock)
    for n in range(3):
        logger.info("line %d", n)
        path.rename(tmp_path / f"master.log.{n}")
        clock.now += 1
        handler.reopen()
    path.unlink()
    path.mkdir()
    handler.reopen()
    logger.info("lost")
    path.rmdir()
    logger.info("back")
    logger.removeHandler(handler)
    handler.close()
    assert handler.fd == -1


def test_no_gap_note_when_nothing_was_lost(logger, tmp_path, capsys) -> None:
    path = tmp_path / "master.log"
    path.mkdir()
    file_target(logger, path)            # fails at setup, before any line
    path.rmdir()
    logger.error("first")
    assert messages(path) == ["first"]
    assert "writable again (0 log lines were dropped)" in capsys.readouterr().err


def ours(logger: logging.Logger) -> list[logging.Handler]:
    """The logger's handlers other than pytest's capture (newer pytest adds one per logger)."""
    return [h for h in logger.handlers if type(h).__module__.startswith("protocol")]
