"""Reconciliation: start, upgrade, retire, take over after a reconnect, decision 4."""

from __future__ import annotations

import json
import signal

from supervisor.events import (
    Exited,
    ExitStatus,
    InstanceSpec,
    Outcome,
    Pid,
    Signal,
    Spawn,
    Started,
    StartRequested,
    TimerFired,
    WakeAt,
)
from supervisor.lifecycle import Instance, State, new_instance, step
from supervisor.plan import (
    Child,
    ConfigFailure,
    DesiredInstance,
    MissedExit,
    PlannedChange,
    Snapshot,
    describe_fingerprints,
    dry_run,
    reconcile,
)


def fp(image: str = "web.v1", **variables: str) -> str:
    """An identity JSON in the P-2 shape."""
    body: dict[str, object] = {"instances": 1, "image": image, "config": "/config/web.yaml"}
    if variables:
        body["variables"] = dict(sorted(variables.items()))
    body["kind"] = "Daemon"
    return json.dumps(body, separators=(",", ":"))


def want(sandbox: str, process: str, n: int, fingerprint: str,
         ports: frozenset[str] = frozenset()) -> dict[str, DesiredInstance]:
    out = {}
    for i in range(n):
        d = DesiredInstance(sandbox, process, i, InstanceSpec(fingerprint), ports)
        out[d.name] = d
    return out


def running(desired: dict[str, DesiredInstance], first_pid: int = 100) -> dict[str, Instance]:
    table = {}
    for k, (name, d) in enumerate(sorted(desired.items())):
        inst = step(new_instance(name, d.spec), StartRequested(d.spec, 0.0)).instance
        table[name] = step(inst, Started(Pid(first_pid + k), 0.0)).instance
    return table


def lines(changes: tuple[PlannedChange, ...] | list[PlannedChange]) -> list[str]:
    return [str(c) for c in changes]


def test_first_load_starts_every_instance() -> None:
    desired = want("web", "django", 2, fp())
    r = reconcile(desired, [], {}, now=0.0)
    assert [a for a in r.actions if isinstance(a, Spawn)] == [
        Spawn("web/django.0", fp()), Spawn("web/django.1", fp())]
    assert lines(r.changes) == ["web/django.0: start: new process",
                                "web/django.1: start: new process"]
    assert all(i.state is State.STARTING for i in r.instances.values())


def test_unchanged_config_does_nothing() -> None:
    desired = want("web", "django", 2, fp())
    r = reconcile(desired, [], running(desired), now=5.0)
    assert r.actions == () and r.changes == () and r.steps == ()


def test_e17_reconnect_adopts_unchanged_children_without_restart() -> None:
    desired = want("web", "django", 2, fp())
    snap = Snapshot(children=(Child("web/django.0", Pid(7), fp(), 0.0),
                              Child("web/django.1", Pid(8), fp(), 0.0)))
    r = reconcile(desired, [], {}, now=50.0, snapshot=snap)  # a fresh supervisor
    assert r.actions == ()
    assert {n: (i.state, i.pid) for n, i in r.instances.items()} == {
        "web/django.0": (State.RUNNING, 7), "web/django.1": (State.RUNNING, 8)}
    assert lines(r.changes) == ["web/django.0: adopt pid 7", "web/django.1: adopt pid 8"]


def test_e18_changed_variables_restart_only_that_entry_one_sigterm_each() -> None:
    old = {**want("web", "django", 2, fp()), **want("web", "celery", 1, fp("celery.v1"))}
    new = {**want("web", "django", 2, fp(port="8080")), **want("web", "celery", 1,
                                                              fp("celery.v1"))}
    r = reconcile(new, [], running(old), now=10.0)
    sigterms = [a for a in r.actions if isinstance(a, Signal)]
    assert sigterms == [Signal("web/django.0", Pid(101), signal.SIGTERM),
                        Signal("web/django.1", Pid(102), signal.SIGTERM)]
    assert lines(r.changes) == ["web/django.0: restart: variables changed",
                                "web/django.1: restart: variables changed"]
    # reconciling again (e.g. a second reload) sends no second SIGTERM (E-18, T-32)
    again = reconcile(new, [], r.instances, now=11.0)
    assert again.actions == ()
    # the old knot exits; the restart uses the new identity
    t = step(r.instances["web/django.0"], Exited(Pid(101), ExitStatus(code=0), 12.0))
    assert t.outcome is Outcome.TERMINATED
    assert step(t.instance, TimerFired(12.0)).actions == (Spawn("web/django.0", fp(port="8080")),)


def test_e19_lowered_instances_and_removed_entries_are_retired() -> None:
    old = {**want("web", "django", 4, fp()), **want("web", "celery", 1, fp("c")),
           **want("api", "app", 1, fp("a"))}
    new = want("web", "django", 3, fp())
    r = reconcile(new, [], running(old), now=10.0, previous=old)
    assert lines(r.changes) == [
        "api/app.0: stop: sandbox removed from the config",
        "web/celery.0: stop: process removed from the config",
        "web/django.3: stop: instances lowered 4 -> 3",
    ]
    assert {a.instance for a in r.actions if isinstance(a, Signal)} == {
        "api/app.0", "web/celery.0", "web/django.3"}
    # without `previous`, the wording comes from the instances we have
    r2 = reconcile(new, [], running(old), now=10.0)
    assert "web/django.3: stop: instances lowered 4 -> 3" in lines(r2.changes)


