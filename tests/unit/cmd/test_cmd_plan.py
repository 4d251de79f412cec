"""broker.cmd_plan, pure: names (2.3 step 3), kind checks (step 7), the plan of one
run (T-51 names, E-31 extra args, CMD-1 no tcp fds but a bridged sandbox's inner ones),
refusals naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.cmd_plan import CmdError, check_names, find_command, plan_command
from protocol.config import parse_container, parse_master, parse_processes, parse_sandbox

MASTER = b"""
runtime-dir: /run/lt
cgroup-name: lt.slice
stdio-log-dir: /var/log/lt/stderr
"""
SANDBOX = b"""
image-dir: /images
allow-users: [1000]
allow-groups: [1000]
allow-tcp-ports: [8080]
"""
PROCESSES = b"""
job: {image: app.v1, config: /config/job.yaml, kind: Command}
web: {image: app.v1, config: /config/web.yaml}
"""
CONTAINER = b"""
kind: Command
executable: /bin/job
arguments: [--run, "@{lithos:name}"]
user-id: 1000
group-id: 1000
memory-limit: 64Mi
tcp-ports:
  8080: {fd: 3}
"""


def configs(sandbox: bytes = SANDBOX):  # type: ignore[no-untyped-def]
    master = parse_master(MASTER, "/etc/lt/master.yaml")
    sb = parse_sandbox(sandbox, "/etc/lt/sandboxes/sb.yaml", "sb")
    processes = dict(parse_processes(PROCESSES, "/etc/lt/processes/sb.yaml"))
    container = parse_container(CONTAINER, "/images/app.v1/config/job.yaml")
    return master, sb, processes, container


def test_plan_names_args_and_no_tcp_fds() -> None:
    master, sb, processes, container = configs()
    process = find_command("job", sb, processes, "/etc/lt/processes/sb.yaml")
    plan = plan_command("job", 4121, ["x", "y z"], master, sb, process, container)
    assert plan.name == "sb/cmd.job.4121"
    assert plan.spec.name == "sb/cmd.job.4121"
    assert plan.spec.argv == ("/bin/job", "--run", "sb/cmd.job.4121", "x", "y z")
    assert plan.spec.tcp_fds == () and plan.ports == ()
    assert plan.cgroup == "lt.slice/sb:cmd.job.4121.scope"
    assert plan.state_dir == Path("/run/lt/state/sb/cmd.job.4121")
    assert plan.stdio_log == Path("/var/log/lt/stderr/sb.log")
    assert plan.memory_limit == 64 * 1024 * 1024


def test_daemon_and_unknown_entries_refused() -> None:
    _, sb, processes, _ = configs()
    with pytest.raises(CmdError, match=r"sb\.yaml: web\.kind: The target container is: Daemon"):
        find_command("web", sb, processes, "/etc/lt/processes/sb.yaml")
    with pytest.raises(CmdError, match=r'Command "nope" not found.*commands there: job'):
        find_command("nope", sb, processes, "/etc/lt/processes/sb.yaml")


@pytest.mark.parametrize(
    ("sandbox", "name"), [("s/b", "job"), ("sb", "../x"), ("", "job"), ("sb", "a.b"), ("sb", "é")]
)
def test_bad_names_refused(sandbox: str, name: str) -> None:
    with pytest.raises(CmdError, match="Wrong (sandbox|command) name"):
        check_names(sandbox, name)


def test_port_outside_the_sandbox_refused() -> None:
    master, sb, processes, container = configs(SANDBOX.replace(b"8080", b"9090"))
    process = find_command("job", sb, processes, "/etc/lt/processes/sb.yaml")
    with pytest.raises(CmdError, match="can't instantiate: .*job.yaml"):
        plan_command("job", 1, [], master, sb, process, container)


def test_bridged_sandbox_gets_a_netns_and_its_inner_ports() -> None:
    """K-31, CMD-1: no ip-addresses -> a netns with only lo; the non-external tcp-ports are
    opened inside it, so they are the command's tcp fds; the service keeps
    CAP_NET_BIND_SERVICE (K-30)."""
    bridged = SANDBOX + b"bridged-network: {bridge: br0, network: 10.0.0.0/24}\n"
    master, sb, processes, container = configs(bridged)
    process = find_command("job", sb, processes, "/etc/lt/processes/sb.yaml")
    plan = plan_command("job", 1, [], master, sb, process, container)
    assert plan.network is not None
    assert plan.network.bridge == "br0" and plan.network.address is None
    assert [(p.port, p.fd) for p in plan.network.ports] == [(8080, 3)]
    assert plan.spec.tcp_fds == (3,) and plan.ports == ()
    assert plan.spec.net_bind_service


@pytest.mark.parametrize(("kind", "ok"), [("CommandOrDaemon", True), ("Daemon", False)])
def test_container_kind_must_allow_command(kind: str, ok: bool) -> None:
    master, sb, processes, _ = configs()
    container = parse_container(
        CONTAINER.replace(b"kind: Command", f"kind: {kind}".encode()),
        "/images/app.v1/config/job.yaml",
    )
    process = find_command("job", sb, processes, "/etc/lt/processes/sb.yaml")
    if ok:
        assert plan_command("job", 7, [], master, sb, process, container).name == "sb/cmd.job.7"
    else:
        with pytest.raises(CmdError, match=r"job\.yaml: kind: Daemon does not match kind Command"):
            plan_command("job", 7, [], master, sb, process, container)
