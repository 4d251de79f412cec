"""The status tree lithos_ps shows: configured sandboxes, live children, past exits.

Owns building a GetStatus answer from what the broker holds (the config cache,
the live children and the per-instance history). Rules: read-only over its
inputs; a sandbox whose config fails still lists its running children, with the
error beside them (spec decision 4); time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from broker.children import Child
from broker.configs import ConfigCache
from protocol.errors import Denied
from protocol.names import parse_instance_name
from protocol.records import (
    ChildState,
    InstanceStatus,
    LastExit,
    Pid,
    ProcessStatus,
    SandboxStatus,
)
from protocol.structs import dataclass

MAX_ERROR_CHARS = 4000


@dataclass(slots=True)
class History:
    """What the broker remembers of an instance for lithos_ps."""

    starts: int = 0
    last_exit: LastExit | None = None


def _wanted(configs: ConfigCache, sandbox: str) -> tuple[dict[str, int], str | None]:
    """process -> configured Daemon instances, and the sandbox's config error if any."""
    try:
        processes = configs.processes(configs.sandbox(sandbox))
    except Denied as e:
        return {}, e.reason[:MAX_ERROR_CHARS]
    return {name: p.instances for name, p in processes.items() if p.kind.value == "Daemon"}, None


def status_tree(configs: ConfigCache, children: Iterable[Child],
                history: Mapping[str, History], now: float) -> tuple[SandboxStatus, ...]:
    """One SandboxStatus per configured sandbox or sandbox with a live child, by name."""
    by_sandbox: dict[str, list[InstanceStatus]] = {n: [] for n in configs.sandbox_names()}
    live: set[str] = set()
    for child in children:
        live.add(child.instance)
        hist = history.get(child.instance, History())
        by_sandbox.setdefault(child.instance.split("/", 1)[0], []).append(InstanceStatus(
            child.instance, ChildState.RUNNING, Pid(child.pid),
            max(0.0, now - child.started_mono), max(0, hist.starts - 1), hist.last_exit))
    for name, hist in history.items():
        sandbox = name.split("/", 1)[0]
        if name not in live and sandbox in by_sandbox:
            by_sandbox[sandbox].append(InstanceStatus(
                name, ChildState.EXITED, None, None, max(0, hist.starts - 1), hist.last_exit))
    out = []
    for sandbox in sorted(by_sandbox):
        wanted, error = _wanted(configs, sandbox)
        per_process: dict[str, list[InstanceStatus]] = {p: [] for p in wanted}
        for inst in by_sandbox[sandbox]:
            per_process.setdefault(parse_instance_name(inst.instance).process, []).append(inst)
        processes = tuple(
            ProcessStatus(p, wanted.get(p, 0), tuple(sorted(v, key=lambda s: s.instance)))
            for p, v in sorted(per_process.items()))
        out.append(SandboxStatus(sandbox, error, processes))
    return tuple(out)
