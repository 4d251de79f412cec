"""Metric bookkeeping and its two renderings: cantal files and Prometheus text.

Owns the manual's metric names and types (X-M4; decision 3 keeps the
documented `containers.unknown`, X-M5), how lifecycle transitions move them,
and the exact bytes of the cantal `.meta` and `.values` files (X-M2, X-M3).
main.py writes those bytes (mmap or write+rename) and serves the Prometheus text;
this module does no I/O and imports none of os, socket, time, subprocess.

Rules (docs/supervisor.md has the list):
- counters: `started` +1 per Spawn (T-35); every started or adopted process ends
  in exactly one Outcome, which is one `death` (refused and lost starts included,
  T-35), and a `failure` when Outcome.is_failure (X-M8, E-12, E-14).
- levels are a function of the instance table: `running` counts configured
  instances with a live knot, `unknown` those being retired, `master.queue` those
  with a deadline. set_levels() counts the whole table (after a take-over); each
  step then moves only its own instance's share (record(): the share of the
  instance after the step minus the share before), which equals a recount as long
  as the table changes only by steps. A recount per publish made a cold start of N
  cost N passes over N (a third of the supervisor's CPU at N = 1000).
- visit order: master.*, containers.* (unknown last), then processes sorted by
  (sandbox, process); the original used HashMap order, which no reader relied on.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Mapping, Sequence

from protocol.names import parse_instance_name
from protocol.structs import dataclass
from supervisor.events import Spawn
from supervisor.lifecycle import Instance, State, Transition

PAGE_BYTES = 4096


class Kind(enum.Enum):
    COUNTER = "counter"  # u64, only grows
    LEVEL = "level"  # i64 gauge


@dataclass
class Counts:
    """started, failures, deaths, running: per process entry and for all containers."""

    started: int = 0
    failures: int = 0
    deaths: int = 0
    running: int = 0


@dataclass
class ContainerCounts(Counts):
    """Counts for all containers, plus those of unknown (unconfigured) entries."""

    unknown: int = 0


@dataclass
class MasterCounts:
    """The `master.*` metrics of the manual."""

    restarts: int = 0
    sandboxes: int = 0
    containers: int = 0
    queue: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric's value at a publish."""

    group: str  # "master", "containers", "processes.web.django"
    metric: str
    kind: Kind
    value: int

    @property
    def name(self) -> str:
        """The manual's dotted name: `processes.web.django.started`."""
        return f"{self.group}.{self.metric}"


_COUNTS_ORDER = (("started", Kind.COUNTER), ("failures", Kind.COUNTER),
                 ("deaths", Kind.COUNTER), ("running", Kind.LEVEL))


class Metrics:
    """The supervisor's metrics; one object, owned by main.py (no module state)."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self.master = MasterCounts()
        self.containers = ContainerCounts()
        self.processes: dict[tuple[str, str], Counts] = {e: Counts() for e in entries}
        # instance name -> its (sandbox, process) entry: set_levels looks every
        # instance up at each publish; parse each name once.
        self._entry_of: dict[str, tuple[str, str] | None] = {}

    def configure(self, entries: Iterable[tuple[str, str]], *, sandboxes: int,
                  containers: int) -> None:
        """After a config load: register (sandbox, process) entries, keep kept counters."""
        self.processes = {e: self.processes.get(e, Counts()) for e in entries}
        self.master.sandboxes = sandboxes
        self.master.containers = containers

    def record(self, before: Instance, t: Transition) -> None:
        """Count one lifecycle step: Spawns and the end of a process or start."""
        per = self._entry(before.name)
        spawns = sum(isinstance(a, Spawn) for a in t.actions)
        for c in (self.containers, per):
            if c is None:
                continue
            c.started += spawns
            if t.outcome is not None:
                c.deaths += 1
                c.failures += t.outcome.is_failure
        self._count_level(before, -1)
        self._count_level(t.instance, +1)

    def unstart(self, name: str) -> None:
        """Takes back one Spawn's `started`: its request never left (the channel broke)."""
        for c in (self.containers, self._entry(name)):
            if c is not None:
                c.started -= 1

    def set_levels(self, instances: Iterable[Instance]) -> None:
        """Count `running`, `unknown` and `master.queue` over the whole instance table.

        The queue is what the original queued (T-34): instances waiting to
        restart, and stopping ones with a SIGKILL deadline.
        """
        self.containers.running = self.containers.unknown = self.master.queue = 0
        for c in self.processes.values():
            c.running = 0
        for inst in instances:
            self._count_level(inst, +1)

    def _count_level(self, inst: Instance, sign: int) -> None:
        """Adds (sign +1) or takes away (-1) one instance's share of the levels."""
        self.master.queue += sign * (inst.deadline is not None)
        if inst.pid is None:
            return
        if inst.state is State.STOPPING:  # retired, being killed (manual: unknown)
            self.containers.unknown += sign
            return
        self.containers.running += sign
        per = self._entry(inst.name)
        if per is not None:
            per.running += sign

    def restore(self, previous: Mapping[str, int]) -> None:
        """Carry counters over from the files a previous supervisor left (X-M6).

        Only counters (restarts, started, failures, deaths) are taken, and only
        those whose dotted name is still registered; levels are recomputed.
        """
        for sample in self.samples():
            value = previous.get(sample.name)
            if sample.kind is not Kind.COUNTER or value is None or value < 0:
                continue
            if sample.group == "master":
                target: object = self.master
            elif sample.group == "containers":
                target = self.containers
            else:
                _, sandbox, process = sample.group.split(".", 2)
                target = self.processes[(sandbox, process)]
            setattr(target, sample.metric, value)

    def _entry(self, name: str) -> Counts | None:
        try:
            key = self._entry_of[name]
        except KeyError:
            try:
                key = parse_instance_name(name).entry
            except ValueError:
                key = None
            self._entry_of[name] = key
        return None if key is None else self.processes.get(key)

    def samples(self) -> list[Sample]:
        """Every metric in visit order (X-M4, plus containers.unknown after running)."""
        m, c = self.master, self.containers
        out = [Sample("master", "restarts", Kind.COUNTER, m.restarts),
               Sample("master", "sandboxes", Kind.LEVEL, m.sandboxes),
               Sample("master", "containers", Kind.LEVEL, m.containers),
               Sample("master", "queue", Kind.LEVEL, m.queue)]
        out += [Sample("containers", key, kind, getattr(c, key)) for key, kind in _COUNTS_ORDER]
        out.append(Sample("containers", "unknown", Kind.LEVEL, c.unknown))
        for (sandbox, process), counts in sorted(self.processes.items()):
            group = f"processes.{sandbox}.{process}"
            out += [Sample(group, key, kind, getattr(counts, key)) for key, kind in _COUNTS_ORDER]
        return out


