"""The master config (`/etc/lithos/master.yaml`, inventory 1.1) and sandbox discovery.

Owns MasterConfig, its defaults and its path rules (E-2): sandboxes-dir and
processes-dir are relative to the master file's directory, state-dir and
mount-dir to runtime-dir, log-file to default-log-dir. Every path stored on
the model is absolute. Reads only the file it is handed (and, for
list_sandboxes, the sandboxes directory listing).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from yaml.nodes import Node

from protocol.structs import dataclass

from .errors import ConfigError, Problem
from .reader import Ctx, MapReader, optional, p_list, p_str, run_parse
from .yamlload import read_bounded

__all__ = ["DEFAULT_CGROUP_CONTROLLERS", "LogLevel", "MasterConfig", "list_sandboxes",
           "load_master", "parse_master"]

DEFAULT_CGROUP_CONTROLLERS = ("name", "cpu", "cpuacct", "memory", "blkio")
_DEFAULT_CONFIG_LOG: str | None = "/var/log/lithos/config"
_DEFAULT_CGROUP: str | None = "lithos.slice"
SYSLOG_FACILITIES = frozenset({
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", *(f"local{i}" for i in range(8)),
})


class LogLevel(enum.Enum):
    ERROR = "error"
    WARN = "warn"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


@dataclass(frozen=True, slots=True)
class MasterConfig:
    """`master.yaml`. All paths are absolute (resolved per E-2)."""

    path: Path
    sandboxes_dir: Path
    processes_dir: Path
    runtime_dir: Path
    state_dir: Path
    mount_dir: Path
    devfs_dir: Path
    cgroup_name: str | None
    cgroup_controllers: tuple[str, ...]
    default_log_dir: Path
    config_log_dir: Path | None
    stdio_log_dir: Path
    log_file: Path
    log_level: LogLevel
    syslog_facility: str | None
    syslog_app_name: str
    supervisor_user: str
    """The unprivileged user the broker runs the supervisor as (our key; default nobody)."""

    @property
    def effective_cgroup_controllers(self) -> tuple[str, ...]:
        """An empty `cgroup-controllers` means the default five (E-3)."""
        return self.cgroup_controllers or DEFAULT_CGROUP_CONTROLLERS


def p_log_level(ctx: Ctx, node: Node, key: str) -> LogLevel:
    text = p_str(ctx, node, key)
    try:
        return LogLevel(text.lower())
    except ValueError:
        raise ctx.fail(key, node, "is not a log level (one of error, warn, info, debug, "
                       "trace)") from None


def p_facility(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key).lower()
    text = text.removeprefix("log_")
    if text not in SYSLOG_FACILITIES:
        raise ctx.fail(key, node, "is not a syslog facility (one of "
                       + ", ".join(sorted(SYSLOG_FACILITIES)) + ")")
    return text


def _p_user(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key)
    if not text or text != text.strip():
        raise ctx.fail(key, node, "must be a user name (like nobody)")
    return text


def _abs_dir(ctx: Ctx, node: Node, key: str) -> Path:
    text = p_str(ctx, node, key)
    if not text.startswith("/"):
        raise ctx.fail(key, node, "must be an absolute path")
    return Path(text)


def parse_master(data: bytes, file: str) -> MasterConfig:
    """Parse master.yaml bytes; `file` names it in errors and anchors relative paths.

    Raises:
        ConfigError: listing every problem.
    """
    return run_parse(data, file, lambda ctx, node: _build(ctx, node, file))


def _build(ctx: Ctx, node: Node | None, file: str) -> MasterConfig:
    base = Path(os.path.abspath(file)).parent
    m = MapReader(ctx, node, "")
    runtime_dir = m.get("runtime_dir", _abs_dir, Path("/run/lithos"))
    log_dir = base / m.get("default_log_dir", p_str, "/var/log/lithos")
    config_log_dir = m.get("config_log_dir", optional(p_str), _DEFAULT_CONFIG_LOG)
    master = MasterConfig(
        path=Path(os.path.abspath(file)),
        sandboxes_dir=base / m.get("sandboxes_dir", p_str, "./sandboxes"),
        processes_dir=base / m.get("processes_dir", p_str, "./processes"),
        runtime_dir=runtime_dir,
        state_dir=runtime_dir / m.get("state_dir", p_str, "state"),
        mount_dir=runtime_dir / m.get("mount_dir", p_str, "mnt"),
        devfs_dir=base / m.get("devfs_dir", p_str, "/var/lib/lithos/dev"),
        cgroup_name=m.get("cgroup_name", optional(p_str), _DEFAULT_CGROUP),
        cgroup_controllers=m.get("cgroup_controllers", p_list(p_str), ()),
        default_log_dir=log_dir,
        config_log_dir=None if config_log_dir is None else base / config_log_dir,
        stdio_log_dir=base / m.get("stdio_log_dir", p_str, "/var/log/lithos/stderr"),
        log_file=log_dir / m.get("log_file", p_str, "master.log"),
        log_level=m.get("log_level", p_log_level, LogLevel.WARN),
        syslog_facility=m.get("syslog_facility", optional(p_facility), None),
        syslog_app_name=m.get("syslog_app_name", p_str, "lithos",
                              aliases=("syslog-name", "syslog_name")),
        supervisor_user=m.get("supervisor_user", _p_user, "nobody"),
    )
    m.finish()
    return master


def load_master(path: Path | str) -> MasterConfig:
    """Read and parse a master config file (Q-1: it must exist; empty is fine)."""
    path = Path(path)
    return parse_master(read_bounded(path), str(path))


def _is_config_name(name: str) -> bool:
    """scan_dir rules: `*.yaml`, skipping hidden, backup (`~`, `.bak`) and `#x#` files."""
    return (name.endswith(".yaml") and not name.startswith(".") and not name.endswith("~")
            and not name.endswith(".bak") and not (name.startswith("#") and name.endswith("#"))
            and len(name) > len(".yaml"))


def list_sandboxes(master: MasterConfig) -> dict[str, Path]:
    """Sandbox name -> config file, from `sandboxes-dir` (1.1 scan rules), sorted by name.

    Raises:
        ConfigError: the directory cannot be listed.
    """
    try:
        names = os.listdir(master.sandboxes_dir)
    except OSError as e:
        raise ConfigError([Problem(str(master.path), "sandboxes-dir", str(master.sandboxes_dir),
                                   f"cannot be listed: {e.strerror}")]) from None
    found = {name[: -len(".yaml")]: master.sandboxes_dir / name
             for name in names if _is_config_name(name)}
    return dict(sorted(found.items()))
