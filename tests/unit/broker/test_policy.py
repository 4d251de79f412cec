"""broker.policy: the sandbox is enforced on every start (decision 2), and the
knot's spec says exactly what the configs say. Pure: configs parsed from bytes."""

from __future__ import annotations

import pytest

from broker.policy import parse_instance, plan_start
from knot import spec as ks
from protocol.config import parse_container, parse_master, parse_processes, parse_sandbox
from protocol.errors import Denied
from protocol.records import DenyCode

MASTER = b"runtime-dir: /run/lt\ncgroup-name: lt.slice\n"
SANDBOX = b"""
image-dir: /images
allow-users: [1000-1999]
allow-groups: [1000-1999]
allow-tcp-ports: [8080]
readonly-paths: {/usr: /usr}
writable-paths: {/data: /srv/data}
additional-hosts: {b.example: 10.0.0.2, a.example: 10.0.0.1}
secrets-private-key: /etc/lithos/key
"""
PROCESSES = b"""
web: {image: web.v1, config: /config/web.yaml, instances: 2, variables: {port: "8080"}}
once: {kind: Command, image: web.v1, config: /config/web.yaml}
"""
CONTAINER = b"""
user-id: 1000
group-id: 1001
variables:
  port: !TcpPort
tcp-ports: {"@{port}": {fd: 3, listen-backlog: 7}}
volumes:
  /tmp: !Tmpfs {size: 1Mi, mode: 0o700}
  /usr: !Readonly /usr
  /data/x: !Persistent {path: /data/x, mkdir: true, user: 5, mode: 0o750}
  /state: !Statedir {path: /sub}
executable: /bin/app
arguments: ["--name=@{lithos:name}", "--port=@{port}"]
environ: {A: "1", PID: "@{lithos:pid}"}
secret-environ: {S: "v2:x"}
memory-limit: 1Mi
"""


def plan(
    name: str = "web/web.1",
    *,
    container: bytes = CONTAINER,
    sandbox: bytes = SANDBOX,
    processes: bytes = PROCESSES,
):
    master = parse_master(MASTER, "/etc/lithos/master.yaml")
    sb = parse_sandbox(sandbox, "/etc/lithos/sandboxes/web.yaml", "web")
    procs = dict(parse_processes(processes, "/etc/lithos/processes/web.yaml"))
    cont = parse_container(container, "/images/web.v1/config/web.yaml")
    return plan_start(name, master, sb, procs, cont)


def test_plan_matches_configs() -> None:
    p = plan()
    s = p.spec
    assert s.name == "web/web.1" and s.kind is ks.Kind.DAEMON
    assert s.image_root == "/images/web.v1"
    assert s.state_dir == "/run/lt/state/web/web.1" == str(p.state_dir)
    assert s.argv == ("/bin/app", "--name=web/web.1", "--port=8080")
    assert dict(s.environ) == {"A": "1"} and s.pid_env_vars == ("PID",)
    assert (s.uid, s.gid) == (1000, 1001)
    assert [(v.kind, v.target) for v in s.volumes] == [
        (ks.VolumeKind.TMPFS, "/tmp"),
        (ks.VolumeKind.READONLY, "/usr"),
        (ks.VolumeKind.STATEDIR, "/state"),
        (ks.VolumeKind.PERSISTENT, "/data/x"),
    ]
    tmp, usr, state, data = s.volumes
    assert (tmp.size_bytes, tmp.mode) == (1 << 20, 0o700)
    assert usr.source == "/usr"
    assert state.source == "/run/lt/state/web/web.1/sub"
    assert (data.source, data.mkdir, data.user, data.mode) == ("/srv/data/x", True, 5, 0o750)
    assert s.hosts_file.additional_hosts == (("a.example", "10.0.0.1"), ("b.example", "10.0.0.2"))
    assert s.secrets is not None and s.secrets.namespaces == ("",)
    assert s.tcp_fds == (3,)
    assert [(r.host, r.port, r.fd, r.settings.listen_backlog) for r in p.ports] == [
        ("0.0.0.0", 8080, 3, 7)
    ]
    assert p.cgroup == "lt.slice/web:web.1.scope"
    assert p.memory_limit == 1 << 20
    assert str(p.stdio_log) == "/var/log/lithos/stderr/web.log"


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("web/web.2", DenyCode.UNKNOWN_INSTANCE, "instances: 2"),
        ("web/nope.0", DenyCode.UNKNOWN_PROCESS, "nope"),
        ("web/once.0", DenyCode.POLICY, "lithos_cmd"),
        ("../etc/web.0", DenyCode.UNKNOWN_INSTANCE, "SANDBOX/PROCESS.N"),
        ("web/web.0 ", DenyCode.UNKNOWN_INSTANCE, "SANDBOX/PROCESS.N"),
        ("web/web.-1", DenyCode.UNKNOWN_INSTANCE, "SANDBOX/PROCESS.N"),
    ],
)
def test_request_shape_denied(name: str, code: DenyCode, words: str) -> None:
    with pytest.raises(Denied) as e:
        plan(name)
    assert e.value.code is code and words in e.value.reason


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (b"user-id: 1000", b"user-id: 0", "user-id: 0 is not in allow-users"),
        (b"group-id: 1001", b"group-id: 5", "group-id: 5 is not in allow-groups"),
        (b"fd: 3, listen", b"fd: 3, external: true, listen", None),  # still allowed port
        (b"/usr: !Readonly /usr", b"/usr: !Readonly /opt", "readonly-paths"),
        (b"path: /data/x, mkdir", b"path: /elsewhere, mkdir", "writable-paths"),
        (b"--port=@{port}", b"--port=@{nope}", "@{nope}"),
    ],
)
def test_container_policy_denied(old: bytes, new: bytes, words: str | None) -> None:
    assert old in CONTAINER
    container = CONTAINER.replace(old, new)
    if words is None:
        plan(container=container)
        return
    with pytest.raises(Denied) as e:
        plan(container=container)
    assert "/images/web.v1/config/web.yaml" in e.value.reason
    assert words in e.value.reason


