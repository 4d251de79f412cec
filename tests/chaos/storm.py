"""The chaos storm (issue 11): crashing services, a supervisor killed at random, SIGQUITs.

Owns the tree the storm runs on (three sandboxes of busybox services: steady
`sleep`s, some sharing a port, and services that crash every second or so), the
storm itself and the invariants checked between storms and after the final
SIGTERM. Used by tests/chaos/test_chaos.py (the CI subset) and by
`python3 -m tests.chaos.campaign` (long runs). Rules:
- Random moments are log events, not sleeps: a kill lands after a random
  number of further log lines of the live tree (its debug log is busy).
- Only processes this tree started are signalled, by pid, after checking that
  the pid is the broker's child running `-m supervisor`.
- Every choice comes from one `random.Random(seed)`; the seed is printed.
- The supervisor's restart back-off (0.1, 0.5, 1, 2, 5, 10 s) grows with every
  kill and is reset only by a supervisor that lived 10 s or by a re-exec, so a
  round is at most `kills_per_round` kills followed by a SIGQUIT.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.children import proc_knot_name, proc_ppid
from tests.e2e.conftest import Lithos, _wait_gone

SEED_ENV = "LITHOS_CHAOS_SEED"

STEADY = """
executable: /bin/sleep
arguments: ["100000"]
user-id: 1000
group-id: 1000
restart-timeout: {restart}
"""
STEADY_PORT = """
executable: /bin/sh
arguments: ["-c", "echo web-up; exec /bin/sleep 100000"]
user-id: 1000
group-id: 1000
tcp-ports:
  "@{port}":
    fd: 3
variables:
  port: !TcpPort
restart-timeout: 0
"""
# Crashes after 0..0.33 s of life (busybox ash's $RANDOM is 0..32767).
CRASHY = """
executable: /bin/sh
arguments: ["-c", "sleep 0.$RANDOM; exit 1"]
user-id: 1000
group-id: 1000
restart-timeout: {restart}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_seed() -> int:
    """The seed from $LITHOS_CHAOS_SEED, else a fresh one."""
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.randrange(2**32)


@dataclass(frozen=True, slots=True)
class Layout:
    """How many instances of each kind; the CI default is 30 containers."""

    web: int = 6  # steady, sharing one port
    steady: int = 14  # steady, no port, over the three sandboxes
    crash_fast: int = 3  # crash, restart-timeout 0
    crash_slow: int = 3  # crash, restart-timeout 1
    idle: int = 4  # steady in the third sandbox


@dataclass(slots=True)
class Figures:
    seed: int
    kills: int = 0
    sigquits: int = 0
    rounds: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"seed {self.seed}: {self.rounds} rounds, {self.kills} supervisor kills, "
                f"{self.sigquits} SIGQUITs, {len(self.failures)} failures")  # fmt: skip


