"""Where the cgroup hierarchies are: parsing /proc, deciding v1 or v2.

Owns the detection half of the cgroup facility (K-20, 1.1 `cgroup-controllers`):
reading `<proc>/self/mountinfo`, `<proc>/1/cgroup` and `<proc>/self/cgroup` and
turning them into a `Detected` value: the version and, per controller, the
directory of pid 1's group in the hierarchy that carries it.

Rules:
- Detected, never configured: a process line other than `0::` means cgroup v1 (a
  "hybrid" host with an empty cgroup2 beside its v1 controllers is v1).
- The parsers are pure (text in, values out); only `read_proc` and `v2_available`
  touch the filesystem, and only to read. Creating groups is `broker/cgroups.py`.
- A requested controller that is missing is an error naming it (`CGroup <c> not
  mounted`), as in the original; nothing is silently dropped.
"""

from __future__ import annotations

import enum
import errno
import os
import re

from protocol.structs import dataclass

# 1.1: `cgroup-controllers: []` means this list.
DEFAULT_CONTROLLERS: tuple[str, ...] = ("name", "cpu", "cpuacct", "memory", "blkio")

# v1 controller names -> the cgroup2 controller that provides the same files, or
# None when cgroup2 gives it without enabling anything: every v2 group is a named
# group ("name") and `cpu.stat` with `usage_usec` is a core file ("cpuacct").
V2_CONTROLLER: dict[str, str | None] = {
    "name": None,
    "cpuacct": None,
    "cpu": "cpu",
    "memory": "memory",
    "blkio": "io",
}


class CgroupError(Exception):
    """A cgroup could not be found, created, written or removed; the text says which."""


class Version(enum.Enum):
    V1 = 1
    V2 = 2


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/<pid>/mountinfo, reduced to what cgroups need."""

    root: str  # the path inside the filesystem that is mounted (4th field)
    mount_point: str
    fstype: str
    super_options: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProcCgroup:
    """One line of /proc/<pid>/cgroup: `hierarchy-id:controller,list:/path`."""

    hierarchy_id: int
    controllers: tuple[str, ...]  # ("cpu", "cpuacct"), ("name=systemd",), () for v2
    path: str


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted hierarchy and the directory of pid 1's group in it."""

    controllers: tuple[str, ...]  # as in /proc/<pid>/cgroup; () for cgroup2
    base_dir: str  # e.g. /sys/fs/cgroup/cpu,cpuacct/ (pid 1's group, K-20)


