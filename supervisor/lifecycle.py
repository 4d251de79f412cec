"""The per-instance state machine: `step(instance, event) -> Transition`.

Owns every decision about one instance's process: when to spawn, when to
SIGTERM and SIGKILL, when to restart (restart-timeout measured from the previous
start, E-13), and what an exit means (events.classify). The whole machine is in
this file; docs/supervisor.md has it as a state x event table.

Rules:
- Every (state, event) pair is handled or raises InvalidTransition; `match` plus
  `assert_never` keeps the table complete.
- Side effects are returned as data (Spawn, Signal, WakeAt, CleanUp) and one log
  line per transition (vocabulary.py); main.py executes them.
- Exactly one SIGTERM per process (E-18, T-32); the knot enforces kill-timeout
  itself (K-41) and we SIGKILL the knot only after kill-timeout + KILL_GRACE_S.
- Pure: imports none of os, socket, time, subprocess; `now` is in every event.
"""

from __future__ import annotations

import enum
import logging
import signal as _signal
from dataclasses import replace

from protocol.structs import dataclass
from supervisor import vocabulary as v
from supervisor.events import (
    Action,
    Adopted,
    CleanUp,
    Event,
    Exited,
    InstanceSpec,
    Outcome,
    Pid,
    Reconfigured,
    Signal,
    Spawn,
    Started,
    StartRefused,
    StartRequested,
    StopRequested,
    TimerFired,
    WakeAt,
    classify,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, assert_never
else:
    from protocol.hints import assert_never


# The knot exits by itself kill-timeout after our SIGTERM (K-41). We SIGKILL it
# only if it is still alive this much later: enough for the knot's own timer, its
# exit and the broker's reap, and the same 5 s the manual gives unidentified
# children. It also covers a SIGTERM that reached the knot during setup, which
# the kernel drops for a namespace init (K-40).
KILL_GRACE_S = 5.0
# A refused start or a failed setup (a config problem) is retried after 1 s,
# then 2, 4, ... up to 30 s, whatever restart-timeout says.
CONFIG_RETRY_MIN_S = 1.0
CONFIG_RETRY_MAX_S = 30.0


class State(enum.Enum):
    STOPPED = "stopped"  # not wanted, no process
    STARTING = "starting"  # Spawn sent, no pid yet
    RUNNING = "running"  # the knot runs as `pid`
    STOPPING = "stopping"  # retired: SIGTERM sent (or due on the ack), then STOPPED
    UPGRADING = "upgrading"  # SIGTERM sent (or due on the ack), then restart with `spec`
    BACKOFF = "backoff"  # wanted, no process, waiting for restart-timeout


class InvalidTransition(Exception):
    """An event that cannot happen in this state: a bug in the caller or the peer."""

    def __init__(self, instance: str, state: State, event: Event, why: str) -> None:
        self.instance, self.state, self.event = instance, state, event
        super().__init__(
            f"{instance}: {type(event).__name__} is invalid in {state.name} ({why})"
        )


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance (`web/django.3`) and what we know about its process."""

    name: str
    spec: InstanceSpec  # what the configs want now
    state: State = State.STOPPED
    pid: Pid | None = None
    fingerprint: str | None = None  # of the current process (spawned or adopted)
    started_at: float | None = None  # of the last start: restart-timeout counts from it
    deadline: float | None = None  # BACKOFF: restart; STOPPING/UPGRADING: SIGKILL
    term_sent: bool = False  # we sent SIGTERM to `pid`
    kill_sent: bool = False  # we sent SIGKILL to `pid`
    problem: str | None = None  # why the last start failed for a config problem, for status
    config_failures: int = 0  # config problems in a row (refused starts, setup failures)


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of one step: the new instance, actions, a log line, an outcome."""

    instance: Instance
    actions: tuple[Action, ...] = ()
    log: v.LogLine | None = None
    outcome: Outcome | None = None  # set when a process or start ended


def new_instance(name: str, spec: InstanceSpec) -> Instance:
    """A STOPPED instance; feed it StartRequested or Adopted."""
    return Instance(name=name, spec=spec)


def step(inst: Instance, event: Event) -> Transition:
    """Apply one event. Raises: InvalidTransition."""
    match event:
        case StartRequested():
            return _on_start_requested(inst, event)
        case Started():
            return _on_started(inst, event)
        case StartRefused():
            return _on_start_refused(inst, event)
        case Exited():
            return _on_exited(inst, event)
        case StopRequested():
            return _on_stop_requested(inst, event)
        case Reconfigured():
            return _on_reconfigured(inst, event)
        case TimerFired():
            return _on_timer(inst, event)
        case Adopted():
            return _on_adopted(inst, event)
        case _:
            assert_never(event)


def _go(inst: Instance, new: Instance, level: int, detail: str, *actions: Action,
        outcome: Outcome | None = None) -> Transition:
    line = v.transition(level, inst.name, inst.state.name, new.state.name, detail)
    return Transition(new, actions, line, outcome)


def _spawn(inst: Instance, now: float, level: int, detail: str) -> Transition:
    """-> STARTING with the wanted fingerprint."""
    new = replace(inst, state=State.STARTING, pid=None, fingerprint=inst.spec.fingerprint,
                  started_at=now, deadline=None, term_sent=False, kill_sent=False)
    return _go(inst, new, level, detail, Spawn(inst.name, inst.spec.fingerprint))


def config_retry_s(failures: int) -> float:
    """The least delay before retrying after `failures` config problems in a row."""
    return float(min(CONFIG_RETRY_MAX_S, CONFIG_RETRY_MIN_S * 2 ** min(failures - 1, 16)))


def _backoff(inst: Instance, now: float, detail: str, level: int,
             outcome: Outcome | None, problem: str | None) -> Transition:
    """-> BACKOFF until restart-timeout after the previous start (E-13)."""
    start = inst.started_at if inst.started_at is not None else now
    wake = max(now, start + inst.spec.restart_timeout_s)
    failures = 0
    if outcome is not None and outcome.is_config_problem:
        # A wrong config stays wrong until someone fixes it: retry it with a
        # growing delay, never in a tight loop (restart-timeout may be 0).
        failures = inst.config_failures + 1
        wake = max(wake, now + config_retry_s(failures))
    new = replace(inst, state=State.BACKOFF, pid=None, deadline=wake, term_sent=False,
                  kill_sent=False, problem=problem, config_failures=failures)
    detail = f"{detail}; {v.restart_detail(wake - now, inst.spec.restart_timeout_s)}"
    return _go(inst, new, level, detail, WakeAt(inst.name, wake), outcome=outcome)


def _terminate(inst: Instance, new_state: State, now: float, reason: str,
               sent_fmt: str, pending_fmt: str) -> Transition:
    """RUNNING|STARTING -> STOPPING|UPGRADING: one SIGTERM, then a SIGKILL deadline."""
    kt = v.seconds(inst.spec.kill_timeout_s)
    if inst.pid is None:  # the Spawn is not acknowledged yet: SIGTERM on Started
        new = replace(inst, state=new_state, deadline=None)
        return _go(inst, new, logging.INFO, pending_fmt % reason)
    deadline = now + inst.spec.kill_timeout_s + KILL_GRACE_S
    new = replace(inst, state=new_state, deadline=deadline, term_sent=True)
    wake = WakeAt(inst.name, deadline)
    if inst.term_sent:  # E-18, T-32: never a second SIGTERM to one process
        return _go(inst, new, logging.INFO, v.RETIRE_TERM_ALREADY_SENT % (reason, inst.pid, kt),
                   wake)
    term = Signal(inst.name, inst.pid, _signal.SIGTERM)
    return _go(inst, new, logging.INFO, sent_fmt % (reason, inst.pid, kt), term, wake)


def _reject(inst: Instance, event: Event, why: str) -> NoReturn:
    raise InvalidTransition(inst.name, inst.state, event, why)


def _on_start_requested(inst: Instance, ev: StartRequested) -> Transition:
    match inst.state:
        case State.STOPPED:
            inst = replace(inst, spec=ev.spec)
            start = inst.started_at
            if start is not None and start + ev.spec.restart_timeout_s > ev.now:
                # STOPPED -> BACKOFF: s6's minimum delay holds for a re-wanted instance too
                return _backoff(inst, ev.now, v.START_REQUESTED, logging.INFO, None, None)
            return _spawn(inst, ev.now, logging.INFO, v.START_REQUESTED)  # STOPPED -> STARTING
        case State.STOPPING:  # STOPPING -> UPGRADING: restart once the old process exits
            new = replace(inst, state=State.UPGRADING, spec=ev.spec)
            return _go(inst, new, logging.INFO, v.UNRETIRE)
        case State.STARTING | State.RUNNING | State.UPGRADING | State.BACKOFF:
            return _reject(inst, ev, "already wanted; use Reconfigured")
        case _:
            assert_never(inst.state)


def _on_started(inst: Instance, ev: Started) -> Transition:
    match inst.state:
        case State.STARTING:  # STARTING -> RUNNING; a setup failure would come as an exit
            new = replace(inst, state=State.RUNNING, pid=ev.pid, problem=None)
            return _go(inst, new, logging.INFO, v.STARTED % ev.pid)
        case State.STOPPING | State.UPGRADING if inst.pid is None:
            # stop or upgrade was wanted while the Spawn was in flight: SIGTERM now
            deadline = ev.now + inst.spec.kill_timeout_s + KILL_GRACE_S
            new = replace(inst, pid=ev.pid, deadline=deadline, term_sent=True)
            line = v.note(logging.INFO, inst.name, inst.state.name, v.SIGTERM_ON_ACK % ev.pid)
            actions = (Signal(inst.name, ev.pid, _signal.SIGTERM), WakeAt(inst.name, deadline))
            return Transition(new, actions, line)
        case State.STOPPING | State.UPGRADING | State.RUNNING | State.BACKOFF | State.STOPPED:
            return _reject(inst, ev, "no start is pending")
        case _:
            assert_never(inst.state)


def _on_start_refused(inst: Instance, ev: StartRefused) -> Transition:
    if ev.lost:
        outcome, detail, problem = Outcome.LOST, v.LOST % ev.reason, inst.problem
    else:
        outcome, detail, problem = Outcome.REFUSED, v.REFUSED % ev.reason, ev.reason
    level = v.exit_level(outcome)
    match inst.state:
        case State.STARTING:  # STARTING -> BACKOFF
            return _backoff(inst, ev.now, detail, level, outcome, problem)
        case State.UPGRADING if inst.pid is None:  # UPGRADING -> BACKOFF, with the new spec
            return _backoff(inst, ev.now, detail, level, outcome, problem)
        case State.STOPPING if inst.pid is None:  # STOPPING -> STOPPED
            new = replace(inst, state=State.STOPPED, deadline=None, problem=problem)
            return _go(inst, new, level, detail, CleanUp(inst.name), outcome=outcome)
        case State.STOPPING | State.UPGRADING | State.RUNNING | State.BACKOFF | State.STOPPED:
            return _reject(inst, ev, "no start is pending")
        case _:
            assert_never(inst.state)


def _on_exited(inst: Instance, ev: Exited) -> Transition:
    if inst.pid is None or inst.pid != ev.pid:
        return _reject(inst, ev, f"pid {ev.pid} is not this instance's process (pid {inst.pid})")
    outcome = classify(ev.status, term_sent=inst.term_sent, kill_sent=inst.kill_sent)
    detail = v.exit_detail(ev.pid, ev.status, outcome)
    level = v.exit_level(outcome)
    problem = detail if outcome.is_config_problem else None
    match inst.state:
        case State.RUNNING | State.UPGRADING:  # -> BACKOFF (restart with inst.spec)
            return _backoff(inst, ev.now, detail, level, outcome, problem)
        case State.STOPPING:  # STOPPING -> STOPPED
            new = replace(inst, state=State.STOPPED, pid=None, deadline=None, term_sent=False,
                          kill_sent=False)
            return _go(inst, new, level, f"{detail}; retired", CleanUp(inst.name),
                       outcome=outcome)
        case State.STARTING | State.BACKOFF | State.STOPPED:
            return _reject(inst, ev, "no process")  # unreachable: these have no pid
        case _:
            assert_never(inst.state)


def _on_stop_requested(inst: Instance, ev: StopRequested) -> Transition:
    match inst.state:
        case State.STOPPED | State.STOPPING:  # already retired or retiring: nothing to do
            return Transition(inst)
        case State.RUNNING | State.STARTING:  # -> STOPPING
            return _terminate(inst, State.STOPPING, ev.now, ev.reason, v.RETIRE,
                              v.RETIRE_PENDING)
        case State.UPGRADING:  # UPGRADING -> STOPPING: the SIGTERM is already out
            new = replace(inst, state=State.STOPPING)
            return _go(inst, new, logging.INFO, v.CANCEL_UPGRADE % ev.reason)
        case State.BACKOFF:  # BACKOFF -> STOPPED
            new = replace(inst, state=State.STOPPED, deadline=None)
            return _go(inst, new, logging.INFO, v.RETIRE_NO_PROCESS % ev.reason,
                       CleanUp(inst.name))
        case _:
            assert_never(inst.state)


def _on_reconfigured(inst: Instance, ev: Reconfigured) -> Transition:
    same = ev.spec.fingerprint == inst.fingerprint
    match inst.state:
        case State.RUNNING | State.STARTING if not same:  # -> UPGRADING
            inst = replace(inst, spec=ev.spec)
            return _terminate(inst, State.UPGRADING, ev.now, ev.reason, v.UPGRADE,
                              v.UPGRADE_PENDING)
        case State.RUNNING | State.STARTING | State.UPGRADING | State.BACKOFF:
            # same process identity, or no process yet: only remember the new spec
            # (the timeouts, T-30a); an UPGRADING process already got its one SIGTERM
            new = replace(inst, spec=ev.spec)
            line = v.note(logging.INFO, inst.name, inst.state.name, v.RETUNED % ev.reason)
            return Transition(new, (), line)
        case State.STOPPED | State.STOPPING:
            return _reject(inst, ev, "not wanted; use StartRequested")
        case _:
            assert_never(inst.state)


def _on_timer(inst: Instance, ev: TimerFired) -> Transition:
    due = inst.deadline is not None and inst.deadline <= ev.now
    match inst.state:
        case State.BACKOFF if due:  # BACKOFF -> STARTING
            return _spawn(inst, ev.now, logging.INFO, v.RESTARTING)
        case State.STOPPING | State.UPGRADING if due and inst.pid is not None:
            # the knot outlived its own kill-timeout (K-41) by KILL_GRACE_S: SIGKILL it
            # (as pid 1 of its pid namespace, the whole container goes with it)
            text = v.ESCALATE % (v.seconds(inst.spec.kill_timeout_s + KILL_GRACE_S),
                                 v.seconds(inst.spec.kill_timeout_s), v.seconds(KILL_GRACE_S))
            new = replace(inst, deadline=None, kill_sent=True)
            line = v.note(logging.WARNING, inst.name, inst.state.name, text)
            return Transition(new, (Signal(inst.name, inst.pid, _signal.SIGKILL),), line)
        case (State.BACKOFF | State.STOPPING | State.UPGRADING | State.STARTING
              | State.RUNNING | State.STOPPED):
            return Transition(inst)  # a stale or early timer: the heap cannot cancel
        case _:
            assert_never(inst.state)


def _on_adopted(inst: Instance, ev: Adopted) -> Transition:
    match inst.state:
        case State.STOPPED | State.BACKOFF:  # -> RUNNING; plan.py then compares fingerprints
            new = replace(inst, state=State.RUNNING, pid=ev.pid, fingerprint=ev.fingerprint,
                          started_at=ev.started_at, deadline=None, term_sent=ev.term_sent,
                          kill_sent=False)
            return _go(inst, new, logging.INFO, v.ADOPTED % ev.pid)
        case State.RUNNING | State.STOPPING | State.UPGRADING if inst.pid == ev.pid:
            return Transition(inst)  # already ours
        case State.STOPPING | State.UPGRADING | State.STARTING if inst.pid is None:
            return _reject(inst, ev, "a start is pending; the snapshot's pid is Started")
        case State.RUNNING | State.STOPPING | State.UPGRADING | State.STARTING:
            return _reject(inst, ev, f"already has pid {inst.pid}")
        case _:
            assert_never(inst.state)
