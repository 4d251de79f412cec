"""examples/logrotate/lithos really rotates both kinds of log without losing a writer."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from protocol.loghandlers import ReopeningFileHandler
from protocol.logs import LineFormatter
from protocol.stdiolog import open_stdio_log

EXAMPLE = Path(__file__).parents[3] / "examples" / "logrotate" / "lithos"

pytestmark = pytest.mark.skipif(shutil.which("logrotate") is None,
                                reason="needs logrotate")


@pytest.fixture
def rotate(tmp_path: Path):
    """Runs the example, with /var/log/lithos replaced by a temp dir, forced."""
    root = tmp_path / "log"
    (root / "stderr").mkdir(parents=True)
    conf = tmp_path / "lithos.conf"
    conf.write_text(EXAMPLE.read_text().replace("/var/log/lithos", str(root)))
    conf.chmod(0o644)

    def run() -> None:
        subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                       check=True, capture_output=True, timeout=60)
    return root, run


def test_stdio_log_copytruncate_keeps_the_services_fd(rotate) -> None:
    root, run = rotate
    fd = open_stdio_log(root / "stderr", "web")
    try:
        os.write(fd, b"before\n")
        run()
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert (root / "stderr" / "web.log.1").read_bytes() == b"before\n"
    assert (root / "stderr" / "web.log").read_bytes() == b"after\n"   # no NUL hole


def test_master_log_renamed_and_reopened_by_lithos(rotate) -> None:
    root, run = rotate
    now = [100.0]
    handler = ReopeningFileHandler(root / "master.log", monotonic=lambda: now[0])
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger("lithos_test.logrotate")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        assert handler.open()
        logger.warning("before")
        run()
        now[0] += 1
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (root / "master.log.1").read_text().endswith("] before\n")
    assert (root / "master.log").read_text().endswith("] after\n")
    assert "before" not in (root / "master.log").read_text()


def test_sandbox_log_copytruncate_keeps_the_knots_fd(rotate) -> None:
    """A knot holds its sandbox log for its whole life (protocol.sandboxlog): the
    example truncates it in place, and O_APPEND writes land at the new end."""
    from protocol.sandboxlog import WARN, SandboxLog, Writer, open_sandbox_log

    root, run = rotate
    fd = open_sandbox_log(root / "web.log", SandboxLog(WARN))
    writer = Writer(fd, SandboxLog(WARN), 1)
    try:
        writer.write(WARN, "before")
        run()
        writer.write(WARN, "after")
    finally:
        os.close(fd)
    assert (root / "web.log.1").read_text().endswith("][WARN] before\n")
    assert (root / "web.log").read_text().endswith("][WARN] after\n")
    assert not (root / "web.log").read_bytes().startswith(b"\0")
