"""Metrics: the manual's names and types, a simulated history, cantal bytes, Prometheus."""

from __future__ import annotations

import json
import struct

import pytest

from supervisor.events import (
    Event,
    Exited,
    ExitStatus,
    InstanceSpec,
    Pid,
    Started,
    StartRefused,
    StartRequested,
    StopRequested,
    TimerFired,
)
from supervisor.lifecycle import Instance, new_instance, step
from supervisor.metrics import (
    Kind,
    Metrics,
    cantal_meta,
    cantal_offset,
    cantal_values,
    prometheus_text,
)

SPEC = InstanceSpec("fp1", restart_timeout_s=1.0)


def test_names_and_types_are_the_manuals() -> None:
    m = Metrics([("web", "django")])
    got = [(s.name, s.kind) for s in m.samples()]
    C, L = Kind.COUNTER, Kind.LEVEL
    assert got == [
        ("master.restarts", C), ("master.sandboxes", L), ("master.containers", L),
        ("master.queue", L),
        ("containers.started", C), ("containers.failures", C), ("containers.deaths", C),
        ("containers.running", L), ("containers.unknown", L),  # decision 3 (X-M5)
        ("processes.web.django.started", C), ("processes.web.django.failures", C),
        ("processes.web.django.deaths", C), ("processes.web.django.running", L),
    ]


class History:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self.table: dict[str, Instance] = {}

    def __call__(self, name: str, *events: Event) -> None:
        inst = self.table.get(name) or new_instance(name, SPEC)
        for ev in events:
            t = step(inst, ev)
            self.m.record(inst, t)
            inst = t.instance
        self.table[name] = inst
        # record() moved the levels by each step's share; a recount must agree.
        moved = _levels(self.m)
        self.m.set_levels(self.table.values())
        assert moved == _levels(self.m)


def _levels(m: Metrics) -> tuple[int, ...]:
    return (m.master.queue, m.containers.running, m.containers.unknown,
            *(c.running for _, c in sorted(m.processes.items())))


def test_counts_follow_a_simulated_history() -> None:
    m = Metrics([("web", "django"), ("web", "celery")])
    m.configure([("web", "django"), ("web", "celery")], sandboxes=1, containers=3)
    h = History(m)
    h("web/django.0", StartRequested(SPEC, 0.0), Started(Pid(10), 0.0))
    h("web/django.1", StartRequested(SPEC, 0.0), Started(Pid(11), 0.0))
    h("web/celery.0", StartRequested(SPEC, 0.0), StartRefused("user-id: 0", 0.0))
    h("web/django.0", Exited(Pid(10), ExitStatus(code=2), 5.0), TimerFired(5.0),
      Started(Pid(12), 5.0))  # a crash and a restart
    h("web/django.1", Exited(Pid(11), ExitStatus(code=0), 6.0))  # normal (E-11)
    h("web/django.0", StopRequested("instances lowered 2 -> 0", 7.0))
    c, dj, ce = m.containers, m.processes[("web", "django")], m.processes[("web", "celery")]
    assert (c.started, c.deaths, c.failures, c.running, c.unknown) == (4, 3, 2, 0, 1)
    assert (dj.started, dj.deaths, dj.failures, dj.running) == (3, 2, 1, 0)
    assert (ce.started, ce.deaths, ce.failures, ce.running) == (1, 1, 1, 0)
    assert m.master.queue == 3  # two restarts pending, one SIGKILL deadline
    h("web/django.0", Exited(Pid(12), ExitStatus(code=0), 8.0))  # after our SIGTERM
    assert (c.deaths, c.failures, c.unknown) == (4, 2, 0)


def test_configure_keeps_counters_of_kept_entries() -> None:
    m = Metrics([("web", "django"), ("web", "celery")])
    m.processes[("web", "django")].started = 5
    m.configure([("web", "django"), ("api", "app")], sandboxes=2, containers=4)
    assert set(m.processes) == {("web", "django"), ("api", "app")}
    assert m.processes[("web", "django")].started == 5
    assert (m.master.sandboxes, m.master.containers) == (2, 4)


def test_cantal_meta_lines() -> None:
    m = Metrics([("web", "django")])
    lines = cantal_meta(m.samples()).decode().splitlines(keepends=True)
    assert lines[0] == 'counter 8: {"group":"master","metric":"restarts"}\n'
    assert lines[1] == 'level 8 signed: {"group":"master","metric":"sandboxes"}\n'
    assert lines[8] == 'level 8 signed: {"group":"containers","metric":"unknown"}\n'
    assert lines[9] == 'counter 8: {"group":"processes.web.django","metric":"started"}\n'
    assert len(lines) == 13
    for line in lines:  # the json is compact with sorted keys (X-M2)
        body = line.split(": ", 1)[1]
        assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")) + "\n"


def test_cantal_values_layout() -> None:
    m = Metrics([("web", "django")])
    m.master.restarts = 3
    m.containers.started = 2**40
    m.processes[("web", "django")].running = -1  # a level is signed
    samples = m.samples()
    data = cantal_values(samples)
    assert len(data) == 4096
    assert data[0:8] == (3).to_bytes(8, "little")
    assert struct.unpack_from("<Q", data, cantal_offset(samples, "containers.started")) == (
        2**40,)
    off = cantal_offset(samples, "processes.web.django.running")
    assert off == 12 * 8 and struct.unpack_from("<q", data, off) == (-1,)
    assert data[13 * 8:] == bytes(4096 - 13 * 8)
    with pytest.raises(KeyError, match="nope"):
        cantal_offset(samples, "nope")


def test_cantal_values_rounds_up_to_pages() -> None:
    m = Metrics([("sb", f"p{i}") for i in range(200)])  # 9 + 800 metrics
    assert len(cantal_values(m.samples())) == 8192


def test_prometheus_text() -> None:
    m = Metrics([("web", "django"), ("api", "app")])
    m.master.restarts = 1
    m.processes[("web", "django")].started = 4
    text = prometheus_text(m.samples())
    assert "# TYPE lithos_master_restarts_total counter\nlithos_master_restarts_total 1\n" in text
    assert "# TYPE lithos_containers_running gauge\nlithos_containers_running 0\n" in text
    assert "# TYPE lithos_containers_unknown gauge\n" in text
    assert ('# TYPE lithos_process_started_total counter\n'
            'lithos_process_started_total{sandbox="api",process="app"} 0\n'
            'lithos_process_started_total{sandbox="web",process="django"} 4\n') in text
    assert text.count("# TYPE lithos_process_running gauge") == 1
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("# ") or line.startswith("lithos_")
