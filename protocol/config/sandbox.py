"""The sandbox config (`<sandboxes-dir>/<NAME>.yaml`, inventory 1.2): the policy.

Owns SandboxConfig, BridgedNetwork and IdMapEntry, their defaults, and the
path helpers that need the master config (process_config_path,
sandbox_log_path). Root-owned and trusted; everything the broker allows a
container is decided against this model. Reads only the file it is handed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from yaml.nodes import Node

from protocol.structs import dataclass

from ..names import NAME_RULE, is_name
from .idranges import IdRanges
from .master import LogLevel, MasterConfig, p_log_level
from .reader import (
    Ctx,
    IpAddress,
    IpNetwork,
    MapReader,
    absolute_clean,
    optional,
    p_bool,
    p_int,
    p_ip,
    p_list,
    p_map,
    p_network,
    p_num,
    p_ranges,
    p_str,
    run_parse,
)
from .yamlload import read_bounded

__all__ = ["BridgedNetwork", "IdMapEntry", "SandboxConfig", "load_sandbox", "p_id_map",
           "parse_sandbox", "process_config_path", "sandbox_log_path"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class IdMapEntry:
    """One user-namespace map line: ids [inside, inside+count) map to [outside, ...)."""

    inside: int
    outside: int
    count: int


@dataclass(frozen=True, slots=True)
class BridgedNetwork:
    """`bridged-network`: each instance gets a veth on `bridge` (K-30)."""

    bridge: str
    network: IpNetwork
    default_gateway: IpAddress | None
    after_setup_command: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """One sandbox's policy. `name` is the file stem; `path` the file it came from."""

    path: Path
    name: str
    config_file: str | None
    image_dir: Path
    image_dir_levels: int
    used_images_list: Path | None
    log_file: str | None
    log_level: LogLevel | None
    readonly_paths: Mapping[str, str]
    writable_paths: Mapping[str, str]
    allow_users: IdRanges
    default_user: int | None
    allow_groups: IdRanges
    default_group: int
    allow_tcp_ports: IdRanges
    additional_hosts: Mapping[str, str]
    uid_map: tuple[IdMapEntry, ...]
    gid_map: tuple[IdMapEntry, ...]
    auto_clean: bool
    resolv_conf: Path
    hosts_file: Path
    bridged_network: BridgedNetwork | None
    secrets_private_key: Path | None
    secrets_namespaces: tuple[str, ...]

    @property
    def effective_secrets_namespaces(self) -> frozenset[str]:
        """An empty list means the one default namespace `""`."""
        return frozenset(self.secrets_namespaces or ("",))


def p_id_map_entry(ctx: Ctx, node: Node, key: str) -> IdMapEntry:
    m = MapReader(ctx, node, key)
    entry = IdMapEntry(
        inside=m.require("inside", p_num(0, 2**32 - 1), 0),
        outside=m.require("outside", p_num(0, 2**32 - 1), 0),
        count=m.require("count", p_num(1, 2**32), 1),
    )
    m.finish()
    return entry


p_id_map = p_list(p_id_map_entry)


def _path_key(text: str) -> str | None:
    return absolute_clean(text)


def _host_path(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key)
    complaint = absolute_clean(text)
    if complaint:
        raise ctx.fail(key, node, complaint)
    return text