def test_raised_instances_start_only_the_new_indexes() -> None:
    old = want("web", "django", 2, fp())
    r = reconcile(want("web", "django", 4, fp()), [], running(old), now=3.0)
    assert lines(r.changes) == ["web/django.2: start: instances raised 2 -> 4",
                                "web/django.3: start: instances raised 2 -> 4"]


def test_decision4_broken_sandbox_keeps_its_instances() -> None:
    old = {**want("web", "django", 2, fp()), **want("api", "app", 1, fp("a"))}
    table = running(old)
    failure = ConfigFailure("web", None, "/etc/lithos/processes/web.yaml: instances: -1 "
                                         "must be >= 0")
    # the broken sandbox contributes nothing to the desired set
    r = reconcile(want("api", "app", 1, fp("a")), [failure], table, now=10.0)
    assert r.actions == ()
    assert r.instances == table
    assert lines(r.changes) == [
        "web: config failed to load, keeping 2 instance(s) as they are: "
        "/etc/lithos/processes/web.yaml: instances: -1 must be >= 0"]


def test_decision4_broken_entry_keeps_its_instances_others_proceed() -> None:
    old = {**want("web", "django", 1, fp()), **want("web", "celery", 1, fp("c"))}
    failure = ConfigFailure("web", "celery", "web.v2/config/celery.yaml: @{port}: undeclared")
    new = want("web", "django", 1, fp("web.v2"))  # celery failed: absent
    r = reconcile(new, [failure], running(old), now=10.0)
    assert [a.instance for a in r.actions if isinstance(a, Signal)] == ["web/django.0"]
    assert r.instances["web/celery.0"].state is State.RUNNING


def test_decision4_after_supervisor_restart_broken_sandbox_children_are_adopted() -> None:
    snap = Snapshot(children=(Child("web/django.0", Pid(7), fp(), 0.0),))
    r = reconcile({}, [ConfigFailure("web", None, "bad")], {}, now=5.0, snapshot=snap)
    assert r.instances["web/django.0"].state is State.RUNNING
    assert not any(isinstance(a, Signal) for a in r.actions)


def test_reconnect_replays_missed_exits_in_order_then_adopts() -> None:
    desired = want("web", "django", 2, fp())
    table = running(desired)  # pids 100, 101
    snap = Snapshot(
        children=(Child("web/django.1", Pid(101), fp(), 0.0),),
        missed_exits=(MissedExit("web/django.0", Pid(100), ExitStatus(code=2)),
                      MissedExit("web/other.0", Pid(55), ExitStatus(code=0))),
    )
    r = reconcile(desired, [], table, now=30.0, snapshot=snap)
    assert r.instances["web/django.0"].state is State.BACKOFF
    assert r.instances["web/django.1"].pid == 101
    assert [s.transition.outcome for s in r.steps] == [Outcome.CRASHED]
    assert WakeAt("web/django.0", 30.0) in r.actions
    assert lines(r.changes) == [
        "web/django.0: pid 100 exited with code 2 while disconnected",
        "web/other.0: pid 55 exited with code 0 while disconnected; not ours, ignored"]


def test_fresh_supervisor_counts_the_deaths_it_missed_x_m6() -> None:
    """A new supervisor process knows no pid; the knots that died while none was
    connected still died: one death each (the restored counters keep up)."""
    from supervisor.metrics import Metrics

    desired = want("web", "django", 2, fp())
    snap = Snapshot(children=(Child("web/django.1", Pid(101), fp(), 0.0),),
                    missed_exits=(MissedExit("web/django.0", Pid(100), ExitStatus(code=2)),))
    r = reconcile(desired, [], {}, now=30.0, snapshot=snap)
    metrics = Metrics([("web", "django")])
    for s in r.steps:
        metrics.record(s.before, s.transition)
    counts = metrics.processes[("web", "django")]
    assert (counts.deaths, counts.failures) == (1, 1)
    assert counts.started == 1  # the restart of django.0; django.1 is adopted
    assert r.instances["web/django.1"].pid == 101


def test_reconnect_in_flight_spawn_is_not_started_twice() -> None:
    desired = want("web", "django", 3, fp())
    r0 = reconcile(desired, [], {}, now=0.0)  # three Spawns, no replies yet
    snap = Snapshot(children=(Child("web/django.0", Pid(7), fp(), 0.0),),
                    missed_exits=(MissedExit("web/django.1", Pid(8), ExitStatus(code=2)),))
    r = reconcile(desired, [], r0.instances, now=0.5, snapshot=snap)
    assert not any(isinstance(a, Spawn) for a in r.actions)
    assert (r.instances["web/django.0"].state, r.instances["web/django.0"].pid) == (
        State.RUNNING, 7)
    assert r.instances["web/django.1"].state is State.BACKOFF  # started, then died
    assert r.instances["web/django.2"].state is State.BACKOFF  # lost: retried later
    assert "web/django.2: start request lost; retry" in lines(r.changes)


