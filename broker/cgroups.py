"""cgroups of lithos instances, on cgroup v1 or v2 (K-20, T-6, T-12b, T-51, E-3).

Owns every mkdir, write and rmdir under the cgroup filesystems, but a new instance
group's own dirs and files: its knot makes and writes those (off the broker's serial
path), as `prepare` decides them (LeafWork: knot.plan's mkdir and write ops). Which version and
where each controller is mounted is detected by `broker/cgroup_detect.py`;
`cgroup-name: null` is modelled by the caller as having no `CgroupLayout` at all.

Rules:
- Groups live under pid 1's group (K-20): `<base>/<cgroup-name>/<sandbox>:<process>.<i>.scope`
  (T-51). This module never decides which group an instance gets or whether a
  group may be removed; the broker does, with `instance_group` and `classify_group`.
- Errors name the group, the file, the value and the errno name, e.g.
  `cgroup lithos.slice/web:app.0.scope: writing .../memory.limit_in_bytes = 1000: EINVAL`.
- Imports only the standard library and `broker.cgroup_detect`; never `protocol` config
  objects: callers pass plain values.
See docs/cgroups.md for the files written per version and the shares -> weight formula.
"""

from __future__ import annotations

import errno
import logging
import os
import re

from broker.cgroup_detect import (
    DEFAULT_CONTROLLERS,
    CgroupError,
    Detected,
    Version,
    errname,
    read_proc,
)
from protocol.structs import dataclass

__all__ = [
    "DEFAULT_CONTROLLERS",
    "CgroupError",
    "CgroupHandle",
    "CgroupLayout",
    "CgroupUsage",
    "CommandGroup",
    "InstanceGroup",
    "LeafWork",
    "Version",
    "WrongGroup",
    "classify_group",
    "detect",
    "instance_group",
    "shares_to_weight",
]

log = logging.getLogger(__name__)

# The `memory-limit` default (1.4): "no limit". Written as-is on v1, as `max` on v2.
UNLIMITED_BYTES = 0x7FFFFFFFFFFFFFFF
DEFAULT_CPU_SHARES = 1024
# On cgroup2 the broker cannot live in `<cgroup-name>` itself (a group with processes
# cannot pass controllers to its children), so T-6 puts it in this leaf instead.
BROKER_LEAF = "lithos_tree.scope"

_INSTANCE_RE = re.compile(r"^([\w-]+):([\w-]+\.\d+)\.scope$")  # T-12b
_COMMAND_RE = re.compile(r"^([\w-]+):cmd\.[\w-]+\.(\d+)\.scope$")


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """`web:app.0.scope`: the group of instance `web/app.0`."""

    instance: str


@dataclass(frozen=True, slots=True)
class CommandGroup:
    """`web:cmd.shell.4121.scope`: the group of a lithos_cmd run by pid 4121."""

    sandbox: str
    pid: int


@dataclass(frozen=True, slots=True)
class WrongGroup:
    """Any other directory: the original logs `Skipping wrong group` and keeps it."""

    dirname: str


def classify_group(dirname: str) -> InstanceGroup | CommandGroup | WrongGroup:
    """Parse a directory under `<cgroup-name>` with the T-12b regexes."""
    if m := _COMMAND_RE.match(dirname):
        return CommandGroup(m.group(1), int(m.group(2)))
    if m := _INSTANCE_RE.match(dirname):
        return InstanceGroup(f"{m.group(1)}/{m.group(2)}")
    return WrongGroup(dirname)


def instance_group(cgroup_name: str, instance: str) -> str:
    """`lithos.slice` + `web/app.0` -> `lithos.slice/web:app.0.scope` (T-51)."""
    return f"{cgroup_name}/{instance.replace('/', ':')}.scope"


