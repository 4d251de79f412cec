"""Container volumes (inventory 1.4.1): `!Readonly`, `!Persistent`, `!Statedir`, `!Tmpfs`.

Owns the four volume models, their defaults, and the V-3 rule made an error
instead of a crash: mount points and volume paths are absolute and free of
`..`. Also `map_dir` (V-4), the lookup of a virtual path in readonly-paths /
writable-paths. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from yaml.nodes import Node, ScalarNode

from protocol.structs import dataclass

from .reader import (
    Ctx,
    MapReader,
    absolute_clean,
    is_implicit_null,
    p_abspath,
    p_bool,
    p_num,
    p_str,
    untag,
)

__all__ = ["Persistent", "Readonly", "Statedir", "Tmpfs", "Volume", "map_dir", "p_volume",
           "volume_key_problem"]

MODE_MAX = 0o1777
TMPFS_DEFAULT_SIZE = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Readonly:
    """`!Readonly /path`: bind a readonly-paths (or writable-paths) entry read-only."""

    path: str


@dataclass(frozen=True, slots=True)
class Persistent:
    """`!Persistent {path, mkdir, mode, user, group}`: bind a writable-paths entry."""

    path: str = "/"
    mkdir: bool = False
    mode: int = 0o777
    user: int = 0
    group: int = 0


@dataclass(frozen=True, slots=True)
class Statedir:
    """`!Statedir {path, mode, user, group}`: a directory under the instance's state dir."""

    path: str = "/"
    mode: int = 0o777
    user: int = 0
    group: int = 0


@dataclass(frozen=True, slots=True)
class Tmpfs:
    """`!Tmpfs {size, mode}`: size in bytes (default 100 MiB), mode at most 0o1777."""

    size: int = TMPFS_DEFAULT_SIZE
    mode: int = 0o777


Volume = Readonly | Persistent | Statedir | Tmpfs
VOLUME_TAGS = ("!Readonly", "!Persistent", "!Statedir", "!Tmpfs")


def volume_key_problem(mount_point: str) -> str | None:
    """Why a mount point is unacceptable (V-3), or None."""
    return absolute_clean(mount_point)


def _payload(ctx: Ctx, node: Node, key: str) -> MapReader:
    if isinstance(node, ScalarNode) and not is_implicit_null(node) and node.value != "":
        raise ctx.fail(key, node, f"must be a mapping (write {node.tag} {{path: {node.value}}})")
    if isinstance(node, ScalarNode):
        return MapReader(ctx, None, key)
    return MapReader(ctx, untag(node), key)


def p_volume(ctx: Ctx, node: Node, key: str) -> Volume:
    """One volume; the tag picks the kind (Q-9)."""
    uid = p_num(0, 2**32 - 1)
    mode = p_num(0, MODE_MAX)
    volume: Volume
    match node.tag:
        case "!Readonly":
            return Readonly(p_abspath(ctx, untag(node), key))
        case "!Persistent":
            m = _payload(ctx, node, key)
            volume = Persistent(m.get("path", p_abspath, "/"), m.get("mkdir", p_bool, False),
                                m.get("mode", mode, 0o777), m.get("user", uid, 0),
                                m.get("group", uid, 0))
        case "!Statedir":
            m = _payload(ctx, node, key)
            volume = Statedir(m.get("path", p_abspath, "/"), m.get("mode", mode, 0o777),
                              m.get("user", uid, 0), m.get("group", uid, 0))
        case "!Tmpfs":
            m = _payload(ctx, node, key)
            volume = Tmpfs(m.get("size", p_num(0, 2**63 - 1), TMPFS_DEFAULT_SIZE),
                           m.get("mode", mode, 0o777))
        case _:
            text = "" if not isinstance(node, ScalarNode) else p_str(ctx, node, key)
            raise ctx.fail(key, node, "must be one of the tags " + ", ".join(VOLUME_TAGS),
                           text or None)
    m.finish()
    return volume


def map_dir(path: str, table: Mapping[str, str]) -> str | None:
    """Host path for virtual `path` via `table` (V-4): lexicographic keys, first
    component-wise prefix match wins; the result is host + remainder."""
    parts = [p for p in path.split("/") if p]
    for virtual in sorted(table):
        prefix = [p for p in virtual.split("/") if p]
        if parts[: len(prefix)] == prefix:
            rest = parts[len(prefix):]
            host = table[virtual].rstrip("/") or "/"
            return "/".join([host.rstrip("/"), *rest]) if rest else host
    return None