def test_stop_wanted_while_in_flight_spawn_died_sends_no_sigterm_to_dead_pid() -> None:
    r0 = reconcile(want("web", "django", 1, fp()), [], {}, now=0.0)
    r1 = reconcile({}, [], r0.instances, now=0.1)  # retired before the reply
    snap = Snapshot(missed_exits=(MissedExit("web/django.0", Pid(8), ExitStatus(code=2)),))
    r = reconcile({}, [], r1.instances, now=0.5, snapshot=snap)
    assert not any(isinstance(a, Signal) for a in r.actions)
    assert r.steps[-1].transition.instance.state is State.STOPPED
    assert "web/django.0" not in r.instances  # retired and done: forgotten


def test_vanished_pid_is_treated_as_dead() -> None:
    desired = want("web", "django", 1, fp())
    gone = reconcile(desired, [], running(desired), now=5.0, snapshot=Snapshot())
    assert gone.instances["web/django.0"].state is State.BACKOFF
    assert [s.transition.outcome for s in gone.steps] == [Outcome.VANISHED]
    # and if another knot runs under that name, it is adopted: still one live pid
    snap = Snapshot(children=(Child("web/django.0", Pid(9), fp(), 0.0),))
    r = reconcile(desired, [], running(desired), now=5.0, snapshot=snap)
    assert (r.instances["web/django.0"].state, r.instances["web/django.0"].pid) == (
        State.RUNNING, 9)
    assert not any(isinstance(a, Signal | Spawn) for a in r.actions)


def test_two_children_with_one_name_the_extra_one_is_stopped() -> None:
    desired = want("web", "django", 1, fp())
    snap = Snapshot(children=(Child("web/django.0", Pid(9), fp(), 0.0),
                              Child("web/django.0", Pid(100), fp(), 0.0)))
    r = reconcile(desired, [], running(desired), now=5.0, snapshot=snap)
    assert r.actions == (Signal("web/django.0", Pid(9), signal.SIGTERM),)
    assert r.instances["web/django.0"].pid == 100
    assert "web/django.0: unknown child pid 9: SIGTERM" in lines(r.changes)


def test_adopted_retired_child_is_stopped_e23() -> None:
    snap = Snapshot(children=(Child("old/app.0", Pid(7), fp(), 0.0),))
    r = reconcile({}, [], {}, now=5.0, snapshot=snap)
    assert r.actions[0] == Signal("old/app.0", Pid(7), signal.SIGTERM)
    assert r.instances["old/app.0"].state is State.STOPPING


def test_dry_run_reasons_and_sockets() -> None:
    old = {**want("web", "django", 4, fp(), frozenset({"0.0.0.0:8080"})),
           **want("web", "admin", 1, fp("admin"), frozenset({"0.0.0.0:9000"}))}
    new = want("web", "django", 3, fp(port="8081"), frozenset({"0.0.0.0:8081"}))
    out = [str(c) for c in dry_run(old, new, [], running(old), now=1.0)]
    assert out == [
        "web/django.0: restart: variables changed",
        "web/django.1: restart: variables changed",
        "web/django.2: restart: variables changed",
        "web/admin.0: stop: process removed from the config",
        "web/django.3: stop: instances lowered 4 -> 3",
        "sock 0.0.0.0:8080 would close",
        "sock 0.0.0.0:9000 would close",
        "sock 0.0.0.0:8081 would open",
    ]


def test_dry_run_keeps_sockets_of_a_broken_sandbox() -> None:
    old = want("web", "django", 1, fp(), frozenset({"0.0.0.0:8080"}))
    out = dry_run(old, {}, [ConfigFailure("web", None, "bad")], running(old), now=1.0)
    assert not any("sock" in str(c) for c in out)


def test_describe_fingerprints() -> None:
    assert describe_fingerprints(fp(), fp("web.v2", a="1")) == "image, variables changed"
    assert describe_fingerprints(
        '{"extra_secrets_namespaces":["x"]}', "{}") == "extra-secrets-namespaces changed"
    assert describe_fingerprints("opaque-1", "opaque-2") == "config changed"


def test_timeouts_only_change_does_not_restart() -> None:
    desired = want("web", "django", 1, fp())
    new = {n: DesiredInstance(d.sandbox, d.process, d.index,
                              InstanceSpec(fp(), kill_timeout_s=30.0))
           for n, d in desired.items()}
    r = reconcile(new, [], running(desired), now=1.0)
    assert r.actions == ()
    assert lines(r.changes) == ["web/django.0: update: kill-timeout 5s -> 30s"]
    assert r.instances["web/django.0"].spec.kill_timeout_s == 30.0