# ---- cantal (X-M1..X-M3) ----------------------------------------------------------


def cantal_meta(samples: Sequence[Sample]) -> bytes:
    """The `.meta` file: `counter 8: {json}` / `level 8 signed: {json}` per line (X-M2)."""
    lines = []
    for s in samples:
        head = "counter 8" if s.kind is Kind.COUNTER else "level 8 signed"
        body = json.dumps({"group": s.group, "metric": s.metric}, sort_keys=True,
                          separators=(",", ":"))
        lines.append(f"{head}: {body}\n")
    return "".join(lines).encode()


def cantal_values(samples: Sequence[Sample]) -> bytes:
    """The `.values` file: 8-byte little-endian values, zero-padded to 4096 (X-M3).

    Little-endian is the host order on x86-64, where cantal reads it; counters
    are u64 (a negative counter is a bug and raises struct.error), levels i64.
    """
    data = b"".join(struct.pack("<Q" if s.kind is Kind.COUNTER else "<q", s.value)
                    for s in samples)
    size = -(-len(data) // PAGE_BYTES) * PAGE_BYTES
    return data + bytes(size - len(data))


def cantal_offset(samples: Sequence[Sample], name: str) -> int:
    """Byte offset of the metric `name` (dotted) in the values file. Raises: KeyError."""
    for i, s in enumerate(samples):
        if s.name == name:
            return i * 8
    raise KeyError(f"metric {name!r} is not registered")


# ---- Prometheus text exposition format ---------------------------------------------

_HELP = {
    # master.containers and processes.*.running share words with containers.*
    "restarts": "Starts and re-executions of the lithos master process.",
    "sandboxes": "Number of sandbox configs loaded.",
    "containers": "Number of configured daemon instances.",
    "queue": "Length of the timer queue (restarts and kills).",
    "started": "Containers started.",
    "failures": "Container deaths counted as failures.",
    "deaths": "Container deaths for any reason.",
    "running": "Containers running.",
    "unknown": "Children being stopped that no config wants any more.",
}


def prometheus_name(sample: Sample) -> str:
    """`master.restarts` -> `lithos_master_restarts_total`; per process: `lithos_process_*`."""
    prefix = "process" if sample.group.startswith("processes.") else sample.group
    suffix = "_total" if sample.kind is Kind.COUNTER else ""
    return f"lithos_{prefix}_{sample.metric}{suffix}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(samples: Sequence[Sample]) -> str:
    """Prometheus text format 0.0.4; per-process samples get sandbox/process labels."""
    families: dict[str, list[str]] = {}
    heads: dict[str, Sample] = {}
    for s in samples:
        name = prometheus_name(s)
        labels = ""
        if s.group.startswith("processes."):
            sandbox, process = s.group.removeprefix("processes.").split(".", 1)
            labels = f'{{sandbox="{_label(sandbox)}",process="{_label(process)}"}}'
        families.setdefault(name, []).append(f"{name}{labels} {s.value}")
        heads.setdefault(name, s)
    out = []
    for name, rows in families.items():
        head = heads[name]
        kind = "counter" if head.kind is Kind.COUNTER else "gauge"
        out += [f"# HELP {name} {_HELP[head.metric]}", f"# TYPE {name} {kind}", *rows]
    return "\n".join(out) + "\n"
