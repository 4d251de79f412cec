"""The container config (inside the image, inventory 1.4 and 1.4.2).

Owns ContainerConfig, TcpPortConfig, ResolvConf and HostsFile, their
defaults, and parse/load. Untrusted (written by the image's author): the
model only says what is asked for; whether it is allowed is decided against
the sandbox by instantiate.py (and the broker). Reads only the bytes or file
it is handed; reading a file *inside an image* is image.py's job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from protocol.structs import dataclass

from .idranges import U32_MAX
from .process import Kind, p_kind
from .reader import (
    Ctx,
    Invalid,
    IpAddress,
    MapReader,
    is_null,
    mapping_items,
    optional,
    p_bool,
    p_int,
    p_list,
    p_map,
    p_num,
    p_str,
    run_parse,
    scalar_text,
)
from .sandbox import IdMapEntry, p_id_map
from .vartypes import Variable, p_variable
from .volumes import Volume, p_volume, volume_key_problem
from .yamlload import read_bounded

__all__ = ["ContainerConfig", "HostsFile", "Metadata", "ResolvConf", "TcpPortConfig",
           "load_container", "parse_container"]

Metadata = str | tuple["Metadata", ...] | Mapping[str, "Metadata"] | None
_NO_LIMIT = 0x7FFFFFFFFFFFFFFF
_ANY: IpAddress = ipaddress.IPv4Address("0.0.0.0")


@dataclass(frozen=True, slots=True)
class TcpPortConfig:
    """One `tcp-ports` entry: the listening socket placed at `fd` in the child."""

    fd: int
    host: IpAddress = ipaddress.IPv4Address("0.0.0.0")
    listen_backlog: int = 128
    reuse_addr: bool = True
    reuse_port: bool = False
    set_non_block: bool = False
    external: bool = False


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """`resolv-conf`: copy the sandbox's resolv.conf into the state dir (K-14, K-16)."""

    mount: bool | None = None
    copy_from_host: bool = True


@dataclass(frozen=True, slots=True)
class HostsFile:
    """`hosts-file`; localhost/public-hostname default to `not copy_from_host` (K-15)."""

    mount: bool | None = None
    copy_from_host: bool = True
    localhost: bool | None = None
    public_hostname: bool | None = None

    @property
    def effective_localhost(self) -> bool:
        return (not self.copy_from_host) if self.localhost is None else self.localhost

    @property
    def effective_public_hostname(self) -> bool:
        if self.public_hostname is None:
            return not self.copy_from_host
        return self.public_hostname


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """A container config. Times are integer seconds; sizes are bytes."""

    path: Path
    kind: Kind
    variables: Mapping[str, Variable]
    metadata: Metadata
    volumes: Mapping[str, Volume]
    user_id: int | None
    group_id: int | None
    memory_limit: int
    fileno_limit: int
    cpu_shares: int
    restart_timeout: int
    """Minimum seconds between two starts (T-22)."""
    kill_timeout: int
    """Seconds between SIGTERM and SIGKILL (K-41)."""
    executable: str
    arguments: tuple[str, ...]
    environ: Mapping[str, str]
    secret_environ: Mapping[str, tuple[str, ...]]
    secret_environ_file: str | None
    workdir: str
    resolv_conf: ResolvConf
    hosts_file: HostsFile
    uid_map: tuple[IdMapEntry, ...]
    gid_map: tuple[IdMapEntry, ...]
    stdout_stderr_file: str | None
    interactive: bool
    restart_process_only: bool
    normal_exit_codes: tuple[int, ...]
    tcp_ports: Mapping[str, TcpPortConfig]
    """Keyed by the port as written; it may contain `@{var}` (see instantiate)."""


def p_tcp_port(ctx: Ctx, node: Node, key: str) -> TcpPortConfig:
    m = MapReader(ctx, node, key)
    port = TcpPortConfig(
        fd=m.require("fd", p_num(0, 2**31 - 1), 0),
        host=m.get("host", _ipv4, _ANY),
        listen_backlog=m.get("listen_backlog", p_int(0, 2**31 - 1), 128),
        reuse_addr=m.get("reuse_addr", p_bool, True),
        reuse_port=m.get("reuse_port", p_bool, False),
        set_non_block=m.get("set_non_block", p_bool, False),
        external=m.get("external", p_bool, False),
    )
    m.finish()
    return port


def _ipv4(ctx: Ctx, node: Node, key: str) -> IpAddress:
    text = scalar_text(ctx, node, key).strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ctx.fail(key, node, "is not an IP address (like 127.0.0.1)") from None
    if ip.version != 4:
        raise ctx.fail(key, node, "is IPv6, which is not supported for tcp-ports (Lithos "
                       "binds AF_INET sockets)")
    return ip


