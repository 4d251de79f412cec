"""The chaos storm (issue 11): crashing services, config switches, a supervisor
killed at random, SIGQUITs.

Owns the tree the storm runs on (three sandboxes of busybox services: steady
`sleep`s, some sharing a port, services that crash every second or so, and a
`flex` process that lithos_switch resizes and upgrades), the storm itself and the
invariants checked between storms (the end-of-run leftovers are
tests/chaos/leftovers.py's). Used by tests/chaos/test_chaos.py (the CI subset) and by
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
import io
import os
import random
import re
import signal
import socket
import time
from dataclasses import dataclass, field

from broker.children import proc_ppid
from supervisor import switch
from tests.chaos.leftovers import (
    cmdline_has,
    host_veths,
    last_index,
    leftovers,
    one_supervisor,
    tree_knots,
)
from tests.chaos.metricscheck import MetricWatch
from tests.e2e.conftest import Lithos

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
arguments: ["-c", "echo web-up $LITHOS_NAME; exec /bin/sleep 100000"]
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
    steady: int = 12  # steady, no port, over the three sandboxes
    crash_fast: int = 3  # crash, restart-timeout 0
    crash_slow: int = 3  # crash, restart-timeout 1
    idle: int = 4  # steady in the third sandbox
    flex: tuple[int, int] = (1, 2)  # `flex` is switched between these instance counts
    slow_restart: int = 1  # restart-timeout of crash_slow

    @property
    def containers(self) -> int:
        """Configured instances at the start (flex at its larger count)."""
        return (self.web + self.steady + self.crash_fast + self.crash_slow + self.idle
                + max(self.flex))  # fmt: skip

    @classmethod
    def for_containers(cls, n: int) -> Layout:
        """About the proportions of the default, for `n` containers (n >= 30).

        Crashing instances grow slower than n (n/20 with restart-timeout 1, three
        with 0): each restart costs a knot start, and the machine has 2 cores.
        """
        if n < 30:
            raise ValueError(f"--containers {n}: the storm needs at least 30")
        web, slow, idle, flex = n // 5, max(3, n // 20), 2 * n // 15, max(2, n // 15)
        steady = n - web - 3 - slow - idle - flex
        return cls(web, steady, 3, slow, idle, (max(1, flex // 2), flex))


@dataclass(slots=True)
class Figures:
    seed: int
    kills: int = 0
    sigquits: int = 0
    rounds: int = 0
    switches: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"seed {self.seed}: {self.rounds} rounds, {self.kills} supervisor kills, "
                f"{self.sigquits} SIGQUITs, {self.switches} config switches, "
                f"{len(self.failures)} failures")  # fmt: skip


class Storm:
    """A tree of crashing, steady and switched services, and the chaos done to it."""

    def __init__(self, lithos: Lithos, seed: int, layout: Layout | None = None,
                 switch_chance: float = 0.5) -> None:  # fmt: skip
        self.lithos = lithos
        self.rng = random.Random(seed)
        self.figures = Figures(seed)
        self.layout = layout or Layout()
        self.switch_chance = switch_chance
        tag = lithos.tag
        self.sandboxes = (f"ca{tag}", f"cb{tag}", f"cc{tag}")
        self.port = free_port()
        self.steady: list[str] = []  # instances that must never restart
        self.crashy: list[str] = []
        self.web: list[str] = []
        self.flex = (0, max(self.layout.flex))  # (config variant, instances) of cc/flex
        self.knots: dict[str, int] = {}  # steady instance -> knot pid, fixed for the run
        self.port_inode = 0
        self.wanted: dict[str, int] = {}  # sandbox/process -> instances configured
        self.sup_from = 0  # log index after which the live supervisor's start line is
        self.veths_before: set[str] = set()
        self.crash_entries: list[str] = []  # sandbox/process of the crashing ones
        self.wanted_at_start: dict[str, int] = {}
        self.quiesced = False  # the crashing processes were switched to 0 instances
        self.metrics = MetricWatch()
        self.swept_from = 0  # log index from which the next check looks for sweep lines

    # -- the tree ---------------------------------------------------------------

    def build(self) -> None:
        lay, lt = self.layout, self.lithos
        a, b, c = self.sandboxes
        lt.image("chaos.v1", {
            "steady.yaml": STEADY.format(restart=0), "web.yaml": STEADY_PORT,
            "crash0.yaml": CRASHY.format(restart=0),
            "crash1.yaml": CRASHY.format(restart=lay.slow_restart),
            "flex0.yaml": STEADY.format(restart=0),
            "flex1.yaml": STEADY.format(restart=0).replace("100000", "100001"),
        })  # fmt: skip
        per_sb = [lay.steady // 3 + (1 if i < lay.steady % 3 else 0) for i in range(3)]
        variables = f", variables: {{port: {self.port}}}"
        lt.sandbox(a, f"allow-tcp-ports: [{self.port}]\n",
                   _proc("web", "web.yaml", lay.web, variables)
                   + _proc("steady", "steady.yaml", per_sb[0]))  # fmt: skip
        self._per_sb = per_sb
        lt.sandbox(b, "", self._second_processes(lay.crash_fast, lay.crash_slow))
        lt.sandbox(c, "", self._third_processes(*self.flex))
        self.web = [f"{a}/web.{i}" for i in range(lay.web)]
        self.wanted = {f"{a}/web": lay.web, f"{a}/steady": per_sb[0], f"{b}/steady": per_sb[1],
                       f"{b}/crash0": lay.crash_fast, f"{b}/crash1": lay.crash_slow,
                       f"{c}/steady": per_sb[2], f"{c}/idle": lay.idle,
                       f"{c}/flex": self.flex[1]}  # fmt: skip
        self.steady = self.web + [
            f"{sb}/steady.{i}" for sb, n in zip(self.sandboxes, per_sb, strict=True)
            for i in range(n)
        ] + [f"{c}/idle.{i}" for i in range(lay.idle)]  # fmt: skip
        self.crashy = [f"{b}/crash0.{i}" for i in range(lay.crash_fast)] + [
            f"{b}/crash1.{i}" for i in range(lay.crash_slow)
        ]
        self.crash_entries = [f"{b}/crash0", f"{b}/crash1"]
        self.wanted_at_start = dict(self.wanted)

    def _second_processes(self, fast: int, slow: int) -> str:
        return (_proc("steady", "steady.yaml", self._per_sb[1])
                + _proc("crash0", "crash0.yaml", fast)
                + _proc("crash1", "crash1.yaml", slow))  # fmt: skip

    def _third_processes(self, variant: int, flex: int) -> str:
        """The process config of the third sandbox, with `flex` at (variant, instances)."""
        return (_proc("steady", "steady.yaml", self._per_sb[2])
                + _proc("idle", "steady.yaml", self.layout.idle)
                + _proc("flex", f"flex{variant}.yaml", flex))  # fmt: skip

    def flex_names(self) -> list[str]:
        return [f"{self.sandboxes[2]}/flex.{i}" for i in range(self.flex[1])]

    def expected(self) -> set[str]:
        """Every instance the config on disk wants now."""
        return set(self.steady) | set(self.crashy) | set(self.flex_names())

    def start(self) -> None:
        """Starts the tree and waits until every steady service runs (its knot forked it)."""
        self.veths_before = host_veths()
        self.lithos.start()
        for inst in self.steady + self.flex_names():
            self.lithos.wait_for(rf"Forked {re.escape(inst)} \(pid", 120.0)
        for sb in self.sandboxes:
            wanted = [i for i in self.steady if i.startswith(sb + "/")]
            for inst in wanted:
                self.lithos.wait_stdio(sb, rf'Starting "{re.escape(inst)}"', 120.0)
        # Each web service says so once it runs (its knot forked it): fd 3 is then there.
        for inst in self.web:
            self.lithos.wait_stdio(self.sandboxes[0], rf"^web-up {re.escape(inst)}$", 120.0)
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
        lt.wait_for(r"supervisor started \(pid \d+", 30.0, self.sup_from)
        index = last_index(lt, "supervisor started (pid ")
        pid = int(lt.log.lines[index].split("supervisor started (pid ")[1].split(",")[0])
        self.random_moment(12)
        for _ in range(100):
            if proc_ppid(pid) != lt.pid:  # it died by itself and was reaped: the
                self.sup_from = index + 1  # broker starts another
                return
            if cmdline_has(pid, b"-m\0supervisor"):  # exec'd (not still the fork)
                self.sup_from = lt.mark()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.figures.kills += 1
                return
            with contextlib.suppress(AssertionError):
                lt.wait_for(r"", 1.0, lt.mark())
        self.sup_from = lt.mark()

    def switch(self) -> None:
        """lithos_switch the third sandbox: `flex` gets another instance count or config.

        A new config file (flex0 <-> flex1) is a new fingerprint: every flex instance
        is upgraded (SIGTERM, restart); a new count starts or retires instances.
        """
        lay, c = self.layout, self.sandboxes[2]
        self.flex = self.rng.choice(sorted({(v, n) for v in (0, 1) for n in lay.flex}
                                           - {self.flex}))  # fmt: skip
        self.wanted[f"{c}/flex"] = self.flex[1]
        self._switch(c, self._third_processes(*self.flex))

    def quiesce(self) -> None:
        """lithos_switch the crashing processes to 0 instances: their counts become final."""
        self._switch(self.sandboxes[1], self._second_processes(0, 0))
        self.wanted.update(dict.fromkeys(self.crash_entries, 0))
        self.crashy = []
        self.quiesced = True

    def _switch(self, sandbox: str, processes: str) -> None:
        """lithos_switch in process (its main()); its output is kept for a failure."""
        new = self.lithos.root / "switch.yaml"
        new.write_text(processes)
        out, mark = io.StringIO(), self.lithos.mark()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = switch.main(["-C", str(self.lithos.master), sandbox, str(new)])
        self.figures.switches += 1
        if code != 0:
            self.figures.failures.append(f"round {self.figures.rounds + 1}: lithos_switch "
                                         f"exited {code}: {out.getvalue().strip()}")  # fmt: skip
            return
        # The reload replaced the supervisor: the next kill is for the new one.
        self.lithos.wait_for(r"supervisor started \(pid \d+", 30.0, mark)
        self.sup_from = last_index(self.lithos, "supervisor started (pid ")

    def sigquit(self) -> int:
        """SIGQUIT lithos_tree at a random moment; the index of its re-exec line."""
        lt = self.lithos
        self.random_moment(8)
        mark = lt.mark()
        os.kill(lt.pid, signal.SIGQUIT)
        self.figures.sigquits += 1
        lt.wait_for(r"lithos_tree started \(pid \d+, re-exec", 30.0, mark)
        return last_index(lt, "lithos_tree started (pid ")

    def round(self, kills_per_round: int) -> None:
        """Some supervisor kills (at most kills_per_round), maybe a config switch among
        them, a SIGQUIT, then the checks."""
        kills = self.rng.randint(1, kills_per_round)
        switch_at = self.rng.randint(0, kills) if self.rng.random() < self.switch_chance \
            else -1  # fmt: skip
        for i in range(kills + 1):
            if i == switch_at:
                self.switch()
            if i < kills:
                self.kill_supervisor()
        self.sup_from = self.sigquit()
        self.lithos.wait_for(r"supervisor ready:", 60.0, self.sup_from)
        self.figures.rounds += 1
        problems = self.check(self.lithos.mark())
        self.figures.failures.extend(f"round {self.figures.rounds}: {p}" for p in problems)

    # -- invariants -------------------------------------------------------------

    def check(self, mark: int, converge_s: float = 60.0) -> list[str]:
        """Everything configured runs exactly once, steady knots untouched, one socket,
        and no re-exec found leftovers to sweep.

        A switch's retired or upgraded instances take a moment to go: the picture
        is taken again after each new log line until it is right or `converge_s`
        passed; the last picture's problems are the round's.
        """
        lt = self.lithos
        deadline = time.monotonic() + converge_s
        while True:
            if lt.proc is None or lt.proc.poll() is not None:
                return [f"lithos_tree (pid {lt.pid}) is gone"]
            seen = lt.mark()
            problems = self.picture()
            if not problems or time.monotonic() >= deadline:
                break
            with contextlib.suppress(AssertionError):
                lt.wait_for(r"", max(0.1, min(2.0, deadline - time.monotonic())), seen)
        problems += one_supervisor(self.lithos)
        # A re-exec sweeps (broker/sweep.py, T-12a/b): with every knot recovered and
        # every exit cleaned up by the broker that saw it, it must find nothing.
        lines = lt.lines_since(self.swept_from)
        self.swept_from += len(lines)
        problems += [f"swept at a re-exec: {line}" for line in lines
                     if "Dangling" in line or "Empty sandbox dir" in line]  # fmt: skip
        # No instance lost: every crashing one is forked again after the check began.
        for inst in self.crashy:
            try:
                lt.wait_for(rf"Forked {re.escape(inst)} \(pid", 30.0, mark)
            except AssertionError:
                problems.append(f"{inst}: not restarted within 30 s (a lost exit?)")
        return problems

    def picture(self) -> list[str]:
        """The broker's status and /proc against the config, now."""
        lt, problems = self.lithos, []
        expected = self.expected()
        status = lt.status()
        running = {i.instance: int(i.pid) for sb in status.sandboxes for p in sb.processes
                   for i in p.instances if i.pid is not None}  # fmt: skip
        status_names = {i.instance for sb in status.sandboxes for p in sb.processes
                        for i in p.instances}  # fmt: skip
        # An instance no config wants may stay listed as exited (the broker's history
        # until its next re-exec), never as running.
        if expected - status_names or set(running) - expected:
            problems.append(f"status lacks {sorted(expected - status_names)}, runs "
                            f"{sorted(set(running) - expected)} against the config")  # fmt: skip
        wanted = {f"{sb.name}/{p.name}": p.instances_wanted for sb in status.sandboxes
                  for p in sb.processes}  # fmt: skip
        if wanted != self.wanted:
            problems.append(f"status wants {wanted}, the config {self.wanted}")
        for inst in self.steady:
            if running.get(inst) != self.knots[inst]:
                problems.append(f"{inst}: knot {self.knots[inst]} now {running.get(inst)}")
        knots = tree_knots(self.sandboxes)
        for name, pids in knots.items():
            if len(pids) > 1:
                problems.append(f"{name}: {len(pids)} knots {pids}")
            if name not in expected:
                problems.append(f"{name}: knots {pids} of an instance no config wants")
            for pid in pids:
                parent = proc_ppid(pid)  # None: it exited since (a crashy one may)
                if parent is not None and parent != lt.pid:
                    problems.append(f"{name}: knot {pid} is a child of {parent}")
        for inst in self.steady:
            if knots.get(inst) != [self.knots[inst]]:
                problems.append(f"{inst}: knots in /proc {knots.get(inst)}")
        for inst in self.flex_names():  # steady too, but restarted by upgrades
            if inst not in running or knots.get(inst) != [running[inst]]:
                problems.append(f"{inst}: status pid {running.get(inst)}, knots in /proc "
                                f"{knots.get(inst)}")  # fmt: skip
        inodes = {self._fd3_inode(self.knots[w]) for w in self.web if self.knots[w] in
                  knots.get(w, [])}  # fmt: skip
        if inodes != {self.port_inode}:
            problems.append(f"port {self.port}: socket inodes {inodes}, was {self.port_inode}")
        return problems + self.metrics.problems(self)

    def final_stop(self) -> list[str]:
        """SIGTERM, then: no state dir, record, cgroup, mount, knot or veth left."""
        code = self.lithos.stop(120.0)
        problems = [] if code == 0 else [f"lithos_tree exited with {code} after SIGTERM"]
        return problems + leftovers(self.lithos, self.sandboxes, self.veths_before)

    def run(self, *, min_kills: int, min_sigquits: int, seconds: float,
            kills_per_round: int = 3) -> Figures:  # fmt: skip
        """Rounds until both minimums are met (or `seconds` pass); the final stop is apart."""
        deadline = time.monotonic() + seconds
        while (self.figures.kills < min_kills or self.figures.sigquits < min_sigquits) and \
                time.monotonic() < deadline:  # fmt: skip
            self.round(kills_per_round)
        return self.figures


def _proc(name: str, config: str, n: int, extra: str = "") -> str:
    return f"{name}: {{image: chaos.v1, config: /config/{config}, instances: {n}{extra}}}\n"
