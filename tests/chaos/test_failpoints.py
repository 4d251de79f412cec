"""Every failpoint (protocol/failpoints.py, issue 11): crash there, then the chaos invariants.

One small tree per point: two `web` instances sharing one TCP port. The point is
armed (LITHOS_FAILPOINTS, `kill`) when lithos_tree starts and triggered by what
reaches it: the first start, a service's exit, or a SIGQUIT (re-exec). A broker
point kills lithos_tree itself: recovery is what the next lithos_tree does (it
adopts the containers the killed one left). A supervisor point kills the
supervisor: the broker starts another, which reconciles. Then, for every point:
- lithos_tree runs; its status lists exactly web.0 and web.1, each with a knot;
- /proc has exactly one knot per instance (none lost, none duplicated), the one in
  the status; exactly one supervisor, lithos_tree's child;
- an instance that ran before the crash and was not the victim kept its knot;
- both services hold the same listening socket, which lithos_tree holds too (the
  one from before the crash when some instance lived through it), and it accepts;
- the tree keeps serving: a killed service is restarted exactly once;
- SIGTERM: exit 0, no state dir, child record, cgroup, mount or knot left.
docs/reliability.md says what each point shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from protocol import failpoints
from supervisor.metrics_file import MetricsFiles
from tests.chaos.leftovers import children, cmdline_has, host_veths, tree_knots
from tests.chaos.storm import Layout, Storm, free_port
from tests.e2e.conftest import Lithos, wait_for_file_text

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

WEB = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec /bin/sleep 100000']
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
tcp-ports:
  "@{port}":
    fd: 3
variables:
  port: !TcpPort
"""
NAMES = ("web.0", "web.1")
# What reaches each point: the first start, an exit (web.1's service killed) or SIGQUIT.
TRIGGER = {
    "broker.start.after_sockets": "start",
    "broker.start.after_cgroup": "start",
    "broker.start.before_go": "start",
    "broker.start.after_spawn": "start",
    "broker.start.after_record": "start",
    "broker.reap.after_wait": "exit",
    "broker.reap.after_cleanup": "exit",
    "broker.reap.before_report": "exit",
    "broker.reexec.before_exec": "reexec",
    "broker.reexec.after_exec": "reexec",
    "supervisor.start.after_request": "start",
    "supervisor.start.after_reply": "start",
    "supervisor.exit.before_restart": "exit",
    "supervisor.metrics.during_publish": "start",
}


def test_every_point_has_a_trigger() -> None:
    assert set(TRIGGER) == set(failpoints.POINTS)


