"""lithos_cmd end to end, without lithos_tree (CMD-3): argv, LITHOS_NAME, stdin,
where the output goes, the command's own exit code (decision 3), refusals, and a
SIGTERM that leaves no state dir, cgroup or mount behind (E-31, E-32, CMD-2, T-51).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]

# Prints its argv, its LITHOS_NAME and what came on stdin, then exits with $CODE
# (or kills itself with $SIG).
SHOW = """
kind: Command
executable: /bin/sh
arguments:
  - -c
  - 'echo "argv:$*"; echo "name:$LITHOS_NAME"; read line; echo "stdin:$line"; echo "err" >&2;
     if [ "$SIG" != none ]; then kill -$SIG $$; fi; exit ${CODE:-0}'
  - show
  - first
environ: {CODE: "@{code}", SIG: "@{sig}"}
variables:
  code: !Choice ["0", "3", "42"]
  sig: !Choice ["none", "9"]
user-id: 1000
group-id: 1000
"""
INTERACTIVE = SHOW + "interactive: true\n"
SLEEP = """
kind: Command
executable: /bin/sh
arguments: ["-c", "echo sleeping; exec sleep 1000"]
kill-timeout: 5
memory-limit: 100Mi
interactive: true
user-id: 1000
group-id: 1000
"""
STUBBORN = """
kind: Command
executable: /bin/sh
arguments: ["-c", "trap '' TERM; echo sleeping; sleep 1000"]
kill-timeout: 1
interactive: true
user-id: 1000
group-id: 1000
"""
MISSING = """
kind: Command
executable: /bin/no-such-program
user-id: 1000
group-id: 1000
"""
DAEMON = """
kind: Daemon
executable: /bin/sleep
arguments: ["1000"]
"""


def entry(name: str, config: str, kind: str = "Command", **variables: str) -> str:
    var = ", ".join(f"{k}: {v!r}" for k, v in variables.items())
    return (
        f"{name}: {{image: cmd.v1, config: /config/{config}, kind: {kind}, variables: {{{var}}}}}\n"
    )


@pytest.fixture
def cmd_tree(lithos):
    lithos.image(
        "cmd.v1",
        {"show.yaml": SHOW, "inter.yaml": INTERACTIVE, "sleep.yaml": SLEEP,
         "daemon.yaml": DAEMON, "stubborn.yaml": STUBBORN, "missing.yaml": MISSING},
    )  # fmt: skip
    lithos.sandbox(
        "sb",
        "",
        entry("show", "show.yaml", code="0", sig="none")
        + entry("three", "show.yaml", code="3", sig="none")
        + entry("answer", "show.yaml", code="42", sig="none")
        + entry("killed", "show.yaml", code="0", sig="9")
        + entry("inter", "inter.yaml", code="0", sig="none")
        + entry("sleeper", "sleep.yaml")
        + entry("stubborn", "stubborn.yaml")
        + entry("missing", "missing.yaml")
        + entry("daemon", "daemon.yaml", kind="Daemon"),
    )
    return lithos


def lithos_cmd(lithos, *args: str, stdin: bytes = b"hello\n", **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "broker.cmd", "--master", str(lithos.master), *args],
        cwd=REPO, input=stdin, capture_output=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)), **kw,
    )  # fmt: skip


def test_argv_name_stdin_and_output_in_the_stdio_log(cmd_tree) -> None:
    """E-31: argv = arguments + extra args, LITHOS_NAME = sb/cmd.show.<pid>, stdin inherited,
    output of a non-interactive command in <stdio-log-dir>/sb.log."""
    done = lithos_cmd(cmd_tree, "--log-stderr", "--log-level", "info", "sb", "show", "a b", "c")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    assert re.search(rb"sb/cmd\.show\.\d+: ended, exit code 0", done.stderr), done.stderr
    log = cmd_tree.stdio_log("sb")
    assert "argv:first a b c" in log
    name = re.search(r"name:(sb/cmd\.show\.(\d+))", log)
    assert name is not None, log
    assert "stdin:hello" in log and "err" in log
    assert re.search(r'Starting "sb/cmd\.show\.\d+"', log)
    state = cmd_tree.runtime / "state" / "sb"
    assert not state.exists() or not list(state.iterdir())


def test_interactive_output_on_our_pipe(cmd_tree) -> None:
    done = lithos_cmd(cmd_tree, "sb", "inter", "x", stdin=b"typed\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "argv:first x" in out and "stdin:typed" in out
    assert re.search(r"name:sb/cmd\.inter\.\d+", out)
    assert b"err" in done.stderr
    assert "argv:first x" not in cmd_tree.stdio_log("sb")


@pytest.mark.parametrize(
    ("name", "code"), [("show", 0), ("three", 3), ("answer", 42), ("killed", 128 + 9)]
)
def test_exit_code_is_the_commands_own(cmd_tree, name: str, code: int) -> None:
    """Decision 3 (not E-32): the command's code; killed by signal N -> 128+N."""
    done = lithos_cmd(cmd_tree, "sb", name)
    assert done.returncode == code, done.stderr


