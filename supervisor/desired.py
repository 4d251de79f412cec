"""Reading the configs into the desired set: every Daemon instance with its spec.

Owns the supervisor's config reads (it runs unprivileged and reads what the broker
will read again and check). Rules: a sandbox or a process entry whose config fails
to load becomes a ConfigFailure and keeps its running instances (decision 4);
Command entries are never wanted by the daemon (E-7). An entry is checked as the
broker will check each start (check_process, instantiate), so a config the broker
would refuse never stops what runs. The fingerprint is
protocol.fingerprint's, the same the broker recomputes at each start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from protocol.config import (
    ConfigError,
    Kind,
    MasterConfig,
    Problem,
    ProcessConfig,
    SandboxConfig,
    check_process,
    image_path,
    instantiate,
    list_sandboxes,
    load_processes,
    load_sandbox,
    parse_container,
    process_config_path,
    read_in_image,
)
from protocol.fingerprint import fingerprint
from protocol.structs import dataclass
from supervisor.events import InstanceSpec
from supervisor.plan import ConfigFailure, DesiredInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Desired:
    """What the configs want now: the instances to run, and what failed to load."""

    instances: dict[str, DesiredInstance]
    failures: list[ConfigFailure]
    sandboxes: int  # sandbox configs that loaded (master.sandboxes metric)
    # Every configured Daemon entry (sandbox, process), `instances: 0` and entries
    # that failed to load included: each has its processes.* metrics (X-M4).
    entries: frozenset[tuple[str, str]] = frozenset()


FingerprintOf = Callable[[ProcessConfig, int, bytes], str]


def entry_instances(
    sandbox: SandboxConfig,
    name: str,
    process: ProcessConfig,
    fingerprint_of: FingerprintOf = fingerprint,
) -> list[DesiredInstance]:
    """The instances of one Daemon entry, checked as the broker will check them.

    Raises: ConfigError (the entry then keeps what runs, decision 4).
    """
    image = image_path(sandbox, process)
    if isinstance(image, Problem):
        raise ConfigError([image])
    problems = check_process(sandbox, process)
    if problems:
        raise ConfigError(problems)
    data = read_in_image(image, process.config)
    container = parse_container(data, f"{image}{process.config}")
    # Without ip-addresses the index is not part of an instance's identity (P-2):
    # one fingerprint serves every instance (1000 instances: one hash, not 1000).
    shared = None if process.ip_addresses else fingerprint_of(process, 0, data)
    out = []
    for index in range(process.instances):
        # The broker's own check (variables, ports, ids): a container the broker
        # would refuse is a config failure here, so what runs is kept (decision 4)
        # instead of being stopped for a start that cannot succeed.
        made = instantiate(container, process, sandbox, f"{sandbox.name}/{name}.{index}", index)
        ports = frozenset(f"{cfg.host}:{port}" for port, cfg in made.tcp_ports.items())
        spec = InstanceSpec(
            shared if shared is not None else fingerprint_of(process, index, data),
            float(container.restart_timeout),
            float(container.kill_timeout),
        )
        out.append(DesiredInstance(sandbox.name, name, index, spec, ports))
    return out


def desired_of(
    sandbox: SandboxConfig,
    processes: Mapping[str, ProcessConfig],
    fingerprint_of: FingerprintOf = fingerprint,
) -> tuple[dict[str, DesiredInstance], list[ConfigFailure]]:
    """Every Daemon instance of one sandbox, and the entries that failed to load."""
    out: dict[str, DesiredInstance] = {}
    failures: list[ConfigFailure] = []
    for name, process in processes.items():
        if process.kind is not Kind.DAEMON:
            continue
        try:
            for d in entry_instances(sandbox, name, process, fingerprint_of):
                out[d.name] = d
        except ConfigError as e:
            log.error("%s/%s: config failed to load: %s", sandbox.name, name, e)
            failures.append(ConfigFailure(sandbox.name, name, str(e)))
    return out, failures


def load_desired(master: MasterConfig) -> Desired:
    """Every wanted instance, and every config that failed to load."""
    instances: dict[str, DesiredInstance] = {}
    failures: list[ConfigFailure] = []
    entries: set[tuple[str, str]] = set()
    loaded = 0
    try:
        names = list_sandboxes(master)
    except ConfigError as e:
        log.error("%s", e)
        return Desired({}, [ConfigFailure("*", None, str(e))], 0)
    for sb_name, path in names.items():
        try:
            sandbox = load_sandbox(path)
            processes = load_processes(process_config_path(master, sandbox))
        except ConfigError as e:
            log.error("sandbox %s: config failed to load: %s", sb_name, e)
            failures.append(ConfigFailure(sb_name, None, str(e)))
            continue
        loaded += 1
        wanted, failed = desired_of(sandbox, processes)
        instances.update(wanted)
        failures += failed
        entries.update((sandbox.name, name) for name, process in processes.items()
                       if process.kind is Kind.DAEMON)  # fmt: skip
    return Desired(instances, failures, loaded, frozenset(entries))
