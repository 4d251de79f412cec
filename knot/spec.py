"""KnotSpec: one container, fully resolved, as the knot receives it.

Owns the shape of what travels from the spawner (broker or lithos_cmd) to the
knot, and its JSON form (to_json / from_json). Everything is decided before it
gets here: variables are substituted, paths mapped to host paths, volumes sorted
(V-1), defaults applied, the policy checked. The knot only executes it.

Rules: from_json validates strictly (unknown or missing keys, wrong types,
relative paths, `..` in mount points, tcp fds 1 and 2) and raises SpecError with
one line naming the key; it never returns a half-valid spec. This module does no
I/O and imports only json, enum and dataclasses.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import asdict, fields

from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar
    T = TypeVar("T")
    E = TypeVar("E", bound=enum.Enum)


class SpecError(ValueError):
    """The JSON is not a valid KnotSpec; the message names the key."""


class Kind(enum.Enum):
    DAEMON = "Daemon"
    COMMAND = "Command"


class VolumeKind(enum.Enum):
    READONLY = "Readonly"
    PERSISTENT = "Persistent"
    STATEDIR = "Statedir"
    TMPFS = "Tmpfs"


@dataclass(frozen=True, slots=True)
class Volume:
    """One mount: `target` inside the container, `source` on the host.

    Readonly/Persistent/Statedir: a bind mount of `source` (for Statedir a path in
    the state dir). Persistent creates `source` (mode, user, group: host ids) only
    if `mkdir` and it is missing; Statedir always applies mode/user/group (as the
    original does). Tmpfs: `source` is None, size_bytes and mode are used.
    """

    kind: VolumeKind
    target: str
    source: str | None
    size_bytes: int = 0
    mode: int = 0o777
    mkdir: bool = False
    user: int = 0
    group: int = 0


@dataclass(frozen=True, slots=True)
class IdMap:
    """One line of a uid_map or gid_map: `inside outside count`."""

    inside: int
    outside: int
    count: int


@dataclass(frozen=True, slots=True)
class CgroupWrite:
    """One file of a new cgroup the knot writes before it joins (K-20: a failure is a
    warning). key: the container config key the value comes from ("" for cpuset's)."""

    path: str
    value: str
    key: str


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """resolv-conf; `source` is the sandbox's resolv-conf file (K-14, K-18)."""

    mount: bool | None
    copy_from_host: bool
    source: str


@dataclass(frozen=True, slots=True)
class HostsFile:
    """hosts-file with its defaults applied (K-15, K-17); additional_hosts are (host, ip)."""

    mount: bool | None
    copy_from_host: bool
    localhost: bool
    public_hostname: bool
    source: str
    additional_hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Secrets:
    """Encrypted secrets: either `environ` (name -> candidate values) or `environ_file`.

    `environ_file` is the absolute path of secret-environ-file inside the image.
    """

    key_file: str
    namespaces: tuple[str, ...]
    environ: tuple[tuple[str, tuple[str, ...]], ...] = ()
    environ_file: str | None = None


@dataclass(frozen=True, slots=True)
class KnotSpec:
    """Everything one lithos_knot needs; see the module docstring."""

    name: str                       # instance name, "sandbox/process.N"
    kind: Kind
    container_config: str           # path named in error messages
    config_filename: str            # LITHOS_CONFIG (the process config's `config`)
    image_root: str                 # host path of the image
    mount_dir: str                  # host path where the root is assembled
    state_dir: str                  # host path of this instance's state dir
    devfs_dir: str                  # host path made by lithos_mkdev
    volumes: tuple[Volume, ...]     # in mount order (V-1)
    resolv_conf: ResolvConf
    hosts_file: HostsFile
    uid: int                        # inside ids when maps are given
    gid: int
    uid_map: tuple[IdMap, ...]
    gid_map: tuple[IdMap, ...]
    fileno_limit: int
    executable: str
    argv: tuple[str, ...]           # argv[0] included
    environ: tuple[tuple[str, str], ...]
    pid_env_vars: tuple[str, ...]   # set to the service's pid (V-15, V-17)
    workdir: str
    secrets: Secrets | None
    tcp_fds: tuple[int, ...]        # fd numbers the service sees; inherited by the knot
    interactive: bool
    stdout_stderr_file: str | None  # path inside the container
    kill_timeout_s: float
    restart_timeout_s: float
    restart_process_only: bool
    normal_exit_codes: tuple[int, ...]
    net_bind_service: bool = False  # bridged (K-30): the service keeps CAP_NET_BIND_SERVICE
    # cgroup.procs files (host paths, one per hierarchy) the knot joins first (T-51)
    cgroup_procs: tuple[str, ...] = ()
    # A new group's dirs (one per hierarchy) the knot makes, then the files it writes,
    # before it joins (K-20; the broker makes the parents: broker.cgroups.LeafWork)
    cgroup_dirs: tuple[str, ...] = ()
    cgroup_writes: tuple[CgroupWrite, ...] = ()

    def to_json(self) -> str:
        """The spec as one JSON object (enums by value)."""
        return json.dumps(asdict(self), default=_enum_value, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KnotSpec:
        """Parses and validates; Raises: SpecError naming the key."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise SpecError(f"knot spec: not JSON: {e}") from None
        return _spec(raw, "knot spec")


def mount_order(volumes: dict[str, Volume]) -> tuple[Volume, ...]:
    """V-1: shortest mount point first; ties in lexicographic order (for the resolver)."""
    return tuple(volumes[target] for target in sorted(volumes, key=lambda t: (len(t), t)))


def _enum_value(obj: object) -> object:
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"cannot serialize {obj!r}")


# --- strict decoding: one small checker per type, each naming its key --------

def _obj(raw: object, where: str, cls: type) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown} (expected {sorted(names)})")
    missing = sorted(names - set(raw))
    if missing:
        raise SpecError(f"{where}: missing keys {missing}")
    return raw


def _str(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise SpecError(f"{where}: {v!r} must be a string")
    if "\0" in v:
        raise SpecError(f"{where}: {v!r} must not contain NUL")
    return v


def _path(v: object, where: str) -> str:
    s = _str(v, where)
    if not s.startswith("/"):
        raise SpecError(f"{where}: {s!r} must be an absolute path")
    if ".." in s.split("/"):
        raise SpecError(f"{where}: {s!r} must not contain '..'")
    return s


def _opt_path(v: object, where: str) -> str | None:
    return None if v is None else _path(v, where)


def _bool(v: object, where: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"{where}: {v!r} must be true or false")
    return v


def _opt_bool(v: object, where: str) -> bool | None:
    return None if v is None else _bool(v, where)


def _int(v: object, where: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where}: {v!r} must be an integer")
    if not lo <= v <= hi:
        raise SpecError(f"{where}: {v} must be in {lo}..{hi}")
    return v


def _seconds(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 86400:
        raise SpecError(f"{where}: {v!r} must be a number of seconds in 0..86400")
    return float(v)


def _list(v: object, where: str) -> list[object]:
    if not isinstance(v, list):
        raise SpecError(f"{where}: {v!r} must be a list")
    return v


def _each(v: object, where: str, item: Callable[[object, str], T]) -> tuple[T, ...]:
    return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where)))


def _enum(v: object, where: str, cls: type[E]) -> E:
    try:
        return cls(v)
    except ValueError:
        allowed = [m.value for m in cls]
        raise SpecError(f"{where}: {v!r} must be one of {allowed}") from None


def _volume(raw: object, where: str) -> Volume:
    d = _obj(raw, where, Volume)
    kind = _enum(d["kind"], f"{where}.kind", VolumeKind)
    source = _opt_path(d["source"], f"{where}.source")
    if (source is None) != (kind is VolumeKind.TMPFS):
        raise SpecError(f"{where}.source: {source!r}: a {kind.value} volume "
                        f"{'has no' if kind is VolumeKind.TMPFS else 'needs a'} host source")
    return Volume(kind=kind, target=_path(d["target"], f"{where}.target"), source=source,
                  size_bytes=_int(d["size_bytes"], f"{where}.size_bytes"),
                  mode=_int(d["mode"], f"{where}.mode", 0, 0o7777),
                  mkdir=_bool(d["mkdir"], f"{where}.mkdir"),
                  user=_int(d["user"], f"{where}.user", 0, 2**32 - 2),
                  group=_int(d["group"], f"{where}.group", 0, 2**32 - 2))


def _idmap(raw: object, where: str) -> IdMap:
    d = _obj(raw, where, IdMap)
    return IdMap(inside=_int(d["inside"], f"{where}.inside", 0, 2**32 - 2),
                 outside=_int(d["outside"], f"{where}.outside", 0, 2**32 - 2),
                 count=_int(d["count"], f"{where}.count", 1, 2**32 - 1))


def _cgroup_write(raw: object, where: str) -> CgroupWrite:
    d = _obj(raw, where, CgroupWrite)
    return CgroupWrite(path=_path(d["path"], f"{where}.path"),
                       value=_str(d["value"], f"{where}.value"),
                       key=_str(d["key"], f"{where}.key"))


def _resolv(raw: object, where: str) -> ResolvConf:
    d = _obj(raw, where, ResolvConf)
    return ResolvConf(mount=_opt_bool(d["mount"], f"{where}.mount"),
                      copy_from_host=_bool(d["copy_from_host"], f"{where}.copy_from_host"),
                      source=_path(d["source"], f"{where}.source"))


def _pair(raw: object, where: str) -> tuple[str, str]:
    items = _list(raw, where)
    if len(items) != 2:
        raise SpecError(f"{where}: {raw!r} must be a pair")
    return _str(items[0], f"{where}[0]"), _str(items[1], f"{where}[1]")


def _hosts(raw: object, where: str) -> HostsFile:
    d = _obj(raw, where, HostsFile)
    return HostsFile(mount=_opt_bool(d["mount"], f"{where}.mount"),
                     copy_from_host=_bool(d["copy_from_host"], f"{where}.copy_from_host"),
                     localhost=_bool(d["localhost"], f"{where}.localhost"),
                     public_hostname=_bool(d["public_hostname"], f"{where}.public_hostname"),
                     source=_path(d["source"], f"{where}.source"),
                     additional_hosts=_each(d["additional_hosts"],
                                            f"{where}.additional_hosts", _pair))


def _secret_item(raw: object, where: str) -> tuple[str, tuple[str, ...]]:
    items = _list(raw, where)
    if len(items) != 2:
        raise SpecError(f"{where}: {raw!r} must be [name, [values...]]")
    return _str(items[0], f"{where}[0]"), _each(items[1], f"{where}[1]", _str)


def _secrets(raw: object, where: str) -> Secrets | None:
    if raw is None:
        return None
    d = _obj(raw, where, Secrets)
    secrets = Secrets(key_file=_path(d["key_file"], f"{where}.key_file"),
                      namespaces=_each(d["namespaces"], f"{where}.namespaces", _str),
                      environ=_each(d["environ"], f"{where}.environ", _secret_item),
                      environ_file=_opt_path(d["environ_file"], f"{where}.environ_file"))
    if secrets.environ and secrets.environ_file is not None:
        raise SpecError(f"{where}: secret-environ and secret-environ-file settings "
                        "are mutually exclusive")
    return secrets


def _tcp_fd(v: object, where: str) -> int:
    fd = _int(v, where, 0, 1 << 20)
    if fd in (1, 2):
        raise SpecError(f"{where}: fd {fd} is stdout/stderr (use 0 or >= 3)")
    return fd


def _spec(raw: object, where: str) -> KnotSpec:
    d = _obj(raw, where, KnotSpec)
    argv = _each(d["argv"], f"{where}.argv", _str)
    if not argv:
        raise SpecError(f"{where}.argv: must hold at least argv[0]")
    tcp_fds = _each(d["tcp_fds"], f"{where}.tcp_fds", _tcp_fd)
    if len(set(tcp_fds)) != len(tcp_fds):
        raise SpecError(f"{where}.tcp_fds: {list(tcp_fds)} has duplicates")
    environ = _each(d["environ"], f"{where}.environ", _pair)
    return KnotSpec(
        name=_str(d["name"], f"{where}.name"),
        kind=_enum(d["kind"], f"{where}.kind", Kind),
        container_config=_str(d["container_config"], f"{where}.container_config"),
        config_filename=_str(d["config_filename"], f"{where}.config_filename"),
        image_root=_path(d["image_root"], f"{where}.image_root"),
        mount_dir=_path(d["mount_dir"], f"{where}.mount_dir"),
        state_dir=_path(d["state_dir"], f"{where}.state_dir"),
        devfs_dir=_path(d["devfs_dir"], f"{where}.devfs_dir"),
        volumes=_each(d["volumes"], f"{where}.volumes", _volume),
        resolv_conf=_resolv(d["resolv_conf"], f"{where}.resolv_conf"),
        hosts_file=_hosts(d["hosts_file"], f"{where}.hosts_file"),
        uid=_int(d["uid"], f"{where}.uid", 0, 2**32 - 2),
        gid=_int(d["gid"], f"{where}.gid", 0, 2**32 - 2),
        uid_map=_each(d["uid_map"], f"{where}.uid_map", _idmap),
        gid_map=_each(d["gid_map"], f"{where}.gid_map", _idmap),
        fileno_limit=_int(d["fileno_limit"], f"{where}.fileno_limit", 1, 1 << 30),
        executable=_str(d["executable"], f"{where}.executable"),
        argv=argv,
        environ=environ,
        pid_env_vars=_each(d["pid_env_vars"], f"{where}.pid_env_vars", _str),
        workdir=_str(d["workdir"], f"{where}.workdir"),
        secrets=_secrets(d["secrets"], f"{where}.secrets"),
        tcp_fds=tcp_fds,
        interactive=_bool(d["interactive"], f"{where}.interactive"),
        stdout_stderr_file=_opt_path(d["stdout_stderr_file"], f"{where}.stdout_stderr_file"),
        kill_timeout_s=_seconds(d["kill_timeout_s"], f"{where}.kill_timeout_s"),
        restart_timeout_s=_seconds(d["restart_timeout_s"], f"{where}.restart_timeout_s"),
        restart_process_only=_bool(d["restart_process_only"], f"{where}.restart_process_only"),
        normal_exit_codes=_each(d["normal_exit_codes"], f"{where}.normal_exit_codes",
                                lambda v, w: _int(v, w, 0, 255)),
        net_bind_service=_bool(d["net_bind_service"], f"{where}.net_bind_service"),
        cgroup_procs=_each(d["cgroup_procs"], f"{where}.cgroup_procs", _path),
        cgroup_dirs=_each(d["cgroup_dirs"], f"{where}.cgroup_dirs", _path),
        cgroup_writes=_each(d["cgroup_writes"], f"{where}.cgroup_writes", _cgroup_write),
    )


