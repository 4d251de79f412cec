"""The host-side steps of a container's setup (knot.plan builds the rest as ops).

Owns what the setup does on the host's filesystem, outside the container's mount
namespace: the state dir, the generated resolv.conf and hosts, the source dirs of
!Persistent and !Statedir volumes, the check that a mount point does not resolve
outside the image, and the decryption of secrets. knot.plan runs these while it
builds the plan (in the spawner, or in an exec'd Python knot); the mounts, checks
inside the new namespace and pivot_root are ops (knot.plan, executed by knot/init.c
or knot.plan.execute). Rules: a function does one step and raises OSError (with
the path) or SetupError; it never prints and never exits. It decides nothing that
the spec already decided.

Mount flags (K-16, §1.4.1), with our deliberate additions (knot.plan):
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

from knot.spec import HostsFile, KnotSpec, ResolvConf


class SetupError(Exception):
    """A setup step failed for a reason that is not an errno."""


def inside(mount_dir: str, path: str) -> str:
    """The host path of `path` inside the container being assembled at mount_dir."""
    return mount_dir.rstrip("/") + "/" + path.lstrip("/")


def make_state_dir(state_dir: str) -> None:
    """K-13: created 01777 if missing; kept as it is otherwise.

    mkdir first (a start's hot path: it is nearly always new), makedirs only when
    a parent is missing; an existing non-directory fails as makedirs would.
    """
    try:
        os.mkdir(state_dir)
    except FileExistsError:
        if os.path.isdir(state_dir):
            return
        raise
    except FileNotFoundError:
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


def prepare_dir(path: str, mode: int, user: int, group: int) -> None:
    """The source dir of a !Statedir (always) or a new !Persistent (E-28) volume."""
    os.makedirs(path, exist_ok=True)
    os.chown(path, user, group)
    os.chmod(path, mode)


def _real_path(path: str) -> str:
    """os.path.realpath(path), in three syscalls when path exists: the kernel resolves
    it (open O_PATH) and names what it found. realpath lstats every component in
    Python, ~4 times slower, and check_inside runs for each volume of every start."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:  # missing (the mount's stat names it later), a loop...: as before
        return os.path.realpath(path)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc here
        return os.path.realpath(path)
    finally:
        os.close(fd)


def check_inside(image_root: str, mount_dir: str, path: str) -> None:
    """Refuses a mount point that resolves outside the image.

    Until pivot_root, an absolute symlink in the image resolves against the HOST's
    root: /data -> /etc would put the volume on the host's /etc (in the container's
    namespace) and the container would silently not get it. Checked against the
    image itself, on the host (a symlink inside an earlier volume is not seen: the
    mount then fails on its target). The error names the path under mount_dir.
    """
    real = _real_path(inside(image_root, path))
    root = _real_path(image_root)
    if real != root and not real.startswith(root + "/"):
        raise SetupError(f"{inside(mount_dir, path)}: resolves to {real}, outside the "
                         "container (a symlink in the image? mount points must be real "
                         "directories)")


def build_environ(spec: KnotSpec, secrets: dict[str, str]) -> dict[str, str]:
    """K-50, E-21: TERM, environ, secrets over environ, then LITHOS_NAME, LITHOS_CONFIG."""
    env = {"TERM": os.environ.get("TERM", "dumb")}
    env.update(spec.environ)
    env.update(secrets)
    env["LITHOS_NAME"] = spec.name
    env["LITHOS_CONFIG"] = spec.config_filename
    return env


def decrypt_secrets(spec: KnotSpec) -> dict[str, str]:
    """K-21, K-24..K-26, through protocol.secrets (imported here: only knots with secrets pay).

    secret-environ-file is read from the image (image_root), on the host.
    """
    assert spec.secrets is not None
    import importlib

    # Imported by name: protocol.secrets may not exist yet where this is type-checked.
    lithos_secrets = importlib.import_module("protocol.secrets")

    conf = spec.secrets
    try:
        keys = lithos_secrets.load_private_keys(conf.key_file)
        if conf.environ_file is not None:
            encrypted = _read_secret_file(inside(spec.image_root, conf.environ_file))
        else:
            encrypted = {name: list(values) for name, values in conf.environ}
        return dict(lithos_secrets.decrypt_environ(encrypted, keys, list(conf.namespaces)))
    except lithos_secrets.SecretError as e:
        raise SetupError(f"Error decoding secrets: {e}") from None


def _read_secret_file(path: str) -> dict[str, str | list[str]]:
    import yaml

    with open(path, "rb") as f:
        data = yaml.load(f, Loader=yaml.SafeLoader)
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and (isinstance(v, str) or (
                isinstance(v, list) and all(isinstance(x, str) for x in v)))
            for k, v in data.items()):
        raise SetupError(f"{path}: must be a mapping of name to a string "
                         "or a list of strings")
    return data
