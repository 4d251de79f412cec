"""The container's setup as data: KnotSpec -> an ordered list of primitive ops.

Owns the order of the setup (K-5..K-23, K-52) and the wording of its error lines,
and the Python executor of the ops. build() does the host-side work itself (the
state dir, resolv.conf and hosts, volume source dirs, the inside-the-image checks,
secrets: knot.setup) and turns everything that must happen inside the container's
new mount namespace into ops: mounts, stat/lstat checks, pivot_root, umount2,
setrlimit. The ops run in knot/init.c (the native pid 1, spawned with posix_spawn:
knot.spawn) or in execute() below (a knot that stays Python): one plan, two small
interpreters, so the two can never drift in what they mount.

Each op carries the step's label and config key; a failing op becomes ONE line,
`<label>: <detail> (<key> in <container config>)` (no parenthesis when the key is
empty), as knot.main.step always wrote it. A host-side step that fails ends the plan
with a `fail` op holding its line at the place where it failed, so what ran before it
(and may fail first) still runs first. Rules: build() never raises for a bad
container (only the fail op); execute() never returns on failure (fail() exits 78).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Callable

from knot import linux, setup
from knot.linux import (
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)
from knot.spec import KnotSpec, Volume, VolumeKind
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, TypeVar
    T = TypeVar("T")


# op name -> its arguments (strings; "" is NULL for mount's source, fstype and data):
#   fail        detail                      the step's line, decided on the host
#   mount       source target fstype flags data
#   stat        path                        must exist (stat, follows symlinks)
#   check       path how detail skip        how: dir|reg (lstat; ENOENT: no) or isdir
#                                           (stat; any error: no). No: fail with detail,
#                                           or (detail "") skip the next `skip` ops
#   chdir       path
#   pivot_root  new_root put_old
#   umount2     target flags
#   rlimit      limit                       RLIMIT_NOFILE, soft = hard
#   join        path                        write "0" (ourselves) to a cgroup.procs file;
#                                           a failure is a warning line, not the end
#   mkdir       path                        a new cgroup's dir, mode 0755 (EEXIST is fine)
#   write       path value                  a new cgroup's file (O_WRONLY|O_TRUNC); a
#                                           failure is a warning line `<path> = <value>: ..`
ARGS = {"fail": 1, "mount": 5, "stat": 1, "check": 4, "chdir": 1, "pivot_root": 2,
        "umount2": 2, "rlimit": 1, "join": 1, "mkdir": 1, "write": 2}
JOIN_LABEL = "joining cgroup"
MKDIR_LABEL = "creating cgroup dir"    # K-20: `Error creating cgroup dir "<p>": <e>`
WRITE_LABEL = "setting cgroup limit"   # K-20: logged, the setup goes on
WARN_OPS = ("join", "write")           # a failure is a warning line, not the end
CHECKS = ("dir", "reg", "isdir")


@dataclass(frozen=True, slots=True)
class Op:
    """One step of the knot's setup plan; `label` and `key` word its error line."""

    op: str
    label: str
    key: str
    args: tuple[str, ...]


def error_line(label: str, key: str, detail: str, container_config: str) -> str:
    """The one line a failing step prints (after `knot[NAME]: `)."""
    where = f" ({key} in {container_config})" if key else ""
    return f"{label}: {detail}{where}"


def os_detail(e: OSError) -> str:
    """`<path>: ENOENT (No such file or directory)`, as init.c words it too."""
    path = f"{e.filename}: " if e.filename else ""
    return f"{path}{errno.errorcode.get(e.errno or 0, str(e.errno))} ({e.strerror})"


class _Failed(Exception):
    """A host-side step failed: the plan ends with its fail op."""


def _mount(label: str, key: str, source: str | None, target: str, fstype: str | None,
           flags: int, data: str = "") -> Op:
    return Op("mount", label, key, (source or "", target, fstype or "", str(flags), data))


def _bind(label: str, key: str, source: str, target: str, *, recursive: bool = True,
          remount_flags: int = 0) -> list[Op]:
    """Bind source on target, then remount the top with remount_flags if any."""
    ops = [Op("stat", label, key, (source,)),  # a missing source is named as such
           Op("stat", label, key, (target,)),
           _mount(label, key, source, target, None, MS_BIND | (MS_REC if recursive else 0))]
    if remount_flags:
        ops.append(_mount(label, key, None, target, None, MS_BIND | MS_REMOUNT | remount_flags))
    return ops


