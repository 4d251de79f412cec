"""lithos_ps on a live tree (inventory 2.6, E-34): the exact layout of a 2-instance
daemon, with and without colour, and the --json schema."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
REPO = Path(__file__).resolve().parents[2]

APP = """
executable: /bin/sh
arguments: ["-c", "echo ready $LITHOS_NAME; exec sleep 1000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
"""


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, text=True,
                          capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def start_two(lithos) -> dict[str, int]:
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("socket", processes=(
        "socket: {image: app.v1, config: /config/app.yaml, instances: 2}\n"))
    lithos.start()
    for i in range(2):
        lithos.wait_stdio("socket", rf"ready socket/socket\.{i}\b")
    running = lithos.running()
    assert sorted(running) == ["socket/socket.0", "socket/socket.1"]
    return {name: lithos.service_pid(pid) for name, pid in running.items()}


MEM = r"\d+\.\dMiB|\d+\.\dkiB|\d+B"


def test_ps_tree_layout_plain_and_coloured_e34(lithos) -> None:
    apps = start_two(lithos)
    plain = run("supervisor.ps", "-C", str(lithos.master), "--no-color")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 5, plain.stdout
    a0, a1 = apps["socket/socket.0"], apps["socket/socket.1"]
    assert re.fullmatch(rf"{lithos.pid} tree {re.escape(str(lithos.master))} \[2/2\] ({MEM})",
                        lines[0]), lines[0]
    assert re.fullmatch(rf"  └─socket \[2/2\] ({MEM})", lines[1]), lines[1]
    assert re.fullmatch(rf"      └─socket \[2/2\] ({MEM})", lines[2]), lines[2]
    assert re.fullmatch(rf"          ├─{a0} socket/socket\.0 \d+s \[1/1\] ({MEM})", lines[3])
    assert re.fullmatch(rf"          └─{a1} socket/socket\.1 \d+s \[1/1\] ({MEM})", lines[4])
    assert "\x1b" not in plain.stdout
    # stdout is a pipe: no colour by default (we follow the issue, not the original)
    default = run("supervisor.ps", "-C", str(lithos.master))
    assert "\x1b" not in default.stdout and len(default.stdout.splitlines()) == 5
    coloured = run("supervisor.ps", "-C", str(lithos.master), "--force-color")
    c = coloured.stdout.splitlines()
    assert len(c) == 5
    blue, green = "\x1b[34m\x1b[1m", "\x1b[32m\x1b[1m"
    end = "\x1b[0m\x1b[22m"
    assert c[0].startswith(f"{blue}{lithos.pid}{end} tree {blue}{lithos.master}{end} "
                           f"{blue}[2/2]{end} {blue}")
    assert c[3].startswith(f"          ├─{green}{a0}{end} socket/socket.0 \x1b[31m\x1b[1m")
    def norm(text: str) -> str:  # uptimes move on between the two runs
        return re.sub(r" \d+s ", " Ns ", text)

    assert norm(re.sub(r"\x1b\[\d+m", "", coloured.stdout)) == norm(plain.stdout)


def test_ps_json_schema(lithos) -> None:
    apps = start_two(lithos)
    out = run("supervisor.ps", "-C", str(lithos.master), "--json")
    assert out.returncode == 0, out.stderr
    assert not out.stdout.endswith("\n")
    doc = json.loads(out.stdout)
    [tree] = doc["trees"]
    assert tree["pid"] == lithos.pid and tree["config"] == str(lithos.master)
    knots = lithos.running()
    by_name = {c["name"]: c for c in tree["children"]}
    assert sorted(by_name) == ["socket/socket.0", "socket/socket.1"]
    for name, child in by_name.items():
        assert child["pid"] == knots[name] and child["ok"] is True
        assert child["restarts"] == 0 and child["last_exit"] is None
        [proc] = child["processes"]
        assert proc["pid"] == apps[name] and proc["processes"] == 1
        assert proc["mem_rss"] > 0 and proc["threads"] == 1


def test_ps_without_daemon_warns_and_exits_0(lithos) -> None:
    out = run("supervisor.ps", "-C", str(lithos.master))
    assert out.returncode == 0 and out.stdout == ""
    assert "no lithos_tree listens" in out.stderr


def test_ps_works_as_non_root(lithos) -> None:
    """GetStatus is allowed to anyone: run lithos_ps in a child that dropped to uid 1000
    (forked, since this python lives under /root, where uid 1000 cannot exec it)."""
    from supervisor import ps

    apps = start_two(lithos)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run lithos_ps with stdout on the pipe
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(1000)
            os.setuid(1000)
            os.dup2(w, 1)
            sys.stdout = os.fdopen(1, "w", closefd=False)
            code = ps.main(["-C", str(lithos.master), "--no-color"])
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert f"{apps['socket/socket.0']} socket/socket.0 " in text


def test_ps_monitor_prints_a_table_until_interrupted(lithos) -> None:
    start_two(lithos)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.ps", "-C", str(lithos.master),
                             "--monitor"], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()  # blocks until the first screen
        assert re.fullmatch(r"\x1b\[2J\x1b\[;H +PID NAME +CPU THR PRC +MEM \n", header), header
        rows = [proc.stdout.readline() for _ in range(2)]
        assert [r.split()[1] for r in rows] == ["socket/socket.0", "socket/socket.1"]
        assert all(r.split()[3:5] == ["1", "1"] for r in rows), rows
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