def shares_to_weight(shares: int) -> int:
    """v1 `cpu.shares` -> v2 `cpu.weight`, systemd's linear map (1024 -> 100).

    weight = clamp(shares * 100 // 1024, 1, 10000). The default maps to the default,
    so an instance with the default cpu-shares competes equally with everything
    else on the host (runc's 1 + (shares - 2) * 9999 // 262142 maps 1024 to 39).
    Ratios between groups are kept (up to rounding down) for shares 11..102400.
    """
    return max(1, min(10000, shares * 100 // DEFAULT_CPU_SHARES))


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    """What lithos_ps shows; None when the controller is not in cgroup-controllers."""

    memory_bytes: int | None
    cpu_ns: int | None


@dataclass(frozen=True, slots=True)
class LeafWork:
    """A new group's work left to its knot (K-20, knot.plan's mkdir and write ops): the
    dirs to make, then the files to write in order, as (path, value, config key)."""

    dirs: tuple[str, ...]
    writes: tuple[tuple[str, str, str], ...]


def _check_group(group: str) -> None:
    parts = group.split("/")
    if group.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CgroupError(f"cgroup {group!r}: must be a relative path without '.' or '..'")


class CgroupLayout:
    """The detected hierarchies; creates and finds groups in all of them at once."""

    def __init__(self, detected: Detected) -> None:
        self.detected = detected
        # parents prepare() made (and, on v2, enabled): they stay, since the broker
        # lives in `<cgroup-name>` (v2: in its leaf, T-6), so neither can be removed
        self._parents: set[str] = set()

    @property
    def version(self) -> Version:
        return self.detected.version

    def handle(self, group: str) -> CgroupHandle:
        """The group `group` (relative to pid 1's group), without creating it."""
        _check_group(group)
        return CgroupHandle(self, group)

    def create(self, group: str) -> CgroupHandle:
        """mkdir `group` in every hierarchy (parents too); an existing group is reused."""
        handle = self.handle(group)
        for hierarchy in self.detected.hierarchies:
            current = hierarchy.base_dir
            for part in group.split("/"):
                if self.version is Version.V2:
                    self._enable_subtree(group, current)
                parent, current = current, os.path.join(current, part)
                try:
                    os.mkdir(current)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise CgroupError(f"cgroup {group}: mkdir {current}: {errname(e)}") from e
                if "cpuset" in hierarchy.controllers:
                    _inherit_cpuset(group, parent, current)
        return handle

    def prepare(
        self, group: str, memory_limit_bytes: int | None, cpu_shares: int | None
    ) -> tuple[CgroupHandle, LeafWork | None]:
        """The parents of `group` made here; a new leaf left to the knot (LeafWork).

        A leaf that exists in any hierarchy (a reused name) is made and limited here,
        as create() and set_limits() do (None): set_limits orders memsw by the current
        limit. A new group is unlimited, so its limit goes before its memsw, and only
        values other than a new group's own are written.

        Raises:
            CgroupError: a parent could not be made, or a cpuset parent read.
        """
        handle = self.handle(group)
        parent = os.path.dirname(group)
        dirs = handle.dirs
        if not parent or any(os.path.lexists(d) for d in dirs):
            self.create(group)
            handle.set_limits(memory_limit_bytes, cpu_shares)
            return handle, None
        if parent not in self._parents:
            self.create(parent)
            if self.version is Version.V2:
                for hierarchy in self.detected.hierarchies:
                    self._enable_subtree(group, os.path.join(hierarchy.base_dir, parent))
            self._parents.add(parent)
        writes: list[tuple[str, str, str]] = []
        for hierarchy, leaf_dir in zip(self.detected.hierarchies, dirs, strict=True):
            if "cpuset" in hierarchy.controllers:  # see _inherit_cpuset
                for name in ("cpuset.cpus", "cpuset.mems"):
                    value = _read(group, os.path.join(os.path.dirname(leaf_dir), name)).strip()
                    if value:
                        writes.append((os.path.join(leaf_dir, name), value, ""))
        writes += handle.new_limits(memory_limit_bytes, cpu_shares)
        return handle, LeafWork(dirs, tuple(writes))

    def _enable_subtree(self, group: str, parent_dir: str) -> None:
        # cgroup2: a controller's files appear in a group only when its parent lists
        # the controller in cgroup.subtree_control; write only the missing ones, since
        # a write can fail with EBUSY on a group that holds processes.
        if not self.detected.v2_enable:
            return
        path = os.path.join(parent_dir, "cgroup.subtree_control")
        enabled = set(_read(group, path).split())
        missing = [c for c in self.detected.v2_enable if c not in enabled]
        if missing:
            _write(group, path, " ".join(f"+{c}" for c in missing))

    def enter(self, cgroup_name: str, pid: int) -> CgroupHandle:
        """T-6: move the broker (`pid`) into `<cgroup-name>` (v2: into its leaf)."""
        group = cgroup_name if self.version is Version.V1 else f"{cgroup_name}/{BROKER_LEAF}"
        handle = self.create(group)
        handle.add(pid)
        return handle

    def list_groups(self, cgroup_name: str) -> list[str]:
        """Names of the groups under `<cgroup-name>` in any hierarchy (T-12b), sorted."""
        _check_group(cgroup_name)
        names: set[str] = set()
        for hierarchy in self.detected.hierarchies:
            top = os.path.join(hierarchy.base_dir, cgroup_name)
            try:
                entries = list(os.scandir(top))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CgroupError(f"cgroup {cgroup_name}: listing {top}: {errname(e)}") from e
            names.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
        names.discard(BROKER_LEAF)
        return sorted(names)


class CgroupHandle:
    """One group, `lithos.slice/web:app.0.scope`, in every hierarchy of a layout."""

    def __init__(self, layout: CgroupLayout, group: str) -> None:
        self.layout = layout
        self.group = group

    def __repr__(self) -> str:
        return f"CgroupHandle({self.group!r})"

    @property
    def dirs(self) -> tuple[str, ...]:
        return tuple(os.path.join(h.base_dir, self.group) for h in self.layout.detected.hierarchies)

    def _dir(self, controller: str) -> str | None:
        hierarchy = self.layout.detected.by_controller.get(controller)
        return None if hierarchy is None else os.path.join(hierarchy.base_dir, self.group)

    def set_limits(self, memory_limit_bytes: int | None, cpu_shares: int | None) -> None:
        """Write `memory-limit` and `cpu-shares`; None leaves a limit untouched.

        Raises:
            CgroupError: naming every file that could not be written.
        """
        errors: list[str] = []
        memory_dir, cpu_dir = self._dir("memory"), self._dir("cpu")
        if memory_limit_bytes is not None:
            if memory_dir is None:
                if memory_limit_bytes < UNLIMITED_BYTES:
                    log.warning(
                        "cgroup %s: memory-limit %d not applied: memory is not in "
                        "cgroup-controllers",
                        self.group,
                        memory_limit_bytes,
                    )
            elif self.layout.version is Version.V1:
                self._memory_v1(memory_dir, memory_limit_bytes, errors)
            else:
                self._memory_v2(memory_dir, memory_limit_bytes, errors)
        if cpu_shares is not None:
            if cpu_dir is None:
                if cpu_shares != DEFAULT_CPU_SHARES:
                    log.warning(
                        "cgroup %s: cpu-shares %d not applied: cpu is not in cgroup-controllers",
                        self.group,
                        cpu_shares,
                    )
            elif self.layout.version is Version.V1:
                _try(errors, self.group, os.path.join(cpu_dir, "cpu.shares"), str(cpu_shares))
            else:
                weight = str(shares_to_weight(cpu_shares))
                _try(errors, self.group, os.path.join(cpu_dir, "cpu.weight"), weight)
        if errors:
            raise CgroupError("; ".join(errors))

    def new_limits(
        self, memory_limit_bytes: int | None, cpu_shares: int | None
    ) -> list[tuple[str, str, str]]:
        """set_limits' files for a new group, as (path, value, config key), in order.

        A new group is unlimited with the default shares: only other values are
        written, and memsw after the limit (memsw >= limit at every moment).
        """
        writes: list[tuple[str, str, str]] = []
        memory_dir, cpu_dir = self._dir("memory"), self._dir("cpu")
        v1 = self.layout.version is Version.V1
        limit = memory_limit_bytes
        if limit is not None and limit < UNLIMITED_BYTES:
            if memory_dir is None:
                log.warning(
                    "cgroup %s: memory-limit %d not applied: memory is not in "
                    "cgroup-controllers",
                    self.group,
                    limit,
                )
            else:
                # the files exist in the new group as in its parent (same hierarchy)
                parent = os.path.dirname(memory_dir)
                name, extra, value = (
                    ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", str(limit))
                    if v1
                    else ("memory.max", "memory.swap.max", "0")
                )
                writes.append((os.path.join(memory_dir, name), str(limit), "memory-limit"))
                if os.path.exists(os.path.join(parent, extra)):
                    writes.append((os.path.join(memory_dir, extra), value, "memory-limit"))
        if cpu_shares is not None and cpu_shares != DEFAULT_CPU_SHARES:
            if cpu_dir is None:
                log.warning(
                    "cgroup %s: cpu-shares %d not applied: cpu is not in cgroup-controllers",
                    self.group,
                    cpu_shares,
                )
            elif v1:
                writes.append((os.path.join(cpu_dir, "cpu.shares"), str(cpu_shares), "cpu-shares"))
            elif (weight := shares_to_weight(cpu_shares)) != 100:  # a new group's weight
                writes.append((os.path.join(cpu_dir, "cpu.weight"), str(weight), "cpu-shares"))
        return writes

    def _memory_v1(self, memory_dir: str, limit: int, errors: list[str]) -> None:
        limit_path = os.path.join(memory_dir, "memory.limit_in_bytes")
        memsw_path = os.path.join(memory_dir, "memory.memsw.limit_in_bytes")
        files = [limit_path]
        # memsw (memory + swap) exists only with swap accounting. The kernel demands
        # memsw >= limit at every moment, so raising a reused group's limit must
        # write memsw first, and lowering it must write limit first.
        if os.path.exists(memsw_path):
            try:
                current = int(_read(self.group, limit_path))
            except (CgroupError, ValueError):
                current = UNLIMITED_BYTES
            files = [memsw_path, limit_path] if limit > current else [limit_path, memsw_path]
        for path in files:
            _try(errors, self.group, path, str(limit))

    def _memory_v2(self, memory_dir: str, limit: int, errors: list[str]) -> None:
        unlimited = limit >= UNLIMITED_BYTES
        _try(
            errors,
            self.group,
            os.path.join(memory_dir, "memory.max"),
            "max" if unlimited else str(limit),
        )
        # v1's memsw = limit means "no room gained by swapping" (the manual: "kill
        # processes earlier instead of swapping out"); v2 counts swap alone, so 0.
        swap_path = os.path.join(memory_dir, "memory.swap.max")
        if os.path.exists(swap_path):
            _try(errors, self.group, swap_path, "max" if unlimited else "0")

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The group's cgroup.procs in every hierarchy (a knot joins them itself, T-51)."""
        return tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group in every hierarchy."""
        for path in self.procs_files:
            _write(self.group, path, str(pid))

    def pids(self) -> list[int]:
        """The processes in the group, in any hierarchy, sorted; [] if it is gone."""
        found: set[int] = set()
        for d in self.dirs:
            found.update(_procs(d))
        return sorted(found)

    def usage(self) -> CgroupUsage:
        """Memory in use and CPU time consumed so far, for lithos_ps."""
        memory: int | None = None
        cpu_ns: int | None = None
        v1 = self.layout.version is Version.V1
        if (memory_dir := self._dir("memory")) is not None:
            name = "memory.usage_in_bytes" if v1 else "memory.current"
            memory = int(_read(self.group, os.path.join(memory_dir, name)))
        if v1 and (cpu_dir := self._dir("cpuacct")) is not None:
            cpu_ns = int(_read(self.group, os.path.join(cpu_dir, "cpuacct.usage")))
        elif not v1:
            stat = _read(self.group, os.path.join(self.dirs[0], "cpu.stat"))
            fields = dict(line.split() for line in stat.splitlines() if line.strip())
            cpu_ns = int(fields["usage_usec"]) * 1000
        return CgroupUsage(memory, cpu_ns)

    def remove(self) -> None:
        """rmdir the group in every hierarchy; one already gone is fine.

        Raises:
            CgroupError: for every directory left, with the pids still inside.
        """
        # One line per distinct failure, listing the hierarchies it happened in.
        failures: dict[str, list[str]] = {}
        for hierarchy, d in zip(self.layout.detected.hierarchies, self.dirs, strict=True):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                pids = " ".join(str(p) for p in _procs(d)) or "none"
                failures.setdefault(f"{errname(e)} (processes {pids})", []).append(
                    hierarchy.base_dir
                )
        if failures:
            raise CgroupError(
                "; ".join(
                    f"cgroup {self.group}: rmdir: {what} in {', '.join(where)}"
                    for what, where in failures.items()
                )
            )


def detect(controllers: tuple[str, ...] | list[str] = (), proc_dir: str = "/proc") -> CgroupLayout:
    """Find the hierarchies of `controllers` (empty: the default five) from `proc_dir`.

    Raises:
        CgroupError: `CGroup <c> not mounted` and the like.
    """
    return CgroupLayout(read_proc(controllers, proc_dir))


def _read(group: str, path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"cgroup {group}: reading {path}: {errname(e)}") from e


def _write(group: str, path: str, value: str) -> None:
    # No O_CREAT: every cgroup file exists already; a missing one is an error to report.
    # O_TRUNC is ignored by cgroupfs but keeps plain-file test trees readable.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"cgroup {group}: writing {path} = {value}: {errname(e)}") from e


def _inherit_cpuset(group: str, parent: str, child: str) -> None:
    # v1 cpuset: a new group starts with empty cpuset.cpus and cpuset.mems, and adding
    # a process to it fails with ENOSPC; copy the parent's, as cgroup2 does implicitly.
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(group, os.path.join(child, name)).strip():
            _write(
                group, os.path.join(child, name), _read(group, os.path.join(parent, name)).strip()
            )


def _try(errors: list[str], group: str, path: str, value: str) -> None:
    try:
        _write(group, path, value)
    except CgroupError as e:
        errors.append(str(e))


def _procs(group_dir: str) -> list[int]:
    try:
        with open(os.path.join(group_dir, "cgroup.procs")) as f:
            return [int(line) for line in f.read().split()]
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV):
            return []
        raise
