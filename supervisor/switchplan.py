"""lithos_switch's plan: what switching one sandbox to a new process config would do.

Owns: the desired instances of one sandbox computed from a process config on
disk (the same image reads and instantiation as lithos_check and the broker),
the live instance table rebuilt from a StatusTree, and the list of planned
changes with their reasons (supervisor.plan.dry_run) plus the goal `--wait`
waits for. Rules: reads files, never writes; the reasons name what changed
(`variables`, `image`, `container-config`...), so the spec fingerprint here is
the P-2 identity JSON plus a hash of the container config bytes: the same
changes as protocol.fingerprint, in a form that can be described.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from protocol import messages as m
from protocol.config import (
    ConfigError,
    ProcessConfig,
    SandboxConfig,
    instance_fingerprint,
    load_processes,
)
from protocol.digest import sha256
from protocol.records import ChildState
from protocol.structs import dataclass
from supervisor import desired
from supervisor.events import InstanceSpec, Pid
from supervisor.lifecycle import Instance, State
from supervisor.plan import ConfigFailure, DesiredInstance, PlannedChange, dry_run

UNKNOWN = InstanceSpec("unknown")


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    """What lithos_switch will change, and which instances it waits for."""

    changes: list[PlannedChange]
    wanted: frozenset[str]  # instances that must run after the switch
    fresh: frozenset[str]  # of those, the ones that must be (re)started
    gone: frozenset[str]  # instances that must stop
    # instance -> the broker's fingerprint of the new config: a knot recorded with it
    # already runs the new config (a switch pushed before the tree applied the last one)
    fingerprints: Mapping[str, str] = field(default_factory=dict)


def readable_identity(process: ProcessConfig, index: int, data: bytes) -> str:
    """A fingerprint people can diff: the P-2 identity plus the container config's digest."""
    identity = json.loads(instance_fingerprint(process, index))
    identity["container_config"] = sha256(data).hexdigest()[:16]
    return json.dumps(identity, sort_keys=True)


def desired_of(sandbox: SandboxConfig, processes: Mapping[str, ProcessConfig]
               ) -> tuple[dict[str, DesiredInstance], list[ConfigFailure]]:
    """Every Daemon instance of one sandbox, with a fingerprint the plan can describe."""
    return desired.desired_of(sandbox, processes, readable_identity)


def load_desired(sandbox: SandboxConfig, path: Path
                 ) -> tuple[dict[str, DesiredInstance], list[ConfigFailure]]:
    """The desired set of a process config file; a missing file wants nothing."""
    if not path.exists():
        return {}, []
    try:
        processes = load_processes(path)
    except ConfigError as e:
        return {}, [ConfigFailure(sandbox.name, None, str(e))]
    return desired_of(sandbox, processes)


def broker_fingerprints(sandbox: SandboxConfig, path: Path) -> dict[str, str]:
    """Instance -> protocol.fingerprint (the broker's) of a process config; {} if broken."""
    try:
        wanted, _ = desired.desired_of(sandbox, load_processes(path))
    except ConfigError:
        return {}
    return {name: d.spec.fingerprint for name, d in wanted.items()}


def recorded(runtime_dir: Path) -> dict[str, tuple[int, str]]:
    """Instance -> (knot pid, fingerprint) from the broker's child records (root reads)."""
    out: dict[str, tuple[int, str]] = {}
    with contextlib.suppress(OSError):
        for path in (runtime_dir / "children").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                rec = json.loads(path.read_text())
                out[str(rec["instance"])] = (int(rec["pid"]), str(rec["fingerprint"]))
    return out


def live_table(status: m.StatusTree | None, sandbox: str,
               previous: dict[str, DesiredInstance], now: float) -> dict[str, Instance]:
    """The sandbox's instances as the broker reports them, as lifecycle Instances.

    A running instance is assumed to run the previous config (the one on disk):
    GetStatus carries no fingerprint.
    """
    table: dict[str, Instance] = {}
    if status is None:
        return table
    for sb in status.sandboxes:
        if sb.name != sandbox:
            continue
        for p in sb.processes:
            for i in p.instances:
                d = previous.get(i.instance)
                spec = d.spec if d is not None else UNKNOWN
                if i.state is not ChildState.EXITED and i.pid is not None:
                    table[i.instance] = Instance(
                        i.instance, spec, State.RUNNING, Pid(int(i.pid)), spec.fingerprint,
                        now - (i.uptime_s or 0.0))
                elif d is not None:  # waiting for its restart
                    table[i.instance] = Instance(i.instance, spec, State.BACKOFF,
                                                 fingerprint=spec.fingerprint, deadline=now)
    return table


def plan_switch(sandbox: SandboxConfig, old_path: Path, new_path: Path,
                status: m.StatusTree | None, now: float) -> SwitchPlan:
    previous, _ = load_desired(sandbox, old_path)
    desired, failures = load_desired(sandbox, new_path)
    if status is None:  # no tree runs: compare the configs as if it ran the current one
        table = {n: Instance(n, d.spec, State.RUNNING, Pid(0), d.spec.fingerprint, now)
                 for n, d in previous.items()}
    else:
        table = live_table(status, sandbox.name, previous, now)
    changes = dry_run(previous, desired, failures, table, now)
    fresh = frozenset(c.subject for c in changes
                      if c.text.startswith(("start:", "restart:")) and c.subject in desired)
    frozen = {f.sandbox if f.process is None else f"{f.sandbox}/{f.process}"
              for f in failures}  # decision 4: a failed config keeps its instances

    def kept(name: str) -> bool:
        return name.split("/", 1)[0] in frozen or name.rsplit(".", 1)[0] in frozen

    gone = frozenset(n for n in table if n not in desired and not kept(n))
    return SwitchPlan(changes, frozenset(desired), fresh, gone,
                      broker_fingerprints(sandbox, new_path))


def unmet(plan: SwitchPlan, status: m.StatusTree, sandbox: str, since_s: float,
          records: Mapping[str, tuple[int, str]] | None = None) -> list[str]:
    """What is not yet as planned, `since_s` seconds after the reload was asked for.

    A fresh instance is done when it started after the reload, or when its knot's
    record (`records`, from `recorded`) carries the new config's fingerprint.
    """
    records = records or {}
    running: dict[str, float] = {}
    pids: dict[str, int] = {}
    for sb in status.sandboxes:
        if sb.name != sandbox:
            continue
        for p in sb.processes:
            for i in p.instances:
                if i.state is ChildState.RUNNING and i.uptime_s is not None:
                    running[i.instance] = i.uptime_s
                    pids[i.instance] = int(i.pid) if i.pid is not None else -1
    out = []
    for name in sorted(plan.wanted):
        if name not in running:
            out.append(f"{name}: not running")
        elif (name in plan.fresh and running[name] > since_s
              and records.get(name) != (pids[name], plan.fingerprints.get(name))):
            out.append(f"{name}: not restarted yet")
    out.extend(f"{name}: still running" for name in sorted(plan.gone) if name in running)
    return out