class Tree:
    """The test's tree and the checks; `storm` lends the chaos suite's /proc and stop checks."""

    def __init__(self, lithos: Lithos) -> None:
        self.lt = lithos
        self.sb = f"fp{lithos.tag}"
        self.port = free_port()
        self.names = [f"{self.sb}/{n}" for n in NAMES]
        self.storm = Storm(lithos, 0, Layout())
        self.storm.sandboxes = (self.sb,)
        self.storm.veths_before = host_veths()
        lithos.image("fp.v1", {"web.yaml": WEB})
        lithos.sandbox(self.sb, f"allow-tcp-ports: [{self.port}]\n",
                       f"web: {{image: fp.v1, config: /config/web.yaml, instances: 2, "
                       f"variables: {{port: {self.port}}}}}\n")  # fmt: skip

    def service_up(self, name: str, knot: int, timeout_s: float = 60.0) -> None:
        """Waits (inotify on the stdio log) until `knot`'s service printed its `up` line.

        The knot writes `Starting "<name>"` before it forks the service: once it has
        a child, as many `up <name>` lines as `Starting` ones mean this one said it.
        """
        path = self.lt.root / "log" / "stderr" / f"{self.sb}.log"
        deadline = time.monotonic() + timeout_s
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            starts = len(re.findall(rf'Starting "{re.escape(name)}"', text))
            ups = len(re.findall(rf"^up {re.escape(name)}$", text, re.M))
            children = Path(f"/proc/{knot}/task/{knot}/children")
            if starts and ups >= starts and children.exists() and children.read_text().split():
                return
            left = deadline - time.monotonic()
            assert left > 0, f"{name}: knot {knot} did not start its service:\n{text[-2000:]}"
            with contextlib.suppress(AssertionError):  # the log grows, or time is up
                wait_for_file_text(path, rf"(?s)\A{re.escape(text)}.", min(left, 5.0))

    def wait_running(self, timeout_s: float = 60.0) -> dict[str, int]:
        """Instance -> knot pid once both run (status), and their services are up."""
        deadline = time.monotonic() + timeout_s
        while True:
            mark = self.lt.mark()
            running = self.lt.running()
            if all(n in running for n in self.names):
                break
            assert time.monotonic() < deadline, f"running: {running}"
            self.lt.wait_for(r"Forked|Container|RUNNING", deadline - time.monotonic(), mark)
        for name in self.names:
            self.service_up(name, running[name])
        return {n: running[n] for n in self.names}

    def state_dir(self, name: str) -> Path:
        return self.lt.runtime / "state" / name

    def service(self, knot: int) -> int:
        return self.lt.service_pid(knot)

    def fd3_inode(self, knot: int) -> int:
        return os.stat(f"/proc/{self.service(knot)}/fd/3").st_ino

    def check(self, before: dict[str, int], victim: str | None, inode: int | None) -> None:
        lt = self.lt
        assert lt.proc is not None and lt.proc.poll() is None, "lithos_tree is gone"
        running = self.wait_running()
        status = lt.status()
        listed = {i.instance for sb in status.sandboxes for p in sb.processes
                  for i in p.instances}  # fmt: skip
        assert listed == set(self.names)
        knots = tree_knots(self.storm.sandboxes)
        assert knots == {n: [running[n]] for n in self.names}, f"knots {knots}, {running}"
        for name, pid in before.items():
            if name != victim:
                assert running[name] == pid, f"{name}: knot {pid} is now {running[name]}"
        sups = [p for p in children(lt.pid) if cmdline_has(p, b"-m\0supervisor")]
        assert len(sups) == 1, f"supervisors: {sups}"
        inodes = {self.fd3_inode(running[n]) for n in self.names}
        assert len(inodes) == 1, f"services hold different sockets: {inodes}"
        if inode is not None:
            assert inodes == {inode}, f"socket {inode} was closed; now {inodes}"
        held = set()
        for fd in os.listdir(f"/proc/{lt.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # a control connection closing
                held.add(os.readlink(f"/proc/{lt.pid}/fd/{fd}"))
        assert f"socket:[{inodes.pop()}]" in held, "lithos_tree does not hold the socket"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10):
            pass
        if victim is not None:  # E-30: restarted with a fresh state dir
            stale = self.state_dir(victim) / "stale"
            assert not stale.exists(), f"{stale}: the state dir of the dead knot was kept"
        # The supervisor's metric files are whole (.meta and .values agree).
        assert MetricsFiles(lt.runtime).read_previous(), "metrics.meta and .values disagree"
        assert (lt.runtime / "metrics.prom").read_text().strip()
        # It keeps serving: web.0's service dies and is forked again, once.
        mark = lt.mark()
        os.kill(self.service(running[self.names[0]]), signal.SIGKILL)
        lt.wait_for(rf"{re.escape(self.names[0])}: STARTING -> RUNNING", 60.0, mark)
        self.service_up(self.names[0], lt.running()[self.names[0]])
        assert lt.count(r"Forked ", mark) == 1, lt.lines_since(mark)
        assert self.storm.final_stop() == []


def index_of(lt: Lithos, pattern: str, start: int) -> int:
    """The index of the first log line at or after `start` matching `pattern` (waited for)."""
    lt.wait_for(pattern, 60.0, start)
    lines = enumerate(lt.lines_since(start), start)
    return next(i for i, line in lines if re.search(pattern, line))


