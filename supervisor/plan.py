"""Pure reconciliation: desired instances vs. the instances we have -> events.

Owns the decisions that span instances: which instances to start, upgrade or
retire after a config load (T-30..T-31, E-18, E-19), and how to take over after
a reconnect from a broker snapshot (adopt live knots, replay missed exits in
order, give up starts that were never answered: no child lost, none started
twice). It produces lifecycle events and runs them through lifecycle.step, so
the result is the new instance table plus the machines' actions and log lines,
and a human reason per change for `lithos_switch --dry-run`.

Rules:
- Decision 4 (deliberately unlike T-33/E-20): a sandbox or process entry whose
  config failed to load keeps its instances exactly as they are; the failure
  is reported, never turned into a retirement.
- Snapshot contract: the broker takes it after the old channel is closed, so a
  Spawn without a reply either shows up in it (as a child or a missed exit) or
  was never executed, and main.py never resends requests from an old channel.
- Pure: imports none of os, socket, time, subprocess.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from protocol.names import InstanceName, parse_instance_name
from protocol.structs import dataclass
from supervisor.events import (
    Action,
    Adopted,
    Event,
    Exited,
    ExitStatus,
    InstanceSpec,
    Pid,
    Reconfigured,
    Signal,
    Started,
    StartRefused,
    StartRequested,
    StopRequested,
    classify,
)
from supervisor.lifecycle import Instance, State, Transition, new_instance, step
from supervisor.vocabulary import seconds


@dataclass(frozen=True, slots=True)
class DesiredInstance:
    """One instance the configs want (`instances` > index, kind Daemon)."""

    sandbox: str
    process: str
    index: int
    spec: InstanceSpec
    tcp_addresses: frozenset[str] = frozenset()  # "0.0.0.0:8080", for the dry run

    @property
    def name(self) -> str:
        return str(InstanceName(self.sandbox, self.process, self.index))


@dataclass(frozen=True, slots=True)
class ConfigFailure:
    """A sandbox (process None) or one process entry whose config failed to load."""

    sandbox: str
    process: str | None
    error: str  # names the file, the key and the value (P8)


@dataclass(frozen=True, slots=True)
class Child:
    """A live knot in a broker snapshot."""

    name: str
    pid: Pid
    fingerprint: str
    started_at: float  # monotonic, the broker's clock (same host, same clock)
    term_sent: bool = False


@dataclass(frozen=True, slots=True)
class MissedExit:
    """An exit the broker reaped while no supervisor was connected, in order."""

    name: str
    pid: Pid
    status: ExitStatus


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the broker reports at (re)connect: its live knots, exits it reaped alone."""

    children: tuple[Child, ...] = ()
    missed_exits: tuple[MissedExit, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedChange:
    """One line of `lithos_switch --dry-run`: `web/django.1: restart: variables changed`."""

    subject: str
    text: str

    def __str__(self) -> str:
        sep = " " if self.subject.startswith("sock ") else ": "
        return f"{self.subject}{sep}{self.text}"


@dataclass(frozen=True, slots=True)
class Step:
    """One event fed to one instance, with the state it was fed in."""

    before: Instance
    event: Event
    transition: Transition


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one reconcile() decided: the new table and how it got there."""

    instances: dict[str, Instance]  # the new table, without retired STOPPED ones
    steps: tuple[Step, ...]  # for logs (transition.log) and metrics.record
    actions: tuple[Action, ...]  # the machines' actions, plus SIGTERMs to strays
    changes: tuple[PlannedChange, ...]


class _Run:
    """Accumulates steps while planning; private to reconcile()."""

    def __init__(self, instances: Mapping[str, Instance]) -> None:
        self.table = dict(instances)
        self.steps: list[Step] = []
        self.actions: list[Action] = []
        self.changes: list[PlannedChange] = []

    def feed(self, name: str, event: Event, text: str | None = None,
             execute: bool = True) -> None:
        before = self.table[name]
        t = step(before, event)
        self.table[name] = t.instance
        self.steps.append(Step(before, event, t))
        if execute:
            self.actions.extend(t.actions)
        if text is not None:
            self.changes.append(PlannedChange(name, text))


def reconcile(
    desired: Mapping[str, DesiredInstance],
    failures: Sequence[ConfigFailure],
    instances: Mapping[str, Instance],
    now: float,
    snapshot: Snapshot | None = None,
    previous: Mapping[str, DesiredInstance] | None = None,
) -> Reconciliation:
    """Bring `instances` towards `desired`; with a snapshot, take over first.

    `previous` (the last good desired set) only improves the reasons' wording.
    Raises: lifecycle.InvalidTransition only on a bug (the plan never feeds one).
    """
    run = _Run(instances)
    if snapshot is not None:
        _take_over(run, snapshot, desired, now)
    frozen = _Frozen(failures)
    for failure in failures:
        kept = sorted(n for n, i in run.table.items()
                      if frozen.has(n) and i.state is not State.STOPPED)
        scope = failure.sandbox if failure.process is None else \
            f"{failure.sandbox}/{failure.process}"
        run.changes.append(PlannedChange(
            scope, f"config failed to load, keeping {len(kept)} instance(s) as they are: "
                   f"{failure.error}"))
    new_counts = Counter((d.sandbox, d.process) for d in desired.values())
    old_counts = _old_counts(run.table, previous)
    for name in sorted(desired):
        if frozen.has(name):
            continue
        _want(run, desired[name], old_counts, new_counts, now)
    for name in sorted(run.table):
        inst = run.table[name]
        if name in desired or frozen.has(name):
            continue
        if inst.state not in (State.STOPPED, State.STOPPING):
            why = _stop_reason(name, desired, new_counts, old_counts)
            run.feed(name, StopRequested(why, now), f"stop: {why}")
    # forget retired instances that are done, so the table does not grow forever
    table = {n: i for n, i in run.table.items()
             if i.state is not State.STOPPED or n in desired or frozen.has(n)}
    return Reconciliation(table, tuple(run.steps), tuple(run.actions), tuple(run.changes))


def dry_run(
    previous: Mapping[str, DesiredInstance],
    desired: Mapping[str, DesiredInstance],
    failures: Sequence[ConfigFailure],
    instances: Mapping[str, Instance],
    now: float,
) -> list[PlannedChange]:
    """What switching from `previous` to `desired` would do, for people to read."""
    result = reconcile(desired, failures, instances, now, previous=previous)
    frozen = _Frozen(failures)
    kept = {d.name: d for d in previous.values() if frozen.has(d.name)}
    return list(result.changes) + socket_changes(previous, {**desired, **kept})


def socket_changes(
    previous: Mapping[str, DesiredInstance], desired: Mapping[str, DesiredInstance]
) -> list[PlannedChange]:
    """Listening addresses no instance uses any more, and new ones (T-16)."""
    old = _addresses(previous.values())
    new = _addresses(desired.values())
    return ([PlannedChange(f"sock {a}", "would close") for a in sorted(old - new)]
            + [PlannedChange(f"sock {a}", "would open") for a in sorted(new - old)])


def describe_change(old: InstanceSpec, new: InstanceSpec) -> str:
    """`restart: variables changed`, or `update: kill-timeout 5s -> 30s`."""
    if old.fingerprint != new.fingerprint:
        return "restart: " + describe_fingerprints(old.fingerprint, new.fingerprint)
    parts = [f"{key} {seconds(a)}s -> {seconds(b)}s" for key, a, b in (
        ("restart-timeout", old.restart_timeout_s, new.restart_timeout_s),
        ("kill-timeout", old.kill_timeout_s, new.kill_timeout_s)) if a != b]
    return "update: " + (", ".join(parts) or "nothing changed")


def describe_fingerprints(old: str, new: str) -> str:
    """Which keys of the identity JSON (P-2) differ, in YAML spelling."""
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return "config changed"
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return "config changed"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(k.replace("_", "-") for k in keys) + " changed" if keys else \
        "config changed"


# ---- internals ---------------------------------------------------------------------


class _Frozen:
    """Decision 4: instances whose sandbox or entry failed to load are left alone."""

    def __init__(self, failures: Iterable[ConfigFailure]) -> None:
        self.sandboxes = {f.sandbox for f in failures if f.process is None}
        self.entries = {(f.sandbox, f.process) for f in failures if f.process is not None}

    def has(self, name: str) -> bool:
        try:
            n = parse_instance_name(name)
        except ValueError:
            return False
        return n.sandbox in self.sandboxes or n.entry in self.entries


def _take_over(run: _Run, snap: Snapshot, desired: Mapping[str, DesiredInstance],
               now: float) -> None:
    """Replay missed exits, then adopt the live children, then settle the rest."""
    pending = (State.STARTING, State.STOPPING, State.UPGRADING)
    fresh = not run.table  # a new supervisor process: it knows no pid yet
    for ex in snap.missed_exits:  # in the order the broker reaped them
        inst = run.table.get(ex.name)
        text = f"pid {ex.pid} {ex.status.describe()} while disconnected"
        if inst is not None and inst.pid is None and inst.state in pending:
            # our in-flight Spawn did start; it is dead already, so no SIGTERM to it
            run.feed(ex.name, Started(ex.pid, now), execute=False)
            inst = run.table[ex.name]
        if inst is not None and inst.pid == ex.pid:
            run.feed(ex.name, Exited(ex.pid, ex.status, now), text)
            continue
        if fresh:
            # A fresh supervisor knows no pid: the knot died while none was
            # connected, and that death still happened (X-M4, T-35; the counters
            # carry over, X-M6). It is counted (a step with an outcome and no
            # change); the instance is then settled like any other.
            blank = new_instance(ex.name, InstanceSpec(""))
            outcome = classify(ex.status, term_sent=False, kill_sent=False)
            run.steps.append(Step(blank, Exited(ex.pid, ex.status, now),
                                  Transition(blank, outcome=outcome)))  # fmt: skip
        run.changes.append(PlannedChange(ex.name, f"{text}; not ours, ignored"))
    alive: dict[str, Child] = {}
    for c in snap.children:
        inst, prev = run.table.get(c.name), alive.get(c.name)
        if prev is not None:  # two knots for one instance cannot come from our Spawns
            ours = inst is not None and inst.pid == c.pid
            keep, drop = (c, prev) if ours else (prev, c)
            alive[c.name] = keep
            run.actions.append(Signal(drop.name, drop.pid, signal.SIGTERM))
            run.changes.append(PlannedChange(drop.name, f"unknown child pid {drop.pid}: SIGTERM"))
        else:
            alive[c.name] = c
    for name in sorted(run.table):
        inst = run.table[name]
        child = alive.get(name)
        if inst.pid is not None and (child is None or child.pid != inst.pid):
            # neither alive nor reaped: the broker lost it; treat it as dead
            run.feed(name, Exited(inst.pid, ExitStatus(), now),
                     f"pid {inst.pid} vanished while disconnected")
    for name in sorted(alive):
        c = alive[name]
        inst = run.table.get(name)
        if inst is None:
            d = desired.get(name)
            spec = d.spec if d is not None else InstanceSpec(c.fingerprint)
            run.table[name] = inst = new_instance(name, spec)
        if inst.pid == c.pid:
            continue  # in sync
        if inst.state in pending:
            run.feed(name, Started(c.pid, now), f"pid {c.pid} started while disconnected")
        else:
            run.feed(name, Adopted(c.pid, c.fingerprint, c.started_at, c.term_sent, now),
                     f"adopt pid {c.pid}")
    for name in sorted(run.table):
        inst = run.table[name]
        if inst.pid is None and inst.state in pending:
            run.feed(name, StartRefused("no reply before the broker reconnected", now,
                                        lost=True), "start request lost; retry")


def _want(run: _Run, d: DesiredInstance, old_counts: Mapping[tuple[str, str], int],
          new_counts: Mapping[tuple[str, str], int], now: float) -> None:
    name = d.name
    inst = run.table.get(name)
    if inst is None or inst.state is State.STOPPED:
        old = old_counts.get(d_entry := (d.sandbox, d.process), 0)
        why = "new process" if old == 0 else f"instances raised {old} -> {new_counts[d_entry]}"
        if inst is None:
            run.table[name] = new_instance(name, d.spec)
        run.feed(name, StartRequested(d.spec, now), f"start: {why}")
        return
    if inst.state is State.STOPPING:
        run.feed(name, StartRequested(d.spec, now), "restart: wanted again while stopping")
        return
    stale = inst.state in (State.RUNNING, State.STARTING) and \
        inst.fingerprint != d.spec.fingerprint
    if inst.spec != d.spec or stale:
        base = InstanceSpec(inst.fingerprint, inst.spec.restart_timeout_s,
                            inst.spec.kill_timeout_s) if stale and inst.fingerprint else inst.spec
        why = describe_change(base, d.spec)
        run.feed(name, Reconfigured(d.spec, why.split(": ", 1)[1], now), why)


def _old_counts(table: Mapping[str, Instance],
                previous: Mapping[str, DesiredInstance] | None) -> Counter[tuple[str, str]]:
    if previous is not None:
        return Counter((d.sandbox, d.process) for d in previous.values())
    counts: Counter[tuple[str, str]] = Counter()
    for name, inst in table.items():
        if inst.state not in (State.STOPPED, State.STOPPING):
            entry = _entry(name)
            if entry is not None:
                counts[entry] += 1
    return counts


def _entry(name: str) -> tuple[str, str] | None:
    try:
        return parse_instance_name(name).entry
    except ValueError:
        return None


def _stop_reason(name: str, desired: Mapping[str, DesiredInstance],
                 new_counts: Mapping[tuple[str, str], int],
                 old_counts: Mapping[tuple[str, str], int]) -> str:
    try:
        n = parse_instance_name(name)
    except ValueError:
        return "not a configured instance"
    if new_counts.get(n.entry):
        old = max(old_counts.get(n.entry, 0), n.index + 1)
        return f"instances lowered {old} -> {new_counts[n.entry]}"
    if any(d.sandbox == n.sandbox for d in desired.values()):
        return "process removed from the config"
    return "sandbox removed from the config"


def _addresses(items: Iterable[DesiredInstance]) -> set[str]:
    return {a for d in items for a in d.tcp_addresses}