def test_port_outside_allow_tcp_ports_is_denied_at_start() -> None:
    with pytest.raises(Denied) as e:
        plan(processes=PROCESSES.replace(b'port: "8080"', b'port: "9090"'))
    assert "9090" in e.value.reason and "allow-tcp-ports" in e.value.reason


def test_image_outside_image_dir_levels_is_denied() -> None:
    with pytest.raises(Denied) as e:
        plan(processes=PROCESSES.replace(b"image: web.v1, config", b"image: ../x, config"))
    assert "image-dir-levels" in e.value.reason


def test_secrets_need_a_key() -> None:
    with pytest.raises(Denied) as e:
        plan(sandbox=SANDBOX.replace(b"secrets-private-key: /etc/lithos/key\n", b""))
    assert "secrets-private-key" in e.value.reason


def test_parse_instance() -> None:
    n = parse_instance("a-b/c_d.12")
    assert (n.sandbox, n.process, n.index, str(n)) == ("a-b", "c_d", 12, "a-b/c_d.12")


BRIDGED = SANDBOX + b"""
bridged-network:
  bridge: br0
  network: 10.0.0.0/24
  default-gateway: 10.0.0.1
  after-setup-command: [/usr/bin/arping, "@{container_ip}"]
"""
BRIDGED_CONTAINER = CONTAINER.replace(
    b'tcp-ports: {"@{port}": {fd: 3, listen-backlog: 7}}',
    b'tcp-ports: {"@{port}": {fd: 3}, "80": {fd: 4, external: true}}')
BRIDGED_SANDBOX = BRIDGED.replace(b"allow-tcp-ports: [8080]", b"allow-tcp-ports: [80]")


def test_bridged_plan_carries_the_instance_address_and_splits_ports() -> None:
    """K-30, K-32, K-34, T-13: instance i gets ip-addresses[i]; non-external ports are for
    inside its netns, external ones for the broker's port table; CAP_NET_BIND_SERVICE."""
    procs = PROCESSES.replace(b'variables: {port: "8080"}',
                              b'variables: {port: "8080"}, ip-addresses: [10.0.0.5, 10.0.0.6]')
    p = plan("web/web.1", container=BRIDGED_CONTAINER, sandbox=BRIDGED_SANDBOX, processes=procs)
    net = p.network
    assert net is not None
    assert (net.bridge, str(net.address), net.prefixlen, str(net.gateway)) == \
        ("br0", "10.0.0.6", 24, "10.0.0.1")  # fmt: skip
    assert net.after_setup_command == ("/usr/bin/arping", "@{container_ip}")
    assert [(r.port, r.fd) for r in net.ports] == [(8080, 3)]
    assert [(r.port, r.fd) for r in p.ports] == [(80, 4)]
    assert p.spec.tcp_fds == (3, 4) and p.spec.net_bind_service
    assert dict(net.files)["bridged-network"] == "/etc/lithos/sandboxes/web.yaml"


def test_unbridged_plan_has_no_network() -> None:
    p = plan()
    assert p.network is None and not p.spec.net_bind_service


def test_bridged_addresses_checked_at_start() -> None:
    """Inventory rule 2: what lithos_check reports (K-35) is refused at start too."""
    procs = PROCESSES.replace(b'variables: {port: "8080"}',
                              b'variables: {port: "8080"}, ip-addresses: [10.0.0.5, 10.0.0.5]')
    with pytest.raises(Denied, match=r"web\.ip-addresses\[1\]: 10\.0\.0\.5 is the same as"):
        plan("web/web.0", container=BRIDGED_CONTAINER, sandbox=BRIDGED_SANDBOX, processes=procs)