def _ip_text(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ctx.fail(key, node, "is not an IP address (like 10.0.0.2)") from None
    return text


def _p_path(ctx: Ctx, node: Node, key: str) -> Path:
    return Path(p_str(ctx, node, key))


def _p_ifname(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key)
    if not 0 < len(text.encode()) <= 15 or any(c in text for c in "/: \t\n") \
            or text in (".", ".."):
        raise ctx.fail(key, node, "is not a network interface name (1..15 bytes, no '/', ':' "
                       "or spaces)")
    return text


def p_bridged(ctx: Ctx, node: Node, key: str) -> BridgedNetwork:
    m = MapReader(ctx, node, key)
    net = BridgedNetwork(
        bridge=m.require("bridge", _p_ifname, ""),
        network=m.require("network", p_network, ipaddress.ip_network("0.0.0.0/0")),
        default_gateway=m.get("default_gateway", optional(p_ip), None),
        after_setup_command=m.get("after_setup_command", p_list(p_str), ()),
    )
    m.finish()
    return net


def _build(ctx: Ctx, node: Node | None, file: str, name: str) -> SandboxConfig:
    if not is_name(name):
        ctx.error("", None, f"is not a valid sandbox name ({NAME_RULE}: the file name without "
                  "`.yaml` becomes part of instance, cgroup and log file names)", repr(name))
    m = MapReader(ctx, node, "")
    sandbox = SandboxConfig(
        path=Path(file),
        name=name,
        config_file=m.get("config_file", optional(p_str), None),
        image_dir=m.get("image_dir", _p_path, Path("/var/lib/lithos/containers")),
        image_dir_levels=m.get("image_dir_levels", p_num(1, 16), 1),
        used_images_list=m.get("used_images_list", optional(_p_path), None),
        log_file=m.get("log_file", optional(p_str), None),
        log_level=m.get("log_level", optional(p_log_level), None),
        readonly_paths=m.get("readonly_paths", p_map(_host_path, _path_key), _EMPTY),
        writable_paths=m.get("writable_paths", p_map(_host_path, _path_key), _EMPTY),
        allow_users=m.get("allow_users", p_ranges, IdRanges()),
        default_user=m.get("default_user", optional(_scalar_u32), None),
        allow_groups=m.get("allow_groups", p_ranges, IdRanges()),
        default_group=m.get("default_group", _scalar_u32, 0),
        allow_tcp_ports=m.get("allow_tcp_ports", p_ranges, IdRanges()),
        additional_hosts=m.get("additional_hosts", p_map(_ip_text), _EMPTY),
        uid_map=m.get("uid_map", p_id_map, ()),
        gid_map=m.get("gid_map", p_id_map, ()),
        auto_clean=m.get("auto_clean", p_bool, True),
        resolv_conf=m.get("resolv_conf", _p_path, Path("/etc/resolv.conf")),
        hosts_file=m.get("hosts_file", _p_path, Path("/etc/hosts")),
        bridged_network=m.get("bridged_network", p_bridged, None),
        secrets_private_key=m.get("secrets_private_key", optional(_p_path), None),
        secrets_namespaces=m.get("secrets_namespaces", p_list(p_str), ()),
    )
    m.finish()
    return sandbox


def _scalar_u32(ctx: Ctx, node: Node, key: str) -> int:
    return p_int(0, 2**32 - 1)(ctx, node, key)


def parse_sandbox(data: bytes, file: str, name: str | None = None) -> SandboxConfig:
    """Parse a sandbox config; `name` defaults to the file stem (`web` for web.yaml).

    Raises:
        ConfigError: listing every problem.
    """
    stem = name if name is not None else Path(file).name.removesuffix(".yaml")
    return run_parse(data, file, lambda ctx, node: _build(ctx, node, file, stem))


def load_sandbox(path: Path | str) -> SandboxConfig:
    """Read and parse `<sandboxes-dir>/<NAME>.yaml`; the sandbox name is the file stem."""
    path = Path(path)
    name = path.name.removesuffix(".yaml")
    return parse_sandbox(read_bounded(path), str(path), name)


def process_config_path(master: MasterConfig, sandbox: SandboxConfig) -> Path:
    """`<processes-dir>/<config-file or NAME.yaml>`; an absolute config-file wins."""
    return master.processes_dir / (sandbox.config_file or f"{sandbox.name}.yaml")


def sandbox_log_path(master: MasterConfig, sandbox: SandboxConfig) -> Path:
    """The knot/cmd log of this sandbox: `default-log-dir/<log-file or NAME.log>` (E-38)."""
    return master.default_log_dir / (sandbox.log_file or f"{sandbox.name}.log")
