"""The filesystem of one container: each function is one setup step of the knot.

Owns every mount the knot makes, the state dir, the generated resolv.conf and
hosts, and pivot_root. Rules: a function does one step and raises OSError (with
the path) or SetupError; it never prints and never exits (main.step does). It
decides nothing that the spec already decided. All of it runs in the knot's own
mount namespace, after / was made private, so nothing here is seen by the host.

Mount flags (K-16, §1.4.1), with our deliberate additions:
  image root       bind, rec, then ro                          (K-7)
  /dev             bind of devfs-dir, rec, then ro; devpts newinstance,ptmxmode=0666
  /sys, /proc      sysfs ro,nosuid,noexec,nodev; proc nosuid,noexec,nodev
  !Readonly        bind rec, then ro,nosuid,nodev  (original: ro only; docs: +noexec)
  !Persistent      bind rec, then nosuid,nodev     (original: no flags; docs: +noexec)
  !Statedir        bind, then nosuid,nodev
  !Tmpfs           tmpfs nosuid,nodev size=,mode=  (as the original)
We add nosuid,nodev (what the manual promises) but not noexec: images commonly
run scripts from their volumes and the original never set noexec. The remount
only changes the top mount; submounts keep their own flags (as the manual notes
for readonly-paths).
"""

from __future__ import annotations

import os
import stat

from knot import linux
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
from knot.spec import HostsFile, ResolvConf, Volume, VolumeKind


class SetupError(Exception):
    """A setup step failed for a reason that is not an errno."""


def inside(mount_dir: str, path: str) -> str:
    """The host path of `path` inside the container being assembled at mount_dir."""
    return mount_dir.rstrip("/") + "/" + path.lstrip("/")


def make_root_private() -> None:
    # MS_REC|MS_PRIVATE first: otherwise our mounts would propagate to the host
    # through a shared /, and pivot_root(2) fails with EINVAL under a shared mount.
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)


def bind(source: str, target: str, *, recursive: bool = True, remount_flags: int = 0) -> None:
    """Bind source on target, then remount the top with remount_flags if any."""
    os.stat(source)  # so that a missing source is named as such, not as the target
    os.stat(target)
    linux.mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if remount_flags:
        linux.mount(None, target, None, MS_BIND | MS_REMOUNT | remount_flags)


def bind_image(image_root: str, mount_dir: str) -> None:
    """K-7: the image, read-only, becomes the future root."""
    bind(image_root, mount_dir, remount_flags=MS_RDONLY)


def make_state_dir(state_dir: str) -> None:
    """K-13: created 01777 if missing; kept as it is otherwise."""
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir)
        os.chmod(state_dir, 0o1777)


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_resolv_conf(conf: ResolvConf, state_dir: str) -> bool:
    """K-14: copies the sandbox's resolv-conf; returns whether a file was written."""
    if not conf.copy_from_host:
        return False
    _write(os.path.join(state_dir, "resolv.conf"), _read(conf.source), 0o644)
    return True


def hosts_content(hosts: HostsFile) -> bytes | None:
    """K-15: the hosts file's bytes, or None when nothing is to be written."""
    if not (hosts.copy_from_host or hosts.localhost or hosts.public_hostname
            or hosts.additional_hosts):
        return None
    parts: list[bytes] = []
    if hosts.copy_from_host:
        parts.append(_read(hosts.source) + b"\n")
    if hosts.localhost:
        parts.append(b"127.0.0.1 localhost.localdomain localhost\n")
    if hosts.public_hostname:
        import socket  # only here: it costs memory in every knot

        hostname = socket.gethostname()
        try:
            ip = socket.gethostbyname(hostname)
        except OSError as e:
            raise SetupError(f"public-hostname: cannot resolve {hostname!r}: {e}") from None
        parts.append(f"{ip} {hostname}\n".encode())
    for host, ip in sorted(hosts.additional_hosts):
        parts.append(f"{ip} {host}\n".encode())
    return b"".join(parts)


def write_hosts(hosts: HostsFile, state_dir: str) -> bool:
    """K-15: writes <state>/hosts 0644; returns whether a file was written."""
    data = hosts_content(hosts)
    if data is None:
        return False
    _write(os.path.join(state_dir, "hosts"), data, 0o644)
    return True


