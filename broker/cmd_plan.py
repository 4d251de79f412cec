"""lithos_cmd's policy: (sandbox, command name, pid, extra args, configs) -> a StartPlan.

Pure: no os, socket, time or subprocess; the caller (broker/cmd.py) loads the
configs and carries the plan out. Reuses broker/policy.py (build_spec, the same
StartPlan) so that a Command is checked against its sandbox exactly as a daemon
instance is. Rules (inventory 2.3):
- Names are `^[\\w-]+$` (ASCII), checked before any path is built from them.
- The entry must be kind Command; the container's kind must match (Command or
  CommandOrDaemon, checked by instantiate).
- Index 0 is instantiated with the name `<sandbox>/cmd.<name>.<pid>` (T-51);
  extra args come after `arguments` (E-31).
- No tcp-ports are provided by lithos_cmd (CMD-1): the plan has no ports and
  the spec no tcp fds.
- Every refusal is a CmdError naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from broker.policy import StartPlan, build_spec, plan_network
from protocol.config import (
    ConfigError,
    ContainerConfig,
    Kind,
    MasterConfig,
    ProcessConfig,
    SandboxConfig,
    check_process,
    instantiate,
)
from protocol.errors import Denied
from protocol.names import NAME_RULE, is_name


class CmdError(Exception):
    """lithos_cmd cannot run the command; the message is one line for `Fatal error: `."""


def check_names(sandbox: str, name: str) -> None:
    """Step 3: `Wrong sandbox name: X` / `Wrong command name: X`."""
    if not is_name(sandbox):
        raise CmdError(f"Wrong sandbox name: {sandbox!r} ({NAME_RULE})")
    if not is_name(name):
        raise CmdError(f"Wrong command name: {name!r} ({NAME_RULE})")


def command_name(sandbox: str, name: str, pid: int) -> str:
    """T-51: `<sandbox>/cmd.<name>.<pid of lithos_cmd>`."""
    return f"{sandbox}/cmd.{name}.{pid}"


def find_command(
    name: str, sandbox: SandboxConfig, processes: dict[str, ProcessConfig], processes_file: str
) -> ProcessConfig:
    """Step 7: the entry `name`, which must be kind Command."""
    process = processes.get(name)
    if process is None:
        known = sorted(n for n, p in processes.items() if p.kind is Kind.COMMAND)
        raise CmdError(
            f'{processes_file}: Command "{name}" not found in the process config of sandbox '
            f"{sandbox.name!r} (commands there: {', '.join(known) or 'none'})"
        )
    if process.kind is not Kind.COMMAND:
        raise CmdError(
            f"{process.path}: {name}.kind: The target container is: {process.kind.value} "
            "(lithos_cmd runs only entries with kind: Command; daemons are run by lithos_tree)"
        )
    return process


def plan_command(
    name: str,
    pid: int,
    extra_args: Sequence[str],
    master: MasterConfig,
    sandbox: SandboxConfig,
    process: ProcessConfig,
    container: ContainerConfig,
) -> StartPlan:
    """Steps 8-9: everything one run of command `name` does, checked against the sandbox.

    Raises:
        CmdError: naming the file, the key and the value at fault.
    """
    problems = check_process(sandbox, process)
    if problems:
        raise CmdError(f"can't instantiate: {ConfigError(problems)}")
    full_name = command_name(sandbox.name, name, pid)
    try:
        made = instantiate(container, process, sandbox, full_name, 0)
    except ConfigError as e:
        raise CmdError(f"can't instantiate: {e}") from None
    made = dataclasses.replace(made, arguments=(*made.arguments, *extra_args))
    state_dir = master.state_dir / sandbox.name / f"cmd.{name}.{pid}"
    try:
        spec = build_spec(made, master, sandbox, state_dir)
    except Denied as e:  # volumes or secrets against the sandbox
        raise CmdError(f"can't instantiate: {e.reason}") from None
    # CMD-1: no tcp-ports, except in a bridged sandbox the non-external ones, which
    # are opened inside its netns (K-34). Its address is ip-addresses[0], if any (K-31).
    network = plan_network(made, sandbox, user_namespace=bool(spec.uid_map or spec.gid_map))
    inner = tuple(sorted(p.fd for p in network.ports)) if network is not None else ()
    if set(inner) & {1, 2}:
        raise CmdError(f"can't instantiate: {container.path}: tcp-ports: fd {sorted(inner)} "
                       "uses stdout/stderr (use 0 or a number >= 3)")
    spec = dataclasses.replace(spec, tcp_fds=inner)
    cgroup = None
    if master.cgroup_name is not None:
        cgroup = f"{master.cgroup_name}/{sandbox.name}:cmd.{name}.{pid}.scope"
    return StartPlan(
        name=full_name,
        spec=spec,
        ports=(),
        cgroup=cgroup,
        memory_limit=container.memory_limit,
        cpu_shares=container.cpu_shares,
        stdio_log=master.stdio_log_dir / f"{sandbox.name}.log",
        state_dir=state_dir,
        network=network,
    )