def test_daemon_entry_refused(cmd_tree) -> None:
    done = lithos_cmd(cmd_tree, "sb", "daemon")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "The target container is: Daemon" in err and "processes/sb.yaml" in err, err
    assert "Traceback" not in err


def test_unknown_command_and_bad_names_refused(cmd_tree) -> None:
    done = lithos_cmd(cmd_tree, "sb", "nope")
    assert done.returncode == 1
    assert 'Command "nope" not found' in done.stderr.decode()
    done = lithos_cmd(cmd_tree, "sb", "../x")
    assert done.returncode == 1
    assert "Wrong command name" in done.stderr.decode()
    done = lithos_cmd(cmd_tree, "nosb", "show")
    assert done.returncode == 1
    assert "Error reading sandbox config" in done.stderr.decode()


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def _cgroup_dirs(name: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return sorted(
        p
        for top in [base, *base.iterdir()]
        if top.is_dir()
        for p in top.glob(f"{name}/*")
        if p.is_dir()
    )


def _read_line(fd: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no line, got {data!r}"
        chunk = os.read(fd, 4096)
        if not chunk:
            proc.wait(timeout_s)
            raise AssertionError(f"EOF, got {data!r}; stderr {proc.stderr.read()!r}")
        data += chunk
    return data


def _start(lithos, name: str) -> tuple[subprocess.Popen[bytes], int]:
    """lithos_cmd running `name`, once its command printed `sleeping` on our pipe."""
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cmd", "-C", str(lithos.master), "sb", name],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=out_w, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    os.close(out_w)
    try:
        assert _read_line(out_r, proc) == b"sleeping\n"
    except BaseException:
        os.close(out_r)
        _stop(proc)
        raise
    return proc, out_r


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_command_and_leaves_nothing(cmd_tree, signo: int) -> None:
    """Better than CMD-2: SIGTERM or SIGINT to lithos_cmd stops the command (SIGTERM)
    and its state dir, cgroup and mounts are gone; while it ran, it was in its cgroup
    (T-51) with its memory-limit."""
    mounts_before = _mounts()
    proc, out_r = _start(cmd_tree, "sleeper")
    try:
        name = f"cmd.sleeper.{proc.pid}"
        assert (cmd_tree.runtime / "state" / "sb" / name).is_dir()
        groups = [g for g in _cgroup_dirs(cmd_tree.cgroup_name) if g.name == f"sb:{name}.scope"]
        assert groups
        procs = {int(p) for g in groups for p in (g / "cgroup.procs").read_text().split()}
        assert len(procs) >= 2, procs  # the knot and the command
        limits = [
            (g / f).read_text().strip()
            for g in groups
            for f in ("memory.limit_in_bytes", "memory.max")
            if (g / f).exists()
        ]
        assert limits == [str(100 * 1024 * 1024)]
        proc.send_signal(signo)
        code = proc.wait(30)
    finally:
        os.close(out_r)
        _stop(proc)
    assert code == 128 + signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
    assert not (cmd_tree.runtime / "state" / "sb" / name).exists()
    assert not [g for g in _cgroup_dirs(cmd_tree.cgroup_name) if name in g.name]
    assert _mounts() == mounts_before


def test_command_ignoring_sigterm_is_killed_after_kill_timeout(cmd_tree) -> None:
    proc, out_r = _start(cmd_tree, "stubborn")
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        os.close(out_r)
        _stop(proc)
    assert code == 128 + signal.SIGKILL
    assert proc.stderr is not None
    assert b"kill-timeout" in proc.stderr.read()


def test_setup_failure_exits_1_with_one_line(cmd_tree) -> None:
    done = lithos_cmd(cmd_tree, "sb", "missing")
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "/bin/no-such-program" in lines[0] and "missing.yaml" in lines[0], lines