def mount_dev(devfs_dir: str, mount_dir: str) -> None:
    """K-16 1..4: /dev (read-only devfs-dir + a new devpts), /sys, /proc."""
    bind(devfs_dir, inside(mount_dir, "/dev"), remount_flags=MS_RDONLY)
    # newinstance: the container's ptys are its own; ptmxmode=0666 lets the
    # service's user open /dev/ptmx (a symlink to pts/ptmx made by lithos_mkdev).
    linux.mount("devpts", inside(mount_dir, "/dev/pts"), "devpts",
                MS_NOSUID | MS_NOEXEC | MS_NOATIME, "newinstance,ptmxmode=0666")
    linux.mount("sysfs", inside(mount_dir, "/sys"), "sysfs",
                MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_NOATIME | MS_RDONLY)
    # The knot is pid 1 of a new pid namespace: this proc shows that namespace.
    linux.mount("proc", inside(mount_dir, "/proc"), "proc",
                MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_NOATIME)


def _prepare_dir(path: str, mode: int, user: int, group: int) -> None:
    os.makedirs(path, exist_ok=True)
    os.chown(path, user, group)
    os.chmod(path, mode)


def _check_inside(mount_dir: str, target: str) -> None:
    # Until pivot_root, an absolute symlink in the image resolves against the HOST's
    # root: /data -> /etc would put the volume on the host's /etc (in our namespace)
    # and the container would silently not get it. Refuse instead.
    real = os.path.realpath(target)
    root = os.path.realpath(mount_dir)
    if real != root and not real.startswith(root + "/"):
        raise SetupError(f"{target}: resolves to {real}, outside the container "
                         "(a symlink in the image? mount points must be real directories)")


def mount_volume(vol: Volume, mount_dir: str) -> None:
    """K-16 5: one volume (§1.4.1; flags in the module docstring). V-2: no mkdir of targets."""
    target = inside(mount_dir, vol.target)
    _check_inside(mount_dir, target)
    match vol.kind:
        case VolumeKind.READONLY:
            assert vol.source is not None
            bind(vol.source, target, remount_flags=MS_RDONLY | MS_NOSUID | MS_NODEV)
        case VolumeKind.PERSISTENT:
            assert vol.source is not None
            if vol.mkdir and not os.path.lexists(vol.source):
                _prepare_dir(vol.source, vol.mode, vol.user, vol.group)  # E-28: only if new
            bind(vol.source, target, remount_flags=MS_NOSUID | MS_NODEV)
        case VolumeKind.STATEDIR:
            assert vol.source is not None
            _prepare_dir(vol.source, vol.mode, vol.user, vol.group)
            bind(vol.source, target, remount_flags=MS_NOSUID | MS_NODEV)
        case VolumeKind.TMPFS:
            os.stat(target)
            linux.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
                        f"size={vol.size_bytes},mode=0{vol.mode:o}")


def mount_etc_file(generated: str | None, mount_dir: str, name: str,
                   mount: bool | None) -> None:
    """K-17/K-18: bind a generated file over /etc/<name> when asked or when it fits.

    mount false: skip. Otherwise /etc must be a real dir and /etc/<name> a regular
    file (lstat, so a symlink does not count); if not, mount true is an error and
    mount null skips. Unlike the original, null also skips when nothing was
    generated (the original failed on the missing source).
    """
    if mount is False:
        return
    etc = inside(mount_dir, "/etc")
    target = os.path.join(etc, name)
    try:
        fits = stat.S_ISDIR(os.lstat(etc).st_mode) and stat.S_ISREG(os.lstat(target).st_mode)
    except FileNotFoundError:
        fits = False
    if not fits:
        if mount:
            raise SetupError(f"/etc/{name} is not a valid mount point "
                             "(it must be a regular file, not a symlink, in the image)")
        return
    if generated is None:
        if mount:
            raise SetupError("mount is true but nothing was generated "
                             "(copy-from-host, localhost and public-hostname are all false)")
        return
    bind(generated, target, recursive=False)


def pivot(mount_dir: str) -> None:
    """K-52: mount_dir becomes /; the old root is stacked on /tmp, then detached.

    The image must have /tmp (a !Tmpfs there is fine: the old root goes on top of it).
    """
    put_old = inside(mount_dir, "/tmp")
    if not os.path.isdir(put_old):
        raise SetupError(f"{put_old}: missing (the image must have a /tmp directory: "
                         "pivot_root puts the old root there)")
    os.chdir(mount_dir)
    linux.pivot_root(mount_dir, put_old)
    os.chdir("/")
    linux.umount2("/tmp", MNT_DETACH)
