"""The per-instance state machine: the whole state x event table, then E-11..E-19."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace

import pytest

from supervisor.events import (
    EVENT_TYPES,
    Adopted,
    CleanUp,
    Event,
    Exited,
    ExitStatus,
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
)
from supervisor.lifecycle import (
    KILL_GRACE_S,
    Instance,
    InvalidTransition,
    State,
    Transition,
    new_instance,
    step,
)

NAME = "web/django.3"
SPEC = InstanceSpec("fp1", restart_timeout_s=1.0, kill_timeout_s=5.0)
SPEC2 = InstanceSpec("fp2", restart_timeout_s=1.0, kill_timeout_s=5.0)
P = Pid(10)

# One representative instance per (state, has-pid) variant, at t=100.
SAMPLES: dict[str, Instance] = {
    "STOPPED": Instance(NAME, SPEC),
    "STARTING": Instance(NAME, SPEC, State.STARTING, None, "fp1", 100.0),
    "RUNNING": Instance(NAME, SPEC, State.RUNNING, P, "fp1", 90.0),
    "STOPPING": Instance(NAME, SPEC, State.STOPPING, P, "fp1", 90.0, 110.0, term_sent=True),
    "STOPPING-nopid": Instance(NAME, SPEC, State.STOPPING, None, "fp1", 100.0),
    "UPGRADING": Instance(NAME, SPEC2, State.UPGRADING, P, "fp1", 90.0, 110.0, term_sent=True),
    "UPGRADING-nopid": Instance(NAME, SPEC2, State.UPGRADING, None, "fp1", 100.0),
    "BACKOFF": Instance(NAME, SPEC, State.BACKOFF, None, "fp1", 100.0, 101.0),
}
T = 120.0
EVENTS: dict[type[Event], Event] = {
    StartRequested: StartRequested(SPEC, T),
    Started: Started(Pid(11), T),
    StartRefused: StartRefused("user-id: 0 is not in allow-users", T),
    Exited: Exited(P, ExitStatus(code=1), T),
    StopRequested: StopRequested("instances lowered 4 -> 3", T),
    Reconfigured: Reconfigured(SPEC2, "variables changed", T),
    TimerFired: TimerFired(T),
    Adopted: Adopted(Pid(12), "fp1", 50.0, False, T),
}
X = None  # rejected: InvalidTransition
S = State
# state variant -> event type -> next state (or X). This is docs/supervisor.md's table.
TABLE: dict[str, dict[type[Event], State | None]] = {
    "STOPPED": {StartRequested: S.STARTING, Started: X, StartRefused: X, Exited: X,
                StopRequested: S.STOPPED, Reconfigured: X, TimerFired: S.STOPPED,
                Adopted: S.RUNNING},
    "STARTING": {StartRequested: X, Started: S.RUNNING, StartRefused: S.BACKOFF, Exited: X,
                 StopRequested: S.STOPPING, Reconfigured: S.UPGRADING,
                 TimerFired: S.STARTING, Adopted: X},
    "RUNNING": {StartRequested: X, Started: X, StartRefused: X, Exited: S.BACKOFF,
                StopRequested: S.STOPPING, Reconfigured: S.UPGRADING,
                TimerFired: S.RUNNING, Adopted: X},
    "STOPPING": {StartRequested: S.UPGRADING, Started: X, StartRefused: X,
                 Exited: S.STOPPED, StopRequested: S.STOPPING, Reconfigured: X,
                 TimerFired: S.STOPPING, Adopted: X},
    "STOPPING-nopid": {StartRequested: S.UPGRADING, Started: S.STOPPING,
                       StartRefused: S.STOPPED, Exited: X, StopRequested: S.STOPPING,
                       Reconfigured: X, TimerFired: S.STOPPING, Adopted: X},
    "UPGRADING": {StartRequested: X, Started: X, StartRefused: X, Exited: S.BACKOFF,
                  StopRequested: S.STOPPING, Reconfigured: S.UPGRADING,
                  TimerFired: S.UPGRADING, Adopted: X},
    "UPGRADING-nopid": {StartRequested: X, Started: S.UPGRADING, StartRefused: S.BACKOFF,
                        Exited: X, StopRequested: S.STOPPING, Reconfigured: S.UPGRADING,
                        TimerFired: S.UPGRADING, Adopted: X},
    "BACKOFF": {StartRequested: X, Started: X, StartRefused: X, Exited: X,
                StopRequested: S.STOPPED, Reconfigured: S.BACKOFF, TimerFired: S.STARTING,
                Adopted: S.RUNNING},
}  # fmt: skip


def test_table_covers_every_state_and_event() -> None:
    assert {SAMPLES[k].state for k in TABLE} == set(State)
    for row in TABLE.values():
        assert set(row) == set(EVENT_TYPES)
    assert set(EVENTS) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("variant", list(TABLE))
def test_every_state_event_pair(variant: str, event_type: type[Event]) -> None:
    inst, event = SAMPLES[variant], EVENTS[event_type]
    expected = TABLE[variant][event_type]
    if expected is None:
        with pytest.raises(InvalidTransition) as info:
            step(inst, event)
        assert NAME in str(info.value) and inst.state.name in str(info.value)
        return
    result = step(inst, event)
    assert isinstance(result, Transition)
    assert result.instance.state is expected
    if result.instance.state is not inst.state:  # one log line per transition (P12)
        assert result.log is not None
        assert str(result.log).startswith(f"{NAME}: {inst.state.name} -> {expected.name} (")
    # invariants every state keeps
    new = result.instance
    if new.state in (S.STOPPED, S.BACKOFF, S.STARTING):
        assert new.pid is None
    if new.state is S.RUNNING:
        assert new.pid is not None
    assert sum(isinstance(a, Spawn) for a in result.actions) <= 1
    if any(isinstance(a, Spawn) for a in result.actions):
        assert new.state is S.STARTING


def run(inst: Instance, *events: Event) -> tuple[Instance, list[Transition]]:
    out = []
    for ev in events:
        t = step(inst, ev)
        out.append(t)
        inst = t.instance
    return inst, out


def started(spec: InstanceSpec = SPEC, at: float = 0.0, pid: int = 4121) -> Instance:
    inst, _ = run(new_instance("web.3", spec), StartRequested(spec, at), Started(Pid(pid), at))
    return inst


def test_log_wording_matches_style_p12() -> None:
    inst = started()
    t = step(inst, Exited(Pid(4121), ExitStatus(code=1), 0.2))
    assert t.log is not None and t.log.level == logging.WARNING
    assert t.log.fmt == "%s: %s -> %s (%s)"
    assert str(t.log) == (
        "web.3: RUNNING -> BACKOFF (pid 4121 exited with code 1, unexpected; "
        "restart in 0.8s, restart-timeout 1s)"
    )
    t0 = step(new_instance("web.3", SPEC), StartRequested(SPEC, 0.0))
    assert str(t0.log) == "web.3: STOPPED -> STARTING (start requested)"
    assert str(step(t0.instance, Started(Pid(4121), 0.0)).log) == (
        "web.3: STARTING -> RUNNING (pid 4121)"
    )


def test_e11_knot_exit_zero_is_normal_nonzero_is_failure() -> None:
    # E-11: the knot applied normal-exit-codes (K-42) and exits 0 or 2 (K-43)
    t = step(started(), Exited(Pid(4121), ExitStatus(code=0), 5.0))
    assert t.outcome is Outcome.NORMAL and not t.outcome.is_failure
    t = step(started(), Exited(Pid(4121), ExitStatus(code=2), 5.0))
    assert t.outcome is Outcome.CRASHED and t.outcome.is_failure
    t = step(started(), Exited(Pid(4121), ExitStatus(signal=signal.SIGSEGV), 5.0))
    assert t.outcome is Outcome.KILLED and t.outcome.is_failure
    assert "pid 4121 killed by signal SIGSEGV, unexpected; restart" in str(t.log)


@pytest.mark.parametrize("status", [ExitStatus(code=2), ExitStatus(code=1),
                                    ExitStatus(signal=signal.SIGTERM), ExitStatus(code=0)])
def test_e12_sigterm_from_us_is_never_a_failure(status: ExitStatus) -> None:
    inst, ts = run(started(), StopRequested("removed", 1.0))
    assert ts[0].actions[0] == Signal("web.3", Pid(4121), signal.SIGTERM)
    t = step(inst, Exited(Pid(4121), status, 2.0))
    assert t.outcome is Outcome.TERMINATED and not t.outcome.is_failure
    assert t.instance.state is S.STOPPED and CleanUp("web.3") in t.actions
    # and the broker's record of a SIGTERM sent before we (re)connected counts too
    remote = replace(status, term_sent_by_us=True)
    assert step(started(), Exited(Pid(4121), remote, 2.0)).outcome is Outcome.TERMINATED


def test_e13_restart_timeout_counts_from_the_previous_start() -> None:
    spec = InstanceSpec("fp1", restart_timeout_s=10.0)
    t = step(started(spec, at=0.0), Exited(Pid(4121), ExitStatus(code=2), 1.0))
    assert t.instance.state is S.BACKOFF and t.actions == (WakeAt("web.3", 10.0),)
    assert "restart in 9s, restart-timeout 10s" in str(t.log)
    early = step(t.instance, TimerFired(9.9))  # an early timer is a no-op
    assert early.instance == t.instance and early.actions == ()
    t2 = step(t.instance, TimerFired(10.0))
    assert t2.actions == (Spawn("web.3", "fp1"),) and t2.instance.started_at == 10.0
    # an app that ran 20 s restarts immediately
    t = step(started(spec, at=0.0), Exited(Pid(4121), ExitStatus(code=2), 20.0))
    assert t.actions == (WakeAt("web.3", 20.0),)
    assert "restart now, restart-timeout 10s" in str(t.log)
    assert step(t.instance, TimerFired(20.0)).actions == (Spawn("web.3", "fp1"),)


def test_restart_timeout_zero_restarts_at_once() -> None:
    spec = InstanceSpec("fp1", restart_timeout_s=0.0)
    t = step(started(spec, at=3.0), Exited(Pid(4121), ExitStatus(code=2), 3.0))
    assert t.actions == (WakeAt("web.3", 3.0),)
    assert step(t.instance, TimerFired(3.0)).instance.state is S.STARTING


def test_e14_kill_timeout_knot_exit_3_is_a_failure() -> None:
    spec = InstanceSpec("fp1", kill_timeout_s=2.0)
    inst, ts = run(started(spec), StopRequested("removed", 10.0))
    assert ts[0].actions == (Signal("web.3", Pid(4121), signal.SIGTERM),
                             WakeAt("web.3", 12.0 + KILL_GRACE_S))
    t = step(inst, Exited(Pid(4121), ExitStatus(code=3), 12.0))
    assert t.outcome is Outcome.KILL_TIMEOUT and t.outcome.is_failure


def test_escalation_sigkill_after_kill_timeout_plus_grace() -> None:
    spec = InstanceSpec("fp1", kill_timeout_s=2.0)
    inst, _ = run(started(spec), StopRequested("removed", 10.0))
    assert step(inst, TimerFired(16.9)).actions == ()  # not yet due
    t = step(inst, TimerFired(17.0))
    assert t.actions == (Signal("web.3", Pid(4121), signal.SIGKILL),)
    assert str(t.log) == ("web.3: STOPPING: still alive 7s after SIGTERM "
                          "(kill-timeout 2s + grace 5s), sending SIGKILL")
    assert t.log is not None and t.log.level == logging.WARNING
    assert step(t.instance, TimerFired(30.0)).actions == ()  # only one SIGKILL
    end = step(t.instance, Exited(Pid(4121), ExitStatus(signal=signal.SIGKILL), 17.0))
    assert end.outcome is Outcome.KILL_TIMEOUT and end.outcome.is_failure
    assert "killed by signal SIGKILL, kill-timeout expired" in str(end.log)


def test_e18_upgrade_sends_exactly_one_sigterm() -> None:
    inst, ts = run(started(), Reconfigured(SPEC2, "variables changed", 5.0),
                   Reconfigured(InstanceSpec("fp3"), "variables changed", 6.0),
                   StopRequested("removed", 6.5), StartRequested(InstanceSpec("fp4"), 7.0))
    signals = [a for t in ts for a in t.actions if isinstance(a, Signal)]
    assert signals == [Signal("web.3", Pid(4121), signal.SIGTERM)]
    assert inst.state is S.UPGRADING
    t = step(inst, Exited(Pid(4121), ExitStatus(code=0), 8.0))
    assert t.instance.state is S.BACKOFF and t.outcome is Outcome.TERMINATED
    t2 = step(t.instance, TimerFired(8.0))
    assert t2.actions == (Spawn("web.3", "fp4"),)


def test_adopted_process_that_already_got_sigterm_gets_no_second_one() -> None:
    inst, _ = run(new_instance("web.3", SPEC2), Adopted(Pid(7), "fp1", 0.0, True, 50.0))
    t = step(inst, Reconfigured(SPEC2, "variables changed", 50.0))
    assert t.instance.state is S.UPGRADING
    assert not any(isinstance(a, Signal) for a in t.actions)
    assert t.actions == (WakeAt("web.3", 50.0 + 5.0 + KILL_GRACE_S),)


def test_stop_while_start_in_flight_sends_sigterm_on_ack() -> None:
    inst, ts = run(new_instance("web.3", SPEC), StartRequested(SPEC, 0.0),
                   StopRequested("removed", 0.1))
    assert inst.state is S.STOPPING and ts[1].actions == ()
    t = step(inst, Started(Pid(5), 0.2))
    assert t.actions[0] == Signal("web.3", Pid(5), signal.SIGTERM)
    assert step(t.instance, Exited(Pid(5), ExitStatus(code=0), 1.0)).instance.state is S.STOPPED


def test_e19_retire_then_cleanup_after_exit() -> None:
    inst, ts = run(started(), StopRequested("instances lowered 4 -> 3", 3.0))
    assert str(ts[0].log) == ("web.3: RUNNING -> STOPPING (instances lowered 4 -> 3; "
                              "SIGTERM to pid 4121, kill-timeout 5s)")
    t = step(inst, Exited(Pid(4121), ExitStatus(code=0), 4.0))
    assert t.actions == (CleanUp("web.3"),)
    assert str(t.log) == ("web.3: STOPPING -> STOPPED (pid 4121 exited with code 0, "
                          "after SIGTERM; retired)")


def test_setup_failure_is_a_config_problem_and_backs_off() -> None:
    t = step(started(), Exited(Pid(4121), ExitStatus(code=78), 0.1))
    assert t.outcome is Outcome.SETUP_FAILED and t.outcome.is_config_problem
    assert t.instance.state is S.BACKOFF and t.instance.problem is not None
    assert "setup failed (config problem)" in str(t.log)


def test_refused_start_is_a_config_problem_not_a_crash() -> None:
    inst, _ = run(new_instance("web.3", SPEC), StartRequested(SPEC, 0.0))
    t = step(inst, StartRefused("user-id: 0 is not in allow-users [1]", 0.0))
    assert t.outcome is Outcome.REFUSED and t.outcome.is_config_problem
    assert t.instance.problem == "user-id: 0 is not in allow-users [1]"
    assert str(t.log) == ("web.3: STARTING -> BACKOFF (start refused: user-id: 0 is not in "
                          "allow-users [1]; config problem; restart in 1s, restart-timeout 1s)")
    lost = step(inst, StartRefused("broker reconnected", 0.0, lost=True))
    assert lost.outcome is Outcome.LOST and not lost.outcome.is_failure


def test_rewanted_soon_after_a_start_waits_for_restart_timeout() -> None:
    spec = InstanceSpec("fp1", restart_timeout_s=10.0)
    inst, _ = run(started(spec, at=0.0), StopRequested("removed", 1.0),
                  Exited(Pid(4121), ExitStatus(code=0), 2.0))
    t = step(inst, StartRequested(spec, 3.0))
    assert t.instance.state is S.BACKOFF and t.actions == (WakeAt("web.3", 10.0),)


def test_reconfigured_same_fingerprint_only_updates_timeouts() -> None:
    spec = InstanceSpec("fp1", kill_timeout_s=30.0)
    t = step(started(), Reconfigured(spec, "kill-timeout 5s -> 30s", 1.0))
    assert t.instance.state is S.RUNNING and t.actions == () and t.instance.spec == spec


def test_exit_of_a_foreign_pid_is_rejected() -> None:
    with pytest.raises(InvalidTransition, match="pid 99 is not this instance's process"):
        step(started(), Exited(Pid(99), ExitStatus(code=0), 1.0))


def test_every_outcome_has_words() -> None:
    from supervisor.vocabulary import OUTCOME_WORDS

    assert set(OUTCOME_WORDS) == set(Outcome)


def test_bad_spec_and_status_are_rejected() -> None:
    with pytest.raises(ValueError, match="restart-timeout: -1"):
        InstanceSpec("fp", restart_timeout_s=-1)
    with pytest.raises(ValueError, match="both code"):
        ExitStatus(code=1, signal=9)


def test_config_problems_back_off_even_with_restart_timeout_0() -> None:
    """A refused start is retried after 1, 2, 4 ... 30 s, not in a tight loop."""
    from supervisor.events import (
        Exited,
        ExitStatus,
        InstanceSpec,
        Started,
        StartRefused,
        StartRequested,
        TimerFired,
    )
    from supervisor.lifecycle import State, config_retry_s, new_instance, step

    inst = new_instance("sb/p.0", InstanceSpec("fp", restart_timeout_s=0.0))
    inst = step(inst, StartRequested(inst.spec, 100.0)).instance
    delays = []
    now = 100.0
    for _ in range(7):
        t = step(inst, StartRefused("config-error: bad", now))
        assert t.instance.state is State.BACKOFF
        assert t.instance.deadline is not None
        delays.append(t.instance.deadline - now)
        now = t.instance.deadline
        inst = step(t.instance, TimerFired(now)).instance
        assert inst.state is State.STARTING
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert config_retry_s(100) == 30.0
    # Once a process ran and crashed (not a config problem), the count resets and
    # restart-timeout 0 means at once again.
    inst = step(inst, Started(7, now)).instance  # type: ignore[arg-type]
    crashed = step(inst, Exited(7, ExitStatus(code=2), now + 5)).instance  # type: ignore[arg-type]
    assert crashed.state is State.BACKOFF
    assert (crashed.config_failures, crashed.deadline) == (0, now + 5)
