"""What no live container owns any more, removed at start-up (T-12a, T-12b, E-30, CMD-2).

After recovery (broker/recovery.py) the broker knows every live knot. A state dir
under `<state-dir>/<sandbox>/` or a cgroup under `<cgroup-name>/` that belongs to
none of them was left by a container that ended while no broker ran: the previous
broker was SIGKILLed, the host lost power with a persistent runtime dir, a
`lithos_cmd` was SIGKILLed, a sandbox was deleted. The sweep removes them before
the first request is served, so nothing can start into a leftover meanwhile.

Rules:
- A state dir `<sb>/<proc>.<i>` stays while instance `<sb>/<proc>.<i>` is a live
  child (retired ones are children too); `<sb>/cmd.<name>.<pid>` stays while that
  pid lives (a running lithos_cmd). Any other entry with one of those two names is
  removed (`Dangling state dir "<p>". Deleting...`, as the original), then a
  sandbox dir left empty (`Empty sandbox dir "<p>". Deleting...`).
- Only those names: the original removed every other entry too, but `state-dir`
  may be any absolute path, and a mistyped one must not cost an operator the data
  in it. Other entries are logged (`Skipping unknown entry`) and left, and so is
  everything directly in `<state-dir>` but sandbox dirs (`lost+found` too).
- A dir with a mount point at or under it is left, with an error: nothing of ours
  mounts there on the host, and removing the tree would delete through the mount.
- Cgroups, only with `cgroup-name` set: `<sb>:<proc>.<i>.scope` of no live child
  and `<sb>:cmd.<name>.<pid>.scope` of a dead pid are removed; any other directory
  is logged (`Skipping wrong group "<g>"`) and left. The original also kept the
  groups of configured instances (a 2016 memcg bug); ours go with their container
  at every end (broker/starter.py clean_up), so one without a live knot is a leftover.
- Nothing here raises: a failure is one line naming the path and the errno (and
  the pids still in a group), and start-up goes on.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from broker.cgroups import CgroupError, CgroupLayout, CommandGroup, InstanceGroup, classify_group
from broker.daemon import pid_alive
from broker.starter import remove_state_dir
from protocol.loghandlers import describe_oserror

log = logging.getLogger(__name__)

_NAME = r"[\w-]+"
_SANDBOX_DIR = re.compile(rf"^{_NAME}$")  # not lost+found, on a state-dir of its own
_INSTANCE_DIR = re.compile(rf"^{_NAME}\.\d+$")
_COMMAND_DIR = re.compile(rf"^cmd\.{_NAME}\.(\d+)$")


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point of this mount namespace (field 5, octal escapes decoded)."""
    points = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def sweep_state_dirs(
    state_dir: Path,
    live: Iterable[str],
    *,
    alive: Callable[[int], bool] = pid_alive,
    mounts: Iterable[str] | None = None,
) -> list[Path]:
    """Removes what no live instance or running lithos_cmd owns; returns what it removed."""
    keep = set(live)
    try:
        sandboxes = sorted(os.scandir(state_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as e:
        log.error("Cannot list state dir %s: %s", state_dir, describe_oserror(e))
        return []
    under: list[str] | None = None  # read once, at the first removal
    removed: list[Path] = []
    for sandbox in sandboxes:
        if not sandbox.is_dir(follow_symlinks=False) or not _SANDBOX_DIR.match(sandbox.name):
            continue
        try:
            entries = sorted(os.scandir(sandbox.path), key=lambda e: e.name)
        except OSError as e:
            log.error("Cannot list state dir %s: %s", sandbox.path, describe_oserror(e))
            continue
        left = 0
        for entry in entries:
            owner = _owner(sandbox.name, entry.name, keep, alive)
            if owner is None:
                log.info('Skipping unknown entry "%s" in the state dir', entry.path)
            if owner is not False:
                left += 1
                continue
            path = Path(entry.path)
            log.warning('Dangling state dir "%s". Deleting...', path)
            if under is None:
                under = _mounts_under(state_dir, mount_points() if mounts is None else mounts)
            if _remove(path, under):
                removed.append(path)
            else:
                left += 1
        if left == 0:
            path = Path(sandbox.path)
            log.warning('Empty sandbox dir "%s". Deleting...', path)
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("Removing sandbox dir %s: %s", path, describe_oserror(e))
            else:
                removed.append(path)
    return removed


def _owner(sandbox: str, name: str, keep: set[str], alive: Callable[[int], bool]) -> bool | None:
    """True: a live one's; False: a dangling one of ours; None: not a name of ours."""
    if _INSTANCE_DIR.match(name):
        return f"{sandbox}/{name}" in keep
    if m := _COMMAND_DIR.match(name):
        return alive(int(m.group(1)))
    return None


def _mounts_under(top: Path, mounts: Iterable[str]) -> list[str]:
    prefix = str(top).rstrip("/") + "/"
    return [m for m in mounts if m.startswith(prefix)]


def _remove(path: Path, mounts_under_top: list[str]) -> bool:
    """Removes one entry of a sandbox dir; a dir holding a mount point is left."""
    inside = str(path) + "/"
    held = [m for m in mounts_under_top if m == str(path) or m.startswith(inside)]
    if held:
        log.error('State dir "%s" holds a mount point (%s): left in place', path,
                  ", ".join(held))  # fmt: skip
        return False
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    except OSError as e:
        log.error("Removing state dir %s: %s", path, describe_oserror(e))
        return False
    if stat.S_ISDIR(mode):
        remove_state_dir(path, with_empty_parent=False)  # logs its own failure
        return not os.path.lexists(path)
    try:
        path.unlink()  # a file or a symlink (never followed)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("Removing state dir %s: %s", path, describe_oserror(e))
        return False
    return True


def sweep_cgroups(
    layout: CgroupLayout,
    cgroup_name: str,
    live: Iterable[str],
    *,
    alive: Callable[[int], bool] = pid_alive,
) -> list[str]:
    """Removes the groups under `cgroup_name` of no live knot or lithos_cmd (T-12b)."""
    keep = set(live)
    try:
        names = layout.list_groups(cgroup_name)
    except CgroupError as e:
        log.error("%s", e)
        return []
    removed = []
    for dirname in names:
        kind = classify_group(dirname)
        if isinstance(kind, InstanceGroup):
            dangling = kind.instance not in keep
        elif isinstance(kind, CommandGroup):
            dangling = not alive(kind.pid)
        else:
            log.info('Skipping wrong group "%s/%s"', cgroup_name, dirname)
            continue
        if not dangling:
            continue
        group = f"{cgroup_name}/{dirname}"
        log.warning('Dangling cgroup "%s". Deleting...', group)
        try:
            layout.handle(group).remove()
        except CgroupError as e:
            log.error("Error removing cgroup: %s", e)
            continue
        removed.append(group)
    return removed