class Storm:
    """A tree of crashing and steady services, and the chaos done to it."""

    def __init__(self, lithos: Lithos, seed: int, layout: Layout | None = None) -> None:
        self.lithos = lithos
        self.rng = random.Random(seed)
        self.figures = Figures(seed)
        self.layout = layout or Layout()
        tag = lithos.tag
        self.sandboxes = (f"ca{tag}", f"cb{tag}", f"cc{tag}")
        self.port = free_port()
        self.steady: list[str] = []  # instances that must never restart
        self.crashy: list[str] = []
        self.web: list[str] = []
        self.knots: dict[str, int] = {}  # steady instance -> knot pid, fixed for the run
        self.port_inode = 0
        self.wanted: dict[str, int] = {}  # sandbox/process -> instances configured
        self.sup_from = 0  # log index after which the live supervisor's start line is

    # -- the tree ---------------------------------------------------------------

    def build(self) -> None:
        lay, lt = self.layout, self.lithos
        a, b, c = self.sandboxes
        lt.image("chaos.v1", {
            "steady.yaml": STEADY.format(restart=0), "web.yaml": STEADY_PORT,
            "crash0.yaml": CRASHY.format(restart=0), "crash1.yaml": CRASHY.format(restart=1),
        })  # fmt: skip
        per_sb = [lay.steady // 3 + (1 if i < lay.steady % 3 else 0) for i in range(3)]

        def proc(name: str, config: str, n: int, extra: str = "") -> str:
            return f"{name}: {{image: chaos.v1, config: /config/{config}, instances: {n}{extra}}}\n"

        variables = f", variables: {{port: {self.port}}}"
        lt.sandbox(a, f"allow-tcp-ports: [{self.port}]\n",
                   proc("web", "web.yaml", lay.web, variables)
                   + proc("steady", "steady.yaml", per_sb[0]))  # fmt: skip
        lt.sandbox(b, "", proc("steady", "steady.yaml", per_sb[1])
                   + proc("crash0", "crash0.yaml", lay.crash_fast)
                   + proc("crash1", "crash1.yaml", lay.crash_slow))  # fmt: skip
        lt.sandbox(c, "", proc("steady", "steady.yaml", per_sb[2])
                   + proc("idle", "steady.yaml", lay.idle))  # fmt: skip
        self.web = [f"{a}/web.{i}" for i in range(lay.web)]
        self.wanted = {f"{a}/web": lay.web, f"{a}/steady": per_sb[0], f"{b}/steady": per_sb[1],
                       f"{b}/crash0": lay.crash_fast, f"{b}/crash1": lay.crash_slow,
                       f"{c}/steady": per_sb[2], f"{c}/idle": lay.idle}  # fmt: skip
        self.steady = self.web + [
            f"{sb}/steady.{i}" for sb, n in zip(self.sandboxes, per_sb, strict=True)
            for i in range(n)
        ] + [f"{c}/idle.{i}" for i in range(lay.idle)]  # fmt: skip
        self.crashy = [f"{b}/crash0.{i}" for i in range(lay.crash_fast)] + [
            f"{b}/crash1.{i}" for i in range(lay.crash_slow)
        ]

    def start(self) -> None:
        """Starts the tree and waits until every steady service runs (its knot forked it)."""
        self.lithos.start()
        for sb in self.sandboxes:
            wanted = [i for i in self.steady if i.startswith(sb + "/")]
            for inst in wanted:
                self.lithos.wait_stdio(sb, rf'Starting "{re.escape(inst)}"', 60.0)
        # Each web service says so once it runs (its knot forked it): fd 3 is then there.
        self.lithos.wait_stdio(self.sandboxes[0], rf"(?:^web-up$[\s\S]*){{{len(self.web)}}}", 60.0)
        running = self.lithos.running()
        self.knots = {inst: running[inst] for inst in self.steady}
        inodes = {self._fd3_inode(self.knots[w]) for w in self.web}
        assert len(inodes) == 1, f"web instances hold different sockets: {inodes}"
        self.port_inode = inodes.pop()

    def _fd3_inode(self, knot: int) -> int:
        return os.stat(f"/proc/{self.lithos.service_pid(knot)}/fd/3").st_ino

    # -- chaos ------------------------------------------------------------------

    def random_moment(self, most: int) -> None:
        """Returns after 0..most more log lines of the tree (or 2 s without any)."""
        n = self.rng.randint(0, most)
        if n:
            with contextlib.suppress(AssertionError):
                self.lithos.wait_for(r"", 2.0, self.lithos.mark() + n - 1)

    def kill_supervisor(self) -> None:
        """kill -9, at a random moment, the supervisor started after line `sup_from`."""
        lt = self.lithos
        pid = int(lt.wait_for(r"supervisor started \(pid (\d+)", 30.0, self.sup_from).group(1))
        self.random_moment(12)
        for _ in range(100):
            if proc_ppid(pid) != lt.pid:
                break  # it died by itself and was reaped: the broker starts another
            if _cmdline_has(pid, b"-m\0supervisor"):  # exec'd (not still the fork)
                self.sup_from = lt.mark()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.figures.kills += 1
                return
            with contextlib.suppress(AssertionError):
                lt.wait_for(r"", 1.0, lt.mark())
        self.sup_from = lt.mark()

    def sigquit(self) -> int:
        """SIGQUIT lithos_tree at a random moment; the index of its re-exec line."""
        lt = self.lithos
        self.random_moment(8)
        mark = lt.mark()
        os.kill(lt.pid, signal.SIGQUIT)
        self.figures.sigquits += 1
        lt.wait_for(r"lithos_tree started \(pid \d+, re-exec", 30.0, mark)
        return _last_index(lt, "lithos_tree started (pid ")

    def round(self, kills_per_round: int) -> None:
        """Some supervisor kills (at most kills_per_round), a SIGQUIT, then the checks."""
        for _ in range(self.rng.randint(1, kills_per_round)):
            self.kill_supervisor()
        self.sup_from = self.sigquit()
        self.lithos.wait_for(r"supervisor ready:", 60.0, self.sup_from)
        self.figures.rounds += 1
        problems = self.check(self.lithos.mark())
        self.figures.failures.extend(f"round {self.figures.rounds}: {p}" for p in problems)

    # -- invariants -------------------------------------------------------------

    def check(self, mark: int) -> list[str]:
        """Everything configured runs exactly once, steady knots untouched, one socket."""
        lt, problems = self.lithos, []
        if not Path(f"/proc/{lt.pid}").exists() or lt.proc is None or lt.proc.poll() is not None:
            return [f"lithos_tree (pid {lt.pid}) is gone"]
        status = lt.status()
        running = {i.instance: int(i.pid) for sb in status.sandboxes for p in sb.processes
                   for i in p.instances if i.pid is not None}  # fmt: skip
        status_names = {i.instance for sb in status.sandboxes for p in sb.processes
                        for i in p.instances}  # fmt: skip
        if status_names != set(self.steady) | set(self.crashy):
            problems.append(f"status lists {sorted(status_names ^ set(self.steady + self.crashy))}"
                            " against the config")  # fmt: skip
        wanted = {f"{sb.name}/{p.name}": p.instances_wanted for sb in status.sandboxes
                  for p in sb.processes}  # fmt: skip
        if wanted != self.wanted:
            problems.append(f"status wants {wanted}, the config {self.wanted}")
        for inst in self.steady:
            if running.get(inst) != self.knots[inst]:
                problems.append(f"{inst}: knot {self.knots[inst]} now {running.get(inst)}")
        for inst in self.crashy:
            if inst not in status_names:
                problems.append(f"{inst}: lost (not in the broker's status)")
        knots = self.tree_knots()
        for name, pids in knots.items():
            if len(pids) > 1:
                problems.append(f"{name}: {len(pids)} knots {pids}")
            for pid in pids:
                parent = proc_ppid(pid)  # None: it exited since (a crashy one may)
                if parent is not None and parent != lt.pid:
                    problems.append(f"{name}: knot {pid} is a child of {parent}")
        for inst in self.steady:
            if knots.get(inst) != [self.knots[inst]]:
                problems.append(f"{inst}: knots in /proc {knots.get(inst)}")
        inodes = {self._fd3_inode(self.knots[w]) for w in self.web if self.knots[w] in
                  knots.get(w, [])}  # fmt: skip
        if inodes != {self.port_inode}:
            problems.append(f"port {self.port}: socket inodes {inodes}, was {self.port_inode}")
        sups = [p for p in _children(lt.pid) if _cmdline_has(p, b"-m\0supervisor")]
        if len(sups) > 1:  # the one before a re-exec may still be on its way out
            line = lt.log.lines[_last_index(lt, "supervisor started (pid ")] if lt.log else ""
            current = re.search(r"supervisor started \(pid (\d+)", line)
            for pid in sups:
                if current is None or pid != int(current.group(1)):
                    _wait_gone(pid, 5.0)
            sups = [p for p in _children(lt.pid) if _cmdline_has(p, b"-m\0supervisor")]
        if len(sups) != 1:
            problems.append(f"{len(sups)} supervisors: {sups}")
        # No instance lost: every crashing one is forked again after the check began.
        for inst in self.crashy:
            try:
                lt.wait_for(rf"Forked {re.escape(inst)} \(pid", 20.0, mark)
            except AssertionError:
                problems.append(f"{inst}: not restarted within 20 s (a lost exit?)")
        return problems

    def tree_knots(self) -> dict[str, list[int]]:
        """Our sandboxes' knots in /proc (zombies excluded: their cmdline is empty).

        A knot's own fork, between fork and the service's exec, still shows the
        knot's command line: a process whose parent is a knot of the same name is
        that fork, not a second knot.
        """
        named: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            name = proc_knot_name(int(entry))
            if name is not None and name.split("/", 1)[0] in self.sandboxes:
                named[int(entry)] = name
        out: dict[str, list[int]] = {}
        for pid, name in named.items():
            parent = proc_ppid(pid)
            if parent is not None and named.get(parent) == name:
                continue
            out.setdefault(name, []).append(pid)
        return out

    def final_stop(self) -> list[str]:
        """SIGTERM, then: no state dir, record, cgroup, mount or knot left."""
        lt, problems = self.lithos, []
        code = lt.stop(60.0)
        if code != 0:
            problems.append(f"lithos_tree exited with {code} after SIGTERM")
        for sb in self.sandboxes:
            state = lt.runtime / "state" / sb
            left = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
            if left:
                problems.append(f"{state}: state dirs left {left}")
        records = sorted(p.name for p in (lt.runtime / "children").glob("*"))
        if records:
            problems.append(f"child records left: {records}")
        base = Path("/sys/fs/cgroup")
        tops = [base, *base.iterdir()] if base.is_dir() else []
        for top in tops:
            group = top / lt.cgroup_name
            if group.is_dir():
                subs = sorted(p.name for p in group.iterdir() if p.is_dir())
                if subs:
                    problems.append(f"{group}: cgroups left {subs}")
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(lt.root))]
        if mounts:
            problems.append(f"mounts left under {lt.root}: {mounts}")
        knots = self.tree_knots()
        if knots:
            problems.append(f"knots left: {knots}")
        return problems

    def run(self, *, min_kills: int, min_sigquits: int, seconds: float,
            kills_per_round: int = 3) -> Figures:  # fmt: skip
        """Rounds until both minimums are met (or `seconds` pass); the final stop is apart."""
        deadline = time.monotonic() + seconds
        while (self.figures.kills < min_kills or self.figures.sigquits < min_sigquits) and \
                time.monotonic() < deadline:  # fmt: skip
            self.round(kills_per_round)
        return self.figures


def _last_index(lithos: Lithos, text: str) -> int:
    assert lithos.log is not None
    lines = lithos.log.lines
    for i in range(len(lines) - 1, -1, -1):
        if text in lines[i]:
            return i
    return 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _cmdline_has(pid: int, word: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word in f.read()
    except OSError:
        return False
