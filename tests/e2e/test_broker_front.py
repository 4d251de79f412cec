"""lithos_tree in two stages, one pid (broker/main.py, issue #10): the front parses
the command line with argparse, then execs the daemon as `python3 -S -P`, without
`site`, argparse or gettext. The daemon keeps the pid the caller started (the pid
file says it, a re-exec keeps it and its -S), and the PYTHONPATH it gets for its
imports reaches no service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; echo "PYTHONPATH=[$PYTHONPATH]"; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
"""


def tree(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip


def test_help_is_argparse_s() -> None:
    done = tree("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: lithos_tree [-h] [-C CONFIG]")
    assert "SIGQUIT" in done.stdout


def test_a_bad_option_is_argparse_s_usage_error_exit_2() -> None:
    done = tree("--bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: lithos_tree")
    assert "lithos_tree: error: unrecognized arguments: --bogus" in done.stderr
    done = tree("--config")
    assert done.returncode == 2
    assert "argument -C/--config: expected one argument" in done.stderr


def test_the_daemon_reports_a_bad_config_as_before() -> None:
    done = tree("-C", "/nonexistent/master.yaml")
    assert done.returncode == 1
    assert done.stderr.startswith("Fatal error: Error reading master config: /nonexistent")


def test_the_daemon_s_own_command_line_is_checked() -> None:
    done = tree("--daemon-exec", "--bogus")
    assert done.returncode == 2
    assert "lithos_tree: error: unknown argument '--bogus'" in done.stderr


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


@requires_root
def test_the_started_pid_runs_without_site_and_keeps_it_through_a_reexec(lithos) -> None:
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", "", "app: {image: app.v1, config: /config/app.yaml}\n")
    lithos.start()
    pid = lithos.pid
    lithos.wait_stdio("app", r"^up app/app\.0$")
    assert lithos.wait_stdio("app", r"^PYTHONPATH=\[(.*)\]$")[1] == ""
    argv = cmdline(pid)
    assert argv[1:3] == [b"-S", b"-P"] and b"--daemon-exec" in argv, argv
    assert (lithos.runtime / "master.pid").read_text() == f"{pid}\n"
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    path = next(e for e in environ if e.startswith("PYTHONPATH=")).split("=", 1)[1]
    assert path.split(os.pathsep)[0] == str(REPO)  # its imports: broker/pyexec.py
    mark = lithos.mark()
    os.kill(pid, signal.SIGQUIT)
    lithos.wait_for(rf"lithos_tree started \(pid {pid}, re-exec\)", start=mark)
    lithos.wait_for(r"supervisor ready:", start=mark)
    assert cmdline(pid) == argv
    assert list(lithos.running()) == ["app/app.0"]
    assert lithos.stop() == 0