def p_resolv_conf(ctx: Ctx, node: Node, key: str) -> ResolvConf:
    m = MapReader(ctx, node, key)
    value = ResolvConf(m.get("mount", optional(p_bool), None),
                       m.get("copy_from_host", p_bool, True))
    m.finish()
    return value


def p_hosts_file(ctx: Ctx, node: Node, key: str) -> HostsFile:
    m = MapReader(ctx, node, key)
    value = HostsFile(m.get("mount", optional(p_bool), None),
                      m.get("copy_from_host", p_bool, True),
                      m.get("localhost", optional(p_bool), None),
                      m.get("public_hostname", optional(p_bool), None))
    m.finish()
    return value


def p_secret_value(ctx: Ctx, node: Node, key: str) -> tuple[str, ...]:
    if isinstance(node, SequenceNode):
        return p_list(p_str)(ctx, node, key)
    return (p_str(ctx, node, key),)


def p_metadata(ctx: Ctx, node: Node, key: str) -> Metadata:
    """Any YAML; scalars become strings (1.4 `metadata`)."""
    if isinstance(node, MappingNode):
        items = mapping_items(ctx, node, key)
        return MappingProxyType({k: p_metadata(ctx, v, f"{key}.{k}") for k, (_, v) in
                                 items.items()})
    if isinstance(node, SequenceNode):
        return tuple(p_metadata(ctx, v, f"{key}[{i}]") for i, v in enumerate(node.value))
    if is_null(node):
        return None
    assert isinstance(node, ScalarNode)
    return scalar_text(ctx, node, key)


def _env_name(name: str) -> str | None:
    if not name or "=" in name or "\0" in name:
        return "is not a valid environment variable name (non-empty, no '=')"
    return None


def _exit_code(ctx: Ctx, node: Node, key: str) -> int:
    return p_num(0, 255)(ctx, node, key)


def _build(ctx: Ctx, node: Node | None, file: str) -> ContainerConfig:
    m = MapReader(ctx, node, "")
    empty: Mapping[str, str] = MappingProxyType({})
    timeout = p_num(0, 86400)
    config = ContainerConfig(
        path=Path(file),
        kind=m.get("kind", p_kind(tuple(Kind)), Kind.DAEMON),
        variables=m.get("variables", p_map(p_variable), MappingProxyType({})),
        metadata=m.get("metadata", p_metadata, None),
        volumes=m.get("volumes", p_map(p_volume, volume_key_problem), MappingProxyType({})),
        user_id=m.get("user_id", optional(p_num(0, U32_MAX)), None),
        group_id=m.get("group_id", optional(p_num(0, U32_MAX)), None),
        memory_limit=m.get("memory_limit", p_num(0, 2**64 - 1), _NO_LIMIT),
        fileno_limit=m.get("fileno_limit", p_num(0, 2**64 - 1), 1024),
        cpu_shares=m.get("cpu_shares", p_num(0, 2**64 - 1), 1024),
        restart_timeout=m.get("restart_timeout", timeout, 1),
        kill_timeout=m.get("kill_timeout", timeout, 5),
        executable=m.require("executable", p_str, ""),
        arguments=m.get("arguments", p_list(p_str), ()),
        environ=m.get("environ", p_map(p_str, _env_name), empty),
        secret_environ=m.get("secret_environ", p_map(p_secret_value, _env_name),
                             MappingProxyType({})),
        secret_environ_file=m.get("secret_environ_file", optional(p_str), None),
        workdir=m.get("workdir", p_str, "/"),
        resolv_conf=m.get("resolv_conf", p_resolv_conf, ResolvConf()),
        hosts_file=m.get("hosts_file", p_hosts_file, HostsFile()),
        uid_map=m.get("uid_map", p_id_map, ()),
        gid_map=m.get("gid_map", p_id_map, ()),
        stdout_stderr_file=m.get("stdout_stderr_file", optional(p_str), None),
        interactive=m.get("interactive", p_bool, False),
        restart_process_only=m.get("restart_process_only", p_bool, False),
        normal_exit_codes=m.get("normal_exit_codes", p_list(_exit_code), ()),
        tcp_ports=m.get("tcp_ports", p_map(p_tcp_port), MappingProxyType({})),
    )
    m.finish()
    if config.secret_environ and config.secret_environ_file is not None:
        ctx.error("secret-environ-file", None, "and secret-environ are mutually exclusive "
                  "(use one of them)", config.secret_environ_file)
    if ctx.problems:
        raise Invalid()
    return config


def parse_container(data: bytes, file: str) -> ContainerConfig:
    """Parse a container config; `file` names it in errors.

    Raises:
        ConfigError: listing every problem.
    """
    return run_parse(data, file, lambda ctx, node: _build(ctx, node, file))


def load_container(path: Path | str) -> ContainerConfig:
    """Read and parse a container config file on the host (see image.py for images)."""
    path = Path(path)
    return parse_container(read_bounded(path), str(path))
