"""The broker's table of live containers (knots), and its records on disk.

Owns: which knot pid is which instance, since when, with which fingerprint,
and the record of each in `<runtime-dir>/children/` (root-only, never visible
inside a container). The records are what lets a broker find its containers
again after a re-exec (they are still its children) or after it was killed
(they were reparented; they are watched through pidfds). Rules:
- A record is trusted only when /proc/<pid> still shows a knot with that
  instance name and the same start time (pid reuse is detected, not guessed),
  or, after a re-exec, when the previous image handed that very child over
  (`trusted`): a child stays ours across execve, and only we can reap it, so its
  pid cannot have been reused (it is alive or our zombie).
- Only the broker writes here; it never decides when to start or stop.
- A start writes the record before the fork, with pid -1 (`intend`), and again
  with the pid after it (`add`): a broker killed in between leaves a record that
  names the knot it may have forked; the next one finds that knot in /proc by its
  --name (and, with cgroups, by being under this tree's cgroup-name) and adopts it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import field
from pathlib import Path

from protocol.structs import dataclass

log = logging.getLogger(__name__)

KNOT_COMM = "lithos_knot"  # knot.spawn.KNOT_COMM: a forked knot's name before its exec


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
    veth: str = ""  # host end of a bridged container's veth (K-32), deleted when it ends
    orphan_pidfd: int = -1  # set when the knot is not our child (broker was killed)

    def to_json(self) -> str:
        # By hand, not dataclasses.asdict (its deep copy was a tenth of a start's
        # record cost); sort_keys keeps the text stable.
        return _ENCODE({
            "instance": self.instance, "pid": self.pid, "start_ticks": self.start_ticks,
            "fingerprint": self.fingerprint, "started_at": self.started_at,
            "started_mono": self.started_mono, "cgroup": self.cgroup,
            "ports": [list(p) for p in self.ports], "kill_timeout_s": self.kill_timeout_s,
            "state_dir": self.state_dir, "veth": self.veth,
        })

    @classmethod
    def from_json(cls, text: str) -> Child:
        data = json.loads(text)
        data["ports"] = [(str(h), int(p)) for h, p in data.get("ports", [])]
        return cls(**data)


_ENCODE = json.JSONEncoder(sort_keys=True).encode


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


def proc_comm(pid: int) -> str | None:
    """/proc/<pid>/comm (the process's name, 15 bytes at most), or None when gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


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
        # Knots a killed broker forked but did not record (found from `intend`'s
        # record): maybe not yet in their cgroup.
        self.found: list[Child] = []

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
        self._write(child)

    def intend(self, child: Child) -> None:
        """Writes the record of a knot about to be forked (its pid is -1 until `add`)."""
        self._write(child)

    def abandon(self, instance: str) -> None:
        """Deletes the record `intend` wrote: the start failed, nothing was forked."""
        with contextlib.suppress(FileNotFoundError):
            (self.records_dir / f"{record_name(instance)}.json").unlink()

    def _write(self, child: Child) -> None:
        # os-level, not pathlib: this runs twice per start (intend, add).
        path = f"{self.records_dir}/{record_name(child.instance)}"
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = memoryview(child.to_json().encode())
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(f"{path}.tmp", f"{path}.json")

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

    def recover(self, trusted: Mapping[str, Child] | None = None) -> list[Child]:
        """Reads the records left by a previous broker; keeps the live ones.

        A record whose pid is gone, or now belongs to another process, is
        deleted and logged. A knot that is no longer our child (the previous
        broker was killed) is watched through a pidfd (`orphan_pidfd`).
        `trusted` (record name -> Child): the children our previous image handed
        over in a re-exec; their records are neither read nor checked in /proc.
        """
        self.records_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        recovered = []
        me = os.getpid()
        trusted = trusted or {}
        for path in sorted(self.records_dir.glob("*.json")):
            handed = trusted.get(path.stem)
            if handed is not None:
                self._by_pid[handed.pid] = handed
                self._by_name[handed.instance] = handed
                recovered.append(handed)
                continue
            try:
                child = Child.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("%s: unreadable child record (%s), deleting", path, e)
                path.unlink(missing_ok=True)
                continue
            if child.pid < 0:
                if not self._find_forked(child):
                    log.warning("%s: a start was cut short before its knot ran; cleaning up",
                                child.instance)  # fmt: skip
                    path.unlink(missing_ok=True)
                    self.gone.append(child)
                    continue
                log.warning("%s: knot pid %d was forked but not recorded; adopting it",
                            child.instance, child.pid)  # fmt: skip
                self._write(child)
                self.found.append(child)
            same = proc_start_ticks(child.pid) == child.start_ticks
            # With the same start time, the recorded process itself, even when
            # its cmdline does not name it: a knot that died during our exec is our
            # child, ours to reap with its real exit status (a zombie, or one still
            # exiting: its cmdline is empty once it released its memory, before it
            # shows as `Z`);
            # a knot forked without exec (knot.spawn) that is still in its setup
            # shows the broker's cmdline when the name did not fit over it, and
            # the old broker's from fork until it names itself KNOT_COMM. (A
            # zombie keeps its comm: one that is not ours is gone for us.)
            alive = same and (
                proc_knot_name(child.pid) == child.instance
                or proc_ppid(child.pid) == me
                or (proc_comm(child.pid) == KNOT_COMM and proc_state(child.pid) != "Z")
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

    def _find_forked(self, child: Child) -> bool:
        """Fills in pid and start ticks of the one knot `intend`ed for `child`, if it runs.

        With cgroups, the knot is the process in the instance's own group whose
        parent is not (the knot joins it as the first step of its setup, knot.plan's
        join op), so a knot forked without exec is found even while its cmdline is
        still the old broker's. Otherwise, and for a knot not yet in its group (killed
        between its go byte and its join), by its `--name` (a knot's own fork shows
        the same name: a process whose parent has it is not counted). A knot whose
        spawner died before the go byte exits by itself (EOF on its go pipe).
        """
        by_group: list[int] = []
        by_name: list[int] = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if child.cgroup is not None and _in_group(pid, child.cgroup):
                if not _in_group(proc_ppid(pid), child.cgroup):
                    by_group.append(pid)
                continue
            if proc_knot_name(pid) != child.instance:
                continue
            parent = proc_ppid(pid)
            if parent is not None and proc_knot_name(parent) == child.instance:
                continue
            by_name.append(pid)
        found = by_group or by_name
        if len(found) != 1:
            return False
        ticks = proc_start_ticks(found[0])
        if ticks is None:
            return False
        child.pid, child.start_ticks = found[0], ticks
        return True


def _in_group(pid: int | None, group: str) -> bool:
    """Whether /proc/<pid>/cgroup places pid exactly in `group` (any hierarchy, v1 or v2)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return any(line.rstrip("\n").endswith(f":/{group}") for line in f)
    except OSError:
        return False


def handed_over(texts: object) -> dict[str, Child]:
    """The children a previous image listed (Child.to_json texts) by record name;
    entries that do not parse are left out (their records are checked in /proc)."""
    out: dict[str, Child] = {}
    if not isinstance(texts, list):
        return out
    for text in texts:
        try:
            child = Child.from_json(text)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        out[record_name(child.instance)] = child
    return out


def new_child(
    instance: str, pid: int, fingerprint: str, cgroup: str | None, ports: list[tuple[str, int]]
) -> Child:
    """A Child for a knot forked just now (pid -1: an intent, not forked yet)."""
    ticks = proc_start_ticks(pid) if pid > 0 else None
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