@dataclass(frozen=True, slots=True)
class Detected:
    """The host's cgroup layout for the controllers the master config asks for."""

    version: Version
    controllers: tuple[str, ...]  # the requested names (1.1 spelling)
    hierarchies: tuple[Hierarchy, ...]  # one per distinct hierarchy, in request order
    by_controller: dict[str, Hierarchy]
    v2_enable: tuple[str, ...]  # cgroup2 controllers to enable in subtree_control


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of a mountinfo text, in order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=fstype,
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str, source: str) -> list[ProcCgroup]:
    """Lines of /proc/<pid>/cgroup. Raises CgroupError naming `source` on a bad line."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("/"):
            raise CgroupError(f"{source}: unexpected line {line!r} (want id:controllers:/path)")
        controllers = tuple(c for c in parts[1].split(",") if c)
        lines.append(ProcCgroup(int(parts[0]), controllers, parts[2]))
    return lines


def _find_line(lines: list[ProcCgroup], controller: str) -> ProcCgroup | None:
    for line in lines:
        if line.hierarchy_id == 0:
            continue
        for c in line.controllers:
            if c == controller or (controller == "name" and c.startswith("name=")):
                return line
    return None


def _base_dir(mount: Mount, path: str, what: str) -> str:
    # The group's path is relative to the hierarchy root; a mount may show only a
    # subtree of it (the 4th mountinfo field), so strip that prefix.
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        raise CgroupError(
            f"{what}: pid 1's group {path} is outside the mount at "
            f"{mount.mount_point} (which shows {mount.root})"
        )
    rest = path[len(root) :].strip("/")
    return os.path.join(mount.mount_point, rest) if rest else mount.mount_point


def _v1_mount(mounts: list[Mount], line: ProcCgroup) -> Mount | None:
    for mount in mounts:
        if mount.fstype == "cgroup" and set(line.controllers) <= mount.super_options:
            return mount
    return None


def resolve_v1(
    mounts: list[Mount], pid1: list[ProcCgroup], own: list[ProcCgroup], controllers: tuple[str, ...]
) -> Detected:
    """Pure: map each requested controller to its v1 hierarchy (K-20 steps 1-3)."""
    by_controller: dict[str, Hierarchy] = {}
    hierarchies: dict[tuple[str, ...], Hierarchy] = {}
    for c in controllers:
        line, own_line = _find_line(pid1, c), _find_line(own, c)
        if line is None or own_line is None:
            raise CgroupError(
                f"CGroup {c} not mounted (not in /proc/1/cgroup and /proc/self/cgroup)"
            )
        if line.controllers != own_line.controllers:
            raise CgroupError(
                f"CGroup {c}: Init process has CGroup hierarchy different from ours "
                f"({','.join(line.controllers)} vs {','.join(own_line.controllers)}), "
                "we can't setup CGroups in any meaningful way in this case"
            )
        if line.controllers not in hierarchies:
            mount = _v1_mount(mounts, line)
            if mount is None:
                raise CgroupError(
                    f"CGroup {c} not mounted (no cgroup mount with {','.join(line.controllers)} "
                    "in /proc/self/mountinfo)"
                )
            hierarchies[line.controllers] = Hierarchy(
                line.controllers, _base_dir(mount, line.path, c)
            )
        by_controller[c] = hierarchies[line.controllers]
    return Detected(Version.V1, controllers, tuple(hierarchies.values()), by_controller, ())


def v2_base(mounts: list[Mount], pid1: list[ProcCgroup]) -> str:
    """Pure: the cgroup2 directory groups are created under.

    K-20 puts groups under pid 1's group. On cgroup2 a group that holds processes
    cannot pass controllers down (the "no internal processes" rule), and systemd
    keeps pid 1 in the leaf `init.scope`; so that one leaf is replaced by its parent.
    """
    line = next((p for p in pid1 if p.hierarchy_id == 0), None)
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if line is None or mount is None:
        raise CgroupError("cgroup2 not mounted (no 0:: line in /proc/1/cgroup or no cgroup2 mount)")
    path = line.path
    if path.rstrip("/").endswith("/init.scope"):
        path = path.rstrip("/")[: -len("/init.scope")] or "/"
    return _base_dir(mount, path, "cgroup2")


def resolve_v2(base_dir: str, available: frozenset[str], controllers: tuple[str, ...]) -> Detected:
    """Pure: check each requested controller against `base_dir/cgroup.controllers`."""
    enable: list[str] = []
    for c in controllers:
        v2 = V2_CONTROLLER.get(c, c)
        if v2 is None:
            continue
        if v2 not in available:
            raise CgroupError(
                f"CGroup {c} not mounted ({v2!r} is not in {base_dir}/cgroup.controllers: "
                f"{' '.join(sorted(available)) or 'empty'})"
            )
        if v2 not in enable:
            enable.append(v2)
    hierarchy = Hierarchy((), base_dir)
    return Detected(
        Version.V2, controllers, (hierarchy,), dict.fromkeys(controllers, hierarchy), tuple(enable)
    )


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"reading {path}: {errname(e)}") from e


def errname(e: OSError) -> str:
    """`EINVAL` for an OSError, as STYLE P8 asks (never the message text)."""
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def read_proc(controllers: tuple[str, ...] | list[str] = (), proc_dir: str = "/proc") -> Detected:
    """Detect the layout from `proc_dir`; an empty `controllers` means the default five."""
    wanted = tuple(controllers) or DEFAULT_CONTROLLERS
    mounts = parse_mountinfo(_read(f"{proc_dir}/self/mountinfo"))
    pid1 = parse_proc_cgroup(_read(f"{proc_dir}/1/cgroup"), f"{proc_dir}/1/cgroup")
    own = parse_proc_cgroup(_read(f"{proc_dir}/self/cgroup"), f"{proc_dir}/self/cgroup")
    if any(line.hierarchy_id != 0 for line in own):
        return resolve_v1(mounts, pid1, own, wanted)
    base = v2_base(mounts, pid1)
    available = frozenset(_read(os.path.join(base, "cgroup.controllers")).split())
    return resolve_v2(base, available, wanted)
