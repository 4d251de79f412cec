"""Property: whatever happens, no instance ever has two live knots nor a knot two
SIGTERMs, and once things settle every wanted instance has exactly one knot, with
the wanted identity.

A simulated broker (the real parent of the knots) and a supervisor built only from
lifecycle.step, plan.reconcile and TimerHeap are driven by hypothesis through
random config loads (some broken: decision 4), knot deaths, message deliveries,
channel reconnects and supervisor restarts. Time is a plain number.
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.events import (
    Action,
    CleanUp,
    Event,
    Exited,
    ExitStatus,
    InstanceSpec,
    Pid,
    Signal,
    Spawn,
    Started,
    StartRefused,
    TimerFired,
    WakeAt,
)
from supervisor.lifecycle import Instance, State, step
from supervisor.metrics import Metrics
from supervisor.plan import (
    Child,
    ConfigFailure,
    DesiredInstance,
    MissedExit,
    Snapshot,
    reconcile,
)
from supervisor.timers import TimerHeap

ENTRIES = [("web", "django"), ("web", "celery"), ("api", "app")]
BAD = "bad"  # the broker refuses this identity: a config problem


@dataclass
class Knot:
    name: str
    fingerprint: str
    started_at: float
    term_sent: bool = False


@dataclass
class World:
    now: float = 0.0
    next_pid: int = 100
    knots: dict[int, Knot] = field(default_factory=dict)  # the broker's live children
    requests: deque[Action] = field(default_factory=deque)  # supervisor -> broker
    replies: deque[tuple[str, Event]] = field(default_factory=deque)  # broker -> supervisor
    missed: list[MissedExit] = field(default_factory=list)  # reaped while disconnected
    table: dict[str, Instance] = field(default_factory=dict)
    timers: TimerHeap[str] = field(default_factory=TimerHeap)
    desired: dict[str, DesiredInstance] = field(default_factory=dict)
    failures: list[ConfigFailure] = field(default_factory=list)
    metrics: Metrics = field(default_factory=lambda: Metrics(ENTRIES))

    # ---- invariant -------------------------------------------------------------
    def check(self) -> None:
        names = [k.name for k in self.knots.values()]
        assert len(names) == len(set(names)), f"two live knots for one instance: {names}"
        for name, inst in self.table.items():
            if inst.pid is not None:
                assert inst.pid in self.knots or any(
                    ev.pid == inst.pid for _, ev in self.replies if isinstance(ev, Exited)
                ), f"{name}: pid {inst.pid} is neither alive nor being reported"

    # ---- supervisor side ------------------------------------------------------
    def execute(self, actions: tuple[Action, ...] | list[Action]) -> None:
        for a in actions:
            match a:
                case WakeAt():
                    self.timers.push(a.deadline, a.instance)
                case Spawn() | Signal() | CleanUp():
                    self.requests.append(a)

    def feed(self, name: str, event: Event) -> None:
        before = self.table[name]
        t = step(before, event)
        self.table[name] = t.instance
        self.metrics.record(before, t)
        self.execute(t.actions)

    def reconcile(self, snapshot: Snapshot | None = None) -> None:
        r = reconcile(self.desired, self.failures, self.table, self.now, snapshot)
        for s in r.steps:
            self.metrics.record(s.before, s.transition)
        self.table = dict(r.instances)
        self.execute(r.actions)

    def fire_timers(self) -> None:
        for name in self.timers.pop_due(self.now):
            if name in self.table:
                self.feed(name, TimerFired(self.now))

    def deliver_reply(self) -> None:
        name, event = self.replies.popleft()
        self.feed(name, event)

    # ---- broker side ----------------------------------------------------------
    def deliver_request(self) -> None:
        a = self.requests.popleft()
        match a:
            case Spawn():
                if a.fingerprint == BAD:
                    self.replies.append((a.instance, StartRefused("bad config", self.now)))
                    return
                pid = self.next_pid
                self.next_pid += 1
                self.knots[pid] = Knot(a.instance, a.fingerprint, self.now)
                self.replies.append((a.instance, Started(Pid(pid), self.now)))
            case Signal():
                knot = self.knots.get(a.pid)
                if knot is None:
                    return
                if a.signum == signal.SIGKILL:
                    self.die(a.pid, ExitStatus(signal=signal.SIGKILL))
                else:  # E-18, T-32: one SIGTERM per knot, across reconnects too
                    assert not knot.term_sent, f"second SIGTERM to {knot.name} pid {a.pid}"
                    knot.term_sent = True
            case CleanUp():
                pass

    def die(self, pid: int, status: ExitStatus, connected: bool = True) -> None:
        knot = self.knots.pop(pid)
        if connected:
            self.replies.append((knot.name, Exited(Pid(pid), status, self.now)))
        else:
            self.missed.append(MissedExit(knot.name, Pid(pid), status))

    def snapshot(self) -> Snapshot:
        """Close the channel: undelivered requests are dropped, exits kept as missed."""
        self.requests.clear()
        for name, ev in self.replies:
            if isinstance(ev, Exited):
                self.missed.append(MissedExit(name, ev.pid, ev.status))
        self.replies.clear()
        snap = Snapshot(
            tuple(Child(k.name, Pid(p), k.fingerprint, k.started_at, k.term_sent)
                  for p, k in sorted(self.knots.items())),
            tuple(self.missed))
        self.missed = []
        return snap

    # ---- settling -------------------------------------------------------------
    def steady(self) -> bool:
        """Nothing left to happen but refused identities retrying forever."""
        return all(i.state in (State.RUNNING, State.STOPPED)
                   or (i.state is State.BACKOFF and i.spec.fingerprint == i.fingerprint == BAD
                       and i.problem is not None)
                   for i in self.table.values())

    def settle(self) -> None:
        for _ in range(500):
            if self.requests:
                self.deliver_request()
            elif self.replies:
                self.deliver_reply()
            elif term := [p for p, k in self.knots.items() if k.term_sent]:
                self.die(term[0], ExitStatus(code=0))
            elif self.steady():
                return
            elif (deadline := self.timers.next_deadline()) is not None:
                self.now = max(self.now, deadline)
                self.fire_timers()
            else:
                return
            self.check()
        raise AssertionError("did not settle")


def desired_set(counts: list[int], fingerprints: list[str]) -> dict[str, DesiredInstance]:
    out = {}
    for (sb, proc), n, fpr in zip(ENTRIES, counts, fingerprints, strict=True):
        for i in range(n):
            d = DesiredInstance(sb, proc, i, InstanceSpec(fpr, restart_timeout_s=1.0,
                                                          kill_timeout_s=2.0))
            out[d.name] = d
    return out


config = st.tuples(
    st.lists(st.integers(0, 3), min_size=3, max_size=3),
    st.lists(st.sampled_from(["v1", "v2", "v3", BAD]), min_size=3, max_size=3),
    st.sampled_from([None, "web", "api"]),  # a sandbox whose config failed to load
)
operation = st.one_of(
    st.tuples(st.just("config"), config),
    st.tuples(st.just("request"), st.none()),
    st.tuples(st.just("reply"), st.none()),
    st.tuples(st.just("die"), st.integers(0, 10), st.sampled_from([0, 2, 3, 78, -9])),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 10.0])),
    st.tuples(st.just("reconnect"), st.integers(0, 10)),
    st.tuples(st.just("restart_supervisor"), st.integers(0, 10)),
)


def apply_config(w: World, cfg: tuple[list[int], list[str], str | None]) -> None:
    counts, fps, broken = cfg
    desired = desired_set(counts, fps)
    if broken is not None:
        desired = {n: d for n, d in desired.items() if d.sandbox != broken}
        w.failures = [ConfigFailure(broken, None, f"/etc/lithos/processes/{broken}.yaml: bad")]
    else:
        w.failures = []
    w.desired = desired
    w.metrics.configure(ENTRIES, sandboxes=2, containers=len(desired))
    w.reconcile()


def disconnect(w: World, deaths: int) -> Snapshot:
    """Some knots die while no supervisor listens; then the broker takes a snapshot."""
    for pid in sorted(w.knots)[:deaths % 3]:
        w.die(pid, ExitStatus(code=2), connected=False)
    return w.snapshot()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), config)
def test_one_live_knot_per_instance_and_exactly_one_once_settled(
    ops: list[tuple[object, ...]], final: tuple[list[int], list[str], str | None]
) -> None:
    w = World()
    unheard = 0
    for op in ops:
        match op:
            case ("config", cfg):
                apply_config(w, cfg)  # type: ignore[arg-type]
            case ("request", _):
                if w.requests:
                    w.deliver_request()
            case ("reply", _):
                if w.replies:
                    w.deliver_reply()
            case ("die", int(k), int(code)):
                if w.knots:
                    pid = sorted(w.knots)[k % len(w.knots)]
                    status = ExitStatus(signal=9) if code < 0 else ExitStatus(code=code)
                    w.die(pid, status)
            case ("advance", float(dt)):
                w.now += dt
                w.fire_timers()
            case ("reconnect", int(deaths)):
                w.reconcile(disconnect(w, deaths))
            case ("restart_supervisor", int(deaths)):
                while w.requests:  # the broker carries out a dead supervisor's requests
                    w.deliver_request()
                # a refusal nobody hears: counted started, never a death (the one
                # loss of a supervisor's death, like a kill -9; metricscheck.py)
                unheard += sum(isinstance(e, StartRefused) for _, e in w.replies)
                snap = disconnect(w, deaths)
                w.table, w.timers = {}, TimerHeap()
                previous = {s.name: s.value for s in w.metrics.samples()}
                w.metrics = Metrics(ENTRIES)
                w.metrics.configure(ENTRIES, sandboxes=2, containers=len(w.desired))
                w.metrics.restore(previous)  # X-M6: the counters carry over
                w.reconcile(snap)
            case _:
                raise AssertionError(op)
        w.check()
    # settle with a last config, also possibly broken
    kept = {k.name: k.fingerprint for k in w.knots.values()}
    apply_config(w, final)
    w.settle()
    w.check()
    live = {k.name: k.fingerprint for k in w.knots.values()}
    frozen = {f.sandbox for f in w.failures}
    for name, d in w.desired.items():
        if d.spec.fingerprint == BAD:
            assert name not in live, f"{name}: a refused identity runs"
            assert w.table[name].state is State.BACKOFF and w.table[name].problem
        else:
            assert live.get(name) == d.spec.fingerprint, f"{name}: {live.get(name)}"
    for name, fpr in live.items():
        if name.split("/")[0] in frozen:  # decision 4: untouched, same identity
            assert kept.get(name) == fpr or name in w.table
        else:
            assert name in w.desired, f"{name} still runs but is not wanted"
    # metrics agree with the history: every start ended in a death or still runs,
    # across supervisor restarts too (a knot that died while none ran is counted)
    m = w.metrics
    m.set_levels(w.table.values())
    running = sum(1 for i in w.table.values()
                  if i.pid is not None and i.state is not State.STOPPING)
    assert m.containers.running == running == sum(
        1 for k in w.knots.values() if k.name in w.desired or k.name.split("/")[0] in frozen)
    assert m.containers.unknown == 0
    assert m.containers.started == m.containers.deaths + len(w.knots) + unheard
