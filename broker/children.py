"""The broker's table of live containers (knots), and its records on disk.

Owns: which knot pid is which instance, since when, with which fingerprint,
and the record of each in `<runtime-dir>/children/` (root-only, never visible
inside a container). The records are what lets a broker find its containers
again after a re-exec (they are still its children) or after it was killed
(they were reparented; they are watched through pidfds). Rules:
- A record is trusted only when /proc/<pid> still shows a knot with that
  instance name and the same start time (pid reuse is detected, not guessed).
- Only the broker writes here; it never decides when to start or stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

INSTANCE_RE = re.compile(r"^(?P<sandbox>[\w-]+)/(?P<process>[\w-]+)\.(?P<index>\d+)$")
COMMAND_RE = re.compile(r"^(?P<sandbox>[\w-]+)/cmd\.(?P<process>[\w-]+)\.(?P<pid>\d+)$")


def record_name(instance: str) -> str:
    """`web/app.0` -> `web:app.0` (the same shape as the cgroup name, T-51)."""
    return instance.replace("/", ":", 1)


@dataclass(slots=True)
class Child:
    """One live knot."""

    instance: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: guards against pid reuse
    fingerprint: str
    started_at: float  # time.time(), for display
    started_mono: float  # time.monotonic(); the same clock across exec
    cgroup: str | None = None
    ports: list[tuple[str, int]] = field(default_factory=list)
    kill_timeout_s: float = 5.0
    state_dir: str = ""
    orphan_pidfd: int = -1  # set when the knot is not our child (broker was killed)

    def to_json(self) -> str:
        data = asdict(self)
        del data["orphan_pidfd"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Child:
        data = json.loads(text)
        data["ports"] = [(str(h), int(p)) for h, p in data.get("ports", [])]
        return cls(**data)


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The comm field may contain spaces and parens: split after the last ')'.
    rest = stat[stat.rindex(b")") + 2 :].split()
    return int(rest[19])


def proc_state(pid: int) -> str | None:
    """Field 3 of /proc/<pid>/stat (`R`, `S`, `Z`...), or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def proc_knot_name(pid: int) -> str | None:
    """The `--name` a knot was started with, or None if pid is not a knot."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    # `python -m knot --name X` or `.../bin/lithos_knot --name X`: a word
    # naming the knot must come before --name.
    for i, arg in enumerate(argv[:-1]):
        if arg == b"--name":
            if any(b"knot" in word for word in argv[:i]):
                return argv[i + 1].decode("utf-8", "replace")
            return None
    return None


class Children:
    """Live knots by pid and by instance name, mirrored to record files."""

    def __init__(self, records_dir: Path) -> None:
        self.records_dir = records_dir
        self._by_pid: dict[int, Child] = {}
        self._by_name: dict[str, Child] = {}
        # Records `recover()` found dead: what they left (cgroup, state dir) is
        # the caller's to clean up.
        self.gone: list[Child] = []

    def __len__(self) -> int:
        return len(self._by_pid)

    def __iter__(self) -> Iterator[Child]:
        return iter(list(self._by_pid.values()))

    def by_pid(self, pid: int) -> Child | None:
        return self._by_pid.get(pid)

    def by_name(self, instance: str) -> Child | None:
        return self._by_name.get(instance)

    def add(self, child: Child) -> None:
        """Remembers a new knot and writes its record (atomically)."""
        self._by_pid[child.pid] = child
        self._by_name[child.instance] = child
        path = self.records_dir / f"{record_name(child.instance)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(child.to_json())
        os.rename(tmp, path)

    def remove(self, pid: int) -> Child | None:
        """Forgets a knot that has exited and deletes its record."""
        child = self._by_pid.pop(pid, None)
        if child is None:
            return None
        if self._by_name.get(child.instance) is child:
            del self._by_name[child.instance]
        with contextlib.suppress(FileNotFoundError):
            (self.records_dir / f"{record_name(child.instance)}.json").unlink()
        if child.orphan_pidfd >= 0:
            fd, child.orphan_pidfd = child.orphan_pidfd, -1
            os.close(fd)
        return child

    def recover(self) -> list[Child]:
        """Reads the records left by a previous broker; keeps the live ones.

        A record whose pid is gone, or now belongs to another process, is
        deleted and logged. A knot that is no longer our child (the previous
        broker was killed) is watched through a pidfd (`orphan_pidfd`).
        """
        self.records_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        recovered = []
        me = os.getpid()
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                child = Child.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("%s: unreadable child record (%s), deleting", path, e)
                path.unlink(missing_ok=True)
                continue
            same = proc_start_ticks(child.pid) == child.start_ticks
            # A knot that died during our exec is still our child, ours to reap
            # with its real exit status: a zombie, or one still exiting (its
            # cmdline is empty from the moment it released its memory, before it
            # shows as `Z`). Our child with the recorded start time is that knot.
            alive = same and (
                proc_knot_name(child.pid) == child.instance or proc_ppid(child.pid) == me
            )
            if not alive:
                log.info("%s: pid %d is gone; record deleted", child.instance, child.pid)
                path.unlink(missing_ok=True)
                self.gone.append(child)
                continue
            if proc_ppid(child.pid) != me:
                try:
                    child.orphan_pidfd = os.pidfd_open(child.pid)
                except ProcessLookupError:
                    path.unlink(missing_ok=True)
                    continue
            self._by_pid[child.pid] = child
            self._by_name[child.instance] = child
            recovered.append(child)
        for tmp in self.records_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        return recovered


def new_child(
    instance: str, pid: int, fingerprint: str, cgroup: str | None, ports: list[tuple[str, int]]
) -> Child:
    """A Child for a knot forked just now."""
    ticks = proc_start_ticks(pid)
    return Child(
        instance=instance,
        pid=pid,
        start_ticks=ticks if ticks is not None else -1,
        fingerprint=fingerprint,
        started_at=time.time(),
        started_mono=time.monotonic(),
        cgroup=cgroup,
        ports=ports,
    )