def _dev(spec: KnotSpec) -> list[Op]:
    """K-16 1..4: /dev (read-only devfs-dir + a new devpts), /sys, /proc."""
    label, key, mnt = "mount /dev, /sys, /proc", "devfs-dir", spec.mount_dir
    ops = _bind(label, key, spec.devfs_dir, setup.inside(mnt, "/dev"), remount_flags=MS_RDONLY)
    # newinstance: the container's ptys are its own; ptmxmode=0666 lets the
    # service's user open /dev/ptmx (a symlink to pts/ptmx made by lithos_mkdev).
    ops.append(_mount(label, key, "devpts", setup.inside(mnt, "/dev/pts"), "devpts",
                      MS_NOSUID | MS_NOEXEC | MS_NOATIME, "newinstance,ptmxmode=0666"))
    ops.append(_mount(label, key, "sysfs", setup.inside(mnt, "/sys"), "sysfs",
                      MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_NOATIME | MS_RDONLY))
    # The knot is pid 1 of a new pid namespace: this proc shows that namespace.
    ops.append(_mount(label, key, "proc", setup.inside(mnt, "/proc"), "proc",
                      MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_NOATIME))
    return ops


def _volume(spec: KnotSpec, vol: Volume, label: str, key: str) -> list[Op]:
    """K-16 5: one volume (flags in knot.setup's docstring). V-2: no mkdir of targets.

    Host-side (may raise): the inside-the-image check, the source dirs.
    """
    setup.check_inside(spec.image_root, spec.mount_dir, vol.target)
    target = setup.inside(spec.mount_dir, vol.target)
    match vol.kind:
        case VolumeKind.READONLY:
            assert vol.source is not None
            return _bind(label, key, vol.source, target,
                         remount_flags=MS_RDONLY | MS_NOSUID | MS_NODEV)
        case VolumeKind.PERSISTENT:
            assert vol.source is not None
            if vol.mkdir and not os.path.lexists(vol.source):
                setup.prepare_dir(vol.source, vol.mode, vol.user, vol.group)  # E-28
            return _bind(label, key, vol.source, target, remount_flags=MS_NOSUID | MS_NODEV)
        case VolumeKind.STATEDIR:
            assert vol.source is not None
            setup.prepare_dir(vol.source, vol.mode, vol.user, vol.group)
            return _bind(label, key, vol.source, target, remount_flags=MS_NOSUID | MS_NODEV)
        case VolumeKind.TMPFS:
            return [Op("stat", label, key, (target,)),
                    _mount(label, key, "tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
                           f"size={vol.size_bytes},mode=0{vol.mode:o}")]


def _etc_file(spec: KnotSpec, generated: str | None, name: str, mount: bool | None,
              label: str, key: str) -> list[Op]:
    """K-17/K-18: bind a generated file over /etc/<name> when asked or when it fits.

    mount false: skip. Otherwise /etc must be a real dir and /etc/<name> a regular
    file (lstat, so a symlink does not count); if not, mount true is an error and
    mount null skips. Unlike the original, null also skips when nothing was
    generated (the original failed on the missing source).
    """
    if mount is False or (generated is None and not mount):
        return []
    etc = setup.inside(spec.mount_dir, "/etc")
    target = os.path.join(etc, name)
    invalid = "" if not mount else (f"/etc/{name} is not a valid mount point "
                                    "(it must be a regular file, not a symlink, in the image)")
    if generated is None:  # and mount is true: an error either way
        then = [Op("fail", label, key, ("mount is true but nothing was generated (copy-from-"
                                        "host, localhost and public-hostname are all false)",))]
    else:
        then = _bind(label, key, generated, target, recursive=False)
    return [Op("check", label, key, (etc, "dir", invalid, str(len(then) + 1))),
            Op("check", label, key, (target, "reg", invalid, str(len(then)))), *then]


def _pivot(mount_dir: str) -> list[Op]:
    """K-52: mount_dir becomes /; the old root is stacked on /tmp, then detached.

    The image must have /tmp (a !Tmpfs there is fine: the old root goes on top of it).
    """
    label, key = "pivot_root", "image"
    put_old = setup.inside(mount_dir, "/tmp")
    return [Op("check", label, key, (put_old, "isdir", f"{put_old}: missing (the image must "
                                     "have a /tmp directory: pivot_root puts the old root "
                                     "there)", "0")),
            Op("chdir", label, key, (mount_dir,)),
            Op("pivot_root", label, key, (mount_dir, put_old)),
            Op("chdir", label, key, ("/",)),
            Op("umount2", label, key, ("/tmp", str(MNT_DETACH)))]


