"""Reading the configs into the desired set: every Daemon instance with its spec.

Owns the supervisor's config reads (it runs unprivileged and reads what the broker
will read again and check). Rules: a sandbox or a process entry whose config fails
to load becomes a ConfigFailure and keeps its running instances (decision 4);
Command entries are never wanted by the daemon (E-7). The fingerprint is
protocol.fingerprint's, the same the broker recomputes at each start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.config import (
    ConfigError,
    Kind,
    MasterConfig,
    Problem,
    ProcessConfig,
    SandboxConfig,
    image_path,
    list_sandboxes,
    load_processes,
    load_sandbox,
    parse_container,
    process_config_path,
    read_in_image,
)
from protocol.fingerprint import fingerprint
from supervisor.events import InstanceSpec
from supervisor.plan import ConfigFailure, DesiredInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Desired:
    instances: dict[str, DesiredInstance]
    failures: list[ConfigFailure]
    sandboxes: int  # sandbox configs that loaded (master.sandboxes metric)


def _entry(sandbox: SandboxConfig, name: str, process: ProcessConfig) -> list[DesiredInstance]:
    image = image_path(sandbox, process)
    if isinstance(image, Problem):
        raise ConfigError([image])
    data = read_in_image(image, process.config)
    container = parse_container(data, f"{image}{process.config}")
    out = []
    for index in range(process.instances):
        ports = frozenset(
            f"{cfg.host}:{key}" for key, cfg in container.tcp_ports.items() if "@{" not in key
        )
        spec = InstanceSpec(
            fingerprint(process, index, data),
            float(container.restart_timeout),
            float(container.kill_timeout),
        )
        out.append(DesiredInstance(sandbox.name, name, index, spec, ports))
    return out


def load_desired(master: MasterConfig) -> Desired:
    """Every wanted instance, and every config that failed to load."""
    instances: dict[str, DesiredInstance] = {}
    failures: list[ConfigFailure] = []
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
        for name, process in processes.items():
            if process.kind is not Kind.DAEMON:
                continue
            try:
                for d in _entry(sandbox, name, process):
                    instances[d.name] = d
            except ConfigError as e:
                log.error("%s/%s: config failed to load: %s", sb_name, name, e)
                failures.append(ConfigFailure(sb_name, name, str(e)))
    return Desired(instances, failures, loaded)