@pytest.mark.parametrize("point", list(failpoints.POINTS))
def test_crash_at_failpoint_recovers(chaos_tree: Lithos, monkeypatch, point: str) -> None:
    lt, tree = chaos_tree, Tree(chaos_tree)
    trigger, process = TRIGGER[point], point.split(".")[0]
    monkeypatch.setenv(failpoints.ENV, f"{point}=kill")
    lt.start(wait_ready=trigger != "start")
    monkeypatch.delenv(failpoints.ENV)
    before: dict[str, int] = {}
    inode = victim = None
    mark = 0
    if trigger != "start":
        before = tree.wait_running()
        inode = tree.fd3_inode(before[tree.names[0]])
        mark = lt.mark()
        if trigger == "exit":
            victim = tree.names[1]
            (tree.state_dir(victim) / "stale").write_text("from the killed knot")
            os.kill(tree.service(before[victim]), signal.SIGKILL)
        else:
            os.kill(lt.pid, signal.SIGQUIT)
    lt.wait_for(rf"failpoint {re.escape(point)}: kill", 60.0, mark)
    if process == "broker":
        assert lt.proc is not None
        assert lt.proc.wait(60) == -signal.SIGKILL
        lt.start()  # the next lithos_tree, not armed
    else:
        died = index_of(lt, r"supervisor killed by signal SIGKILL", mark)
        lt.wait_for(r"supervisor ready:", 60.0, died)
    tree.check(before, victim, inode)


def test_count_carries_across_reexec_and_a_fired_point_is_not_rearmed(
    chaos_tree: Lithos, monkeypatch
) -> None:
    """`after_exec=kill@2`: the first re-exec'd image counts one hit and lives, the
    second dies; the supervisors it started were not armed (their points went to the
    first one only)."""
    lt, tree = chaos_tree, Tree(chaos_tree)
    monkeypatch.setenv(failpoints.ENV, "broker.reexec.after_exec=kill@2,"
                       "supervisor.exit.before_restart=kill@2")  # fmt: skip
    lt.start()
    monkeypatch.delenv(failpoints.ENV)
    before = tree.wait_running()
    mark = lt.mark()
    os.kill(lt.pid, signal.SIGQUIT)
    lt.wait_for(r"lithos_tree started \(pid \d+, re-exec\)", 60.0, mark)
    lt.wait_for(r"supervisor ready:", 60.0, mark)
    # This supervisor is not armed: two exits, two restarts, no supervisor death.
    for _ in range(2):
        step = lt.mark()
        os.kill(tree.service(lt.running()[tree.names[1]]), signal.SIGKILL)
        lt.wait_for(rf"{re.escape(tree.names[1])}: STARTING -> RUNNING", 60.0, step)
        tree.service_up(tree.names[1], lt.running()[tree.names[1]])
    assert lt.count(r"supervisor (killed|exited)|failpoint", mark) == 0
    assert lt.running()[tree.names[0]] == before[tree.names[0]]
    mark = lt.mark()
    os.kill(lt.pid, signal.SIGQUIT)
    lt.wait_for(r"failpoint broker.reexec.after_exec: kill", 60.0, mark)
    assert lt.proc is not None and lt.proc.wait(60) == -signal.SIGKILL
    lt.start()
    tree.check({tree.names[0]: before[tree.names[0]]}, tree.names[1], None)


def test_broker_killed_before_go_leaves_no_knot_waiting(chaos_tree: Lithos, monkeypatch) -> None:
    """`broker.start.before_go`: the knot spawned but never got its go byte exits by itself
    (EOF on its go pipe) before any broker is back; the next one cleans up the cut-short
    start (cgroup, state dir, record) and starts every instance once."""
    lt, tree = chaos_tree, Tree(chaos_tree)
    monkeypatch.setenv(failpoints.ENV, "broker.start.before_go=kill")
    lt.start(wait_ready=False)
    monkeypatch.delenv(failpoints.ENV)
    lt.wait_for(r"failpoint broker.start.before_go: kill", 60.0, 0)
    assert lt.proc is not None and lt.proc.wait(60) == -signal.SIGKILL
    waiting = [pid for pids in tree_knots(tree.storm.sandboxes).values() for pid in pids]
    pidfds = []
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):
            pidfds.append(os.pidfd_open(pid))
    try:
        for fd in pidfds:  # a pidfd is readable once its process has exited
            assert select.select([fd], [], [], 60.0)[0], f"knots {waiting} still wait"
    finally:
        for fd in pidfds:
            os.close(fd)
    assert tree_knots(tree.storm.sandboxes) == {}
    lt.start()  # a new log: its lines count from 0
    assert lt.count(r"a start was cut short before its knot ran; cleaning up") == 1
    tree.check({}, None, None)
    assert lt.count(r"Forked ") == 3  # web.0, web.1, then web.0 again in check()