def build(spec: KnotSpec) -> tuple[list[Op], dict[str, str]]:
    """The ops that set up spec's container, and the service's environment (E-21).

    Does the host-side steps now (knot.setup). When one fails, the ops end with a
    fail op holding its line (and the environment is empty: nothing will use it).
    """
    ops: list[Op] = []

    def host(label: str, key: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except OSError as e:
            detail = os_detail(e)
        except setup.SetupError as e:
            detail = str(e)
        ops.append(Op("fail", label, key, (detail,)))
        raise _Failed

    mnt = spec.mount_dir
    # T-51: into its cgroup before anything else (the service is forked after the ops).
    # The knot joins itself, so the spawner (the broker) does not wait on the kernel's
    # cgroup migration (on cgroup v1 about 1 ms of RCU grace period per hierarchy).
    # K-20: a new group is made and limited by the knot too (off the broker's serial
    # path); the broker made its parents, and decides the files and their order.
    ops += [Op("mkdir", MKDIR_LABEL, "", (path,)) for path in spec.cgroup_dirs]
    ops += [Op("write", WRITE_LABEL, w.key, (w.path, w.value)) for w in spec.cgroup_writes]
    ops += [Op("join", JOIN_LABEL, "", (path,)) for path in spec.cgroup_procs]
    try:
        ops.append(_mount("make / private", "", None, "/", None, MS_REC | MS_PRIVATE))
        ops += _bind("bind image read-only", "image", spec.image_root, mnt,
                     remount_flags=MS_RDONLY)  # K-7
        host("state dir", "state-dir", setup.make_state_dir, spec.state_dir)
        resolv = host("error preparing resolv.conf", "resolv-conf", setup.write_resolv_conf,
                      spec.resolv_conf, spec.state_dir)
        hosts = host("error preparing hosts", "hosts-file", setup.write_hosts,
                     spec.hosts_file, spec.state_dir)
        ops += _dev(spec)
        for vol in spec.volumes:
            label, key = f"mount {vol.kind.value} volume", f'volumes: "{vol.target}"'
            ops += host(label, key, _volume, spec, vol, label, key)
        ops += _etc_file(spec, os.path.join(spec.state_dir, "resolv.conf") if resolv else None,
                         "resolv.conf", spec.resolv_conf.mount, "mount /etc/resolv.conf",
                         "resolv-conf")
        ops += _etc_file(spec, os.path.join(spec.state_dir, "hosts") if hosts else None,
                         "hosts", spec.hosts_file.mount, "mount /etc/hosts", "hosts-file")
        secrets: dict[str, str] = {}
        if spec.secrets is not None:
            secrets = host("decrypt secrets", "secret-environ", setup.decrypt_secrets, spec)
    except _Failed:
        return ops, {}
    ops.append(Op("rlimit", "set limits", "fileno-limit", (str(spec.fileno_limit),)))
    ops += _pivot(mnt)
    return ops, setup.build_environ(spec, secrets)


def failed(label: str, detail: str) -> list[Op]:
    """A plan that only fails: for an error of the spawner itself while building one."""
    return [Op("fail", label, "", (detail,))]


# --- the Python executor (a knot that stays Python: no native pid 1) ---------

def _setrlimit(limit: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except ValueError as e:  # CPython's words for EPERM and EINVAL
        code = errno.EPERM if "not allowed" in str(e) else errno.EINVAL
        raise OSError(code, os.strerror(code)) from None


def _check(path: str, how: str) -> bool:
    if how == "isdir":
        return os.path.isdir(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(mode) if how == "dir" else stat.S_ISREG(mode)


def _join(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:  # named as init.c names it
        raise OSError(e.errno, e.strerror, f"{path} = {value}") from None


def _run(op: Op) -> int:
    """Runs one op other than fail; returns how many of the next ops to skip."""
    a = op.args
    match op.op:
        case "mount":
            linux.mount(a[0] or None, a[1], a[2] or None, int(a[3]), a[4] or None)
        case "stat":
            os.stat(a[0])
        case "check":
            if not _check(a[0], a[1]):
                if a[2]:
                    raise setup.SetupError(a[2])
                return int(a[3])
        case "chdir":
            os.chdir(a[0])
        case "pivot_root":
            linux.pivot_root(a[0], a[1])
        case "umount2":
            linux.umount2(a[0], int(a[1]))
        case "rlimit":
            _setrlimit(int(a[0]))
        case "join":
            _join(a[0])
        case "mkdir":
            _mkdir(a[0])
        case "write":
            _write(a[0], a[1])
        case _:
            raise setup.SetupError(f"unknown op {op.op!r}")
    return 0


def execute(ops: list[Op] | tuple[Op, ...], container_config: str,
            fail: Callable[[str], NoReturn], warn: Callable[[str], None]) -> None:
    """Runs the ops in order, as init.c does; a failing op calls fail(its line), a
    failing join or write warn(its line) (the knot runs on, outside that cgroup or
    without that limit)."""
    i = 0
    while i < len(ops):
        op = ops[i]
        i += 1
        if op.op == "fail":
            fail(error_line(op.label, op.key, op.args[0], container_config))
        try:
            i += _run(op)
        except OSError as e:
            if op.op in WARN_OPS:
                warn(error_line(op.label, op.key, os_detail(e), container_config))
                continue
            fail(error_line(op.label, op.key, os_detail(e), container_config))
        except setup.SetupError as e:
            fail(error_line(op.label, op.key, str(e), container_config))
