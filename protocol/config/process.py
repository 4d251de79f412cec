"""The process config (`<processes-dir>/<sandbox>.yaml`, inventory 1.3).

Owns ProcessConfig and Kind, the map `name -> ProcessConfig`, and the
process-level checks that need the sandbox (image-dir-levels, absolute
`config`, ip-addresses inside `network`). Partly trusted: the broker checks
everything here against the sandbox. Reads only the file it is handed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from yaml.nodes import Node

from protocol.structs import dataclass

from ..names import NAME_RULE, is_name
from .errors import Problem
from .reader import (
    Ctx,
    Invalid,
    IpAddress,
    MapReader,
    mapping_items,
    p_ip,
    p_list,
    p_map,
    p_num,
    p_str,
    run_parse,
)
from .sandbox import SandboxConfig
from .yamlload import read_bounded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .reader import Parser

__all__ = ["Kind", "ProcessConfig", "check_process", "image_path", "load_processes",
           "p_kind", "parse_processes"]

MAX_INSTANCES = 65535


class Kind(enum.Enum):
    DAEMON = "Daemon"
    COMMAND = "Command"
    COMMAND_OR_DAEMON = "CommandOrDaemon"

    def matches(self, process_kind: Kind) -> bool:
        """Container kind vs. process kind (1.4 `kind`)."""
        return self is Kind.COMMAND_OR_DAEMON or self is process_kind


def p_kind(allowed: tuple[Kind, ...]) -> Parser[Kind]:
    """Kinds are case-sensitive identifiers (Q-12)."""
    def parse_kind(ctx: Ctx, node: Node, key: str) -> Kind:
        text = p_str(ctx, node, key)
        for kind in allowed:
            if kind.value == text:
                return kind
        raise ctx.fail(key, node, "is not one of " + ", ".join(k.value for k in allowed)
                       + " (case matters)")
    return parse_kind


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """One entry of a process config: what to run, from which image, how many."""

    path: Path
    name: str
    instances: int
    image: str
    config: str
    variables: Mapping[str, str]
    extra_secrets_namespaces: tuple[str, ...]
    kind: Kind
    ip_addresses: tuple[IpAddress, ...]

    def instance_name(self, sandbox: str, index: int) -> str:
        """`<sandbox>/<name>.<index>` (1.3)."""
        return f"{sandbox}/{self.name}.{index}"


def _entry(ctx: Ctx, node: Node, key: str, file: str) -> ProcessConfig:
    m = MapReader(ctx, node, key)
    entry = ProcessConfig(
        path=Path(file),
        name=key,
        instances=m.get("instances", p_num(0, MAX_INSTANCES), 1),
        image=m.require("image", p_str, ""),
        config=m.require("config", p_str, ""),
        variables=m.get("variables", p_map(p_str), MappingProxyType({})),
        extra_secrets_namespaces=m.get("extra_secrets_namespaces", p_list(p_str), ()),
        kind=m.get("kind", p_kind((Kind.DAEMON, Kind.COMMAND)), Kind.DAEMON),
        ip_addresses=m.get("ip_addresses", p_list(p_ip), ()),
    )
    m.finish()
    return entry


def _build(ctx: Ctx, node: Node | None, file: str) -> Mapping[str, ProcessConfig]:
    out: dict[str, ProcessConfig] = {}
    items = {} if node is None else mapping_items(ctx, node, "")
    for name, (knode, vnode) in items.items():
        if name.startswith("_"):
            continue
        if not is_name(name):
            ctx.error(name, knode, f"is not a valid process name ({NAME_RULE}: it becomes "
                      "part of instance and cgroup names)", "")
            continue
        try:
            out[name] = _entry(ctx, vnode, name, file)
        except Invalid:
            continue
    return MappingProxyType(out)


def parse_processes(data: bytes, file: str) -> Mapping[str, ProcessConfig]:
    """Parse a process config: a mapping of process name -> ProcessConfig.

    Raises:
        ConfigError: listing every problem.
    """
    return run_parse(data, file, lambda ctx, node: _build(ctx, node, file))


def load_processes(path: Path | str) -> Mapping[str, ProcessConfig]:
    """Read and parse `<processes-dir>/<sandbox>.yaml`."""
    path = Path(path)
    return parse_processes(read_bounded(path), str(path))


def image_path(sandbox: SandboxConfig, process: ProcessConfig) -> Path | Problem:
    """`image-dir/image`, or the Problem when `image` breaks image-dir-levels."""
    parts = process.image.split("/")
    bad = (process.image.startswith("/") or any(p in ("", ".", "..") for p in parts)
           or len(parts) != sandbox.image_dir_levels)
    if bad:
        return Problem(str(process.path), f"{process.name}.image", process.image,
                       f"must be exactly {sandbox.image_dir_levels} plain path component(s) "
                       f"with no '.', '..' or leading '/' (image-dir-levels in {sandbox.path})")
    return sandbox.image_dir / process.image


def check_process(sandbox: SandboxConfig, process: ProcessConfig) -> list[Problem]:
    """The process-entry rules that need the sandbox (2.4 full mode, step 5.3)."""
    file, name = str(process.path), process.name
    problems: list[Problem] = []
    image = image_path(sandbox, process)
    if isinstance(image, Problem):
        problems.append(image)
    if not PurePosixPath(process.config).is_absolute() or ".." in process.config.split("/"):
        problems.append(Problem(file, f"{name}.config", process.config,
                                "must be an absolute path inside the image, without '..'"))
    net = sandbox.bridged_network
    if net is not None:
        first: dict[IpAddress, int] = {}
        for i, ip in enumerate(process.ip_addresses):
            if ip not in net.network:
                problems.append(Problem(file, f"{name}.ip-addresses[{i}]", str(ip),
                                        f"is not inside network {net.network} of bridged-network "
                                        f"in {sandbox.path}"))
            if ip in first:
                problems.append(Problem(file, f"{name}.ip-addresses[{i}]", str(ip),
                                        f"is the same as ip-addresses[{first[ip]}]; each "
                                        "instance needs an address of its own"))
            first.setdefault(ip, i)
        if process.kind is Kind.DAEMON and len(process.ip_addresses) < process.instances:
            problems.append(Problem(file, f"{name}.ip-addresses",
                                    f"[{len(process.ip_addresses)} addresses]",
                                    f"are fewer than instances ({process.instances}) in bridged "
                                    f"sandbox {sandbox.name}"))
    return problems
