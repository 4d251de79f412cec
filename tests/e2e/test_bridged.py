"""Issue 7: bridged networking in real starts of lithos_tree and lithos_cmd (K-30..K-35).

Everything runs inside a network namespace this test made (pinned on a file in
a temp dir): lithos_tree is forked from a thread that setns()ed into it, so the
test netns is the broker's "host" netns; the bridge lives there, and so do the
external ports. Unmounting the pin at the end destroys it with every link in it.
The test asserts from inside the containers: their `ip` output (busybox, in the
stdio log), sockets made in their netns, /proc/<pid>/net.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
INNER_PORT, EXTERNAL_PORT = 7000, 7001

# One echo (one write) per container: the two instances share the stdio log, and their
# lines would interleave (they start within a millisecond of each other).
SHOW = """
executable: /bin/sh
arguments:
- -c
- 'out="$(ip -o addr; ip route; echo "links $(ls /sys/class/net | tr "\\n" " ")";
   echo "up $LITHOS_NAME")"; echo "$out"; exec sleep 1000'
user-id: 1000
group-id: 1000
kill-timeout: 1
tcp-ports:
  7000: {fd: 3}
  7001: {fd: 4, external: true, host: 127.0.0.1}
"""
CMD = """
kind: Command
executable: /bin/sh
arguments: [-c, 'ip -o addr; echo "links $(ls /sys/class/net | tr "\\n" " ")"']
user-id: 1000
group-id: 1000
"""


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """This thread in the netns at `path` for the block (children forked here too)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert _libc.setns(target, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            yield
        finally:
            assert _libc.setns(own, CLONE_NEWNET) == 0
    finally:
        os.close(own)
        os.close(target)


class NetNs:
    """A netns pinned on a file, with lo up and a bridge `bridge` at 10.71.0.1/24."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lt-net-")
        self.path = os.path.join(self.dir, "ns")
        self.bridge = "lt" + secrets.token_hex(4)
        os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
        pid = os.fork()
        if pid == 0:  # unshare a netns and pin it on self.path (same mount ns)
            code = 1
            try:
                if _libc.unshare(CLONE_NEWNET) == 0 and _libc.mount(
                        b"/proc/self/ns/net", self.path.encode(), None, MS_BIND, None) == 0:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.mounted = os.waitstatus_to_exitcode(status) == 0
        assert self.mounted, "creating the test netns failed"
        with IPRoute(netns=self.path, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname=self.bridge, kind="bridge")
            index = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=index, address="10.71.0.1", prefixlen=24)
            ipr.link("set", index=index, state="up")

    def links(self) -> set[str]:
        with IPRoute(netns=self.path, flags=0) as ipr:
            return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

    def cleanup(self) -> None:
        try:
            if self.mounted and _libc.umount2(self.path.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.EINVAL):
                    raise OSError(err, os.strerror(err), self.path)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def testnet() -> Iterator[NetNs]:
    net = NetNs()
    try:
        yield net
    finally:
        net.cleanup()


def bridged_tree(lithos, testnet: NetNs, *, bridge: str | None = None,
                 addresses: str = "[10.71.0.2, 10.71.0.3]", instances: int = 2) -> None:
    lithos.image("n.v1", {"show.yaml": SHOW, "cmd.yaml": CMD})
    lithos.sandbox(
        "net",
        f"allow-tcp-ports: [{EXTERNAL_PORT}]\n"
        f"bridged-network:\n  bridge: {bridge or testnet.bridge}\n  network: 10.71.0.0/24\n"
        f"  default-gateway: 10.71.0.1\n",
        f"app: {{image: n.v1, config: /config/show.yaml, instances: {instances}, "
        f"ip-addresses: {addresses}}}\n"
        f"cmd: {{kind: Command, image: n.v1, config: /config/cmd.yaml, "
        f"ip-addresses: [10.71.0.9]}}\n"
        f"bare: {{kind: Command, image: n.v1, config: /config/cmd.yaml}}\n",
    )  # fmt: skip


def connect_from(netns: str, address: str, port: int) -> None:
    """A TCP connection made from inside `netns` (a listening socket's backlog accepts it)."""
    with in_netns(netns):
        sock = socket.socket()
    with sock:
        sock.settimeout(10)
        sock.connect((address, port))


def veths(testnet: NetNs) -> set[str]:
    return {name for name in testnet.links() if name.startswith("li_")}


def test_two_instances_on_the_bridge(lithos, testnet) -> None:
    """K-30, K-32, K-34, T-13: each container has only lo and its veth, with its address
    and route; they reach each other over the bridge; the external port is on the
    host's loopback; after stop no veth remains."""
    bridged_tree(lithos, testnet)
    with in_netns(testnet.path):
        lithos.start()
    try:
        for i in range(2):
            lithos.wait_stdio("net", rf"^up net/app\.{i}$")
    except AssertionError:
        print("\n".join(lithos.lines_since(0)))
        raise
    log = lithos.stdio_log("net")
    # Inside each container: lo and one li-... veth, the address, the default route.
    blocks = re.findall(r"((?:^\d+: .*\n)+)((?:^(?:default|10\.).*\n)+)^links (.*)\n^up (\S+)$",
                        log, re.M)  # fmt: skip
    assert len(blocks) == 2, log
    seen = {}
    for addrs, routes, links, name in blocks:
        inet = re.findall(r"^\d+: (\S+)\s+inet (\S+)", addrs, re.M)
        ifs = links.split()
        assert len(ifs) == 2 and "lo" in ifs, links
        veth = next(n for n in ifs if n != "lo")
        assert re.fullmatch(r"li-[0-9a-f]{6}-00\d\d", veth), veth
        assert ("lo", "127.0.0.1/8") in inet
        seen[name] = [a for n, a in inet if n == veth]
        assert "default via 10.71.0.1 dev " + veth in routes, routes
    assert seen == {"net/app.0": ["10.71.0.2/24"], "net/app.1": ["10.71.0.3/24"]}
    # Two host ends on the bridge, in the broker's (the test's) netns.
    assert len(veths(testnet)) == 2
    # The broker holds no container netns and no socket of a container's netns.
    broker_fds = [os.readlink(f"/proc/{lithos.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{lithos.pid}/fd")]  # fmt: skip
    assert not [link for link in broker_fds if link.startswith("net:")], broker_fds
    knots = lithos.running()
    services = {name: lithos.service_pid(pid) for name, pid in knots.items()}
    for pid in services.values():  # fd 3: the container's own socket; fd 4: the shared one
        assert os.readlink(f"/proc/{pid}/fd/3") not in broker_fds
        assert os.readlink(f"/proc/{pid}/fd/4") in broker_fds
    # The non-external port is bound inside each container's netns (K-34) ...
    for pid in services.values():
        tcp = Path(f"/proc/{pid}/net/tcp").read_text()
        assert f":{INNER_PORT:04X} 00000000:0000 0A" in tcp, tcp
    # ... and each container reaches the other's over the bridge.
    a, b = (f"/proc/{services[f'net/app.{i}']}/ns/net" for i in range(2))
    connect_from(a, "10.71.0.3", INNER_PORT)
    connect_from(b, "10.71.0.2", INNER_PORT)
    # The external port: bound by the broker in its own netns, on its loopback (T-13).
    connect_from(testnet.path, "127.0.0.1", EXTERNAL_PORT)
    assert f":{EXTERNAL_PORT:04X}" not in Path(f"/proc/{services['net/app.0']}/net/tcp").read_text()
    assert lithos.stop() is not None
    assert veths(testnet) == set()


LOW_PORT = """
executable: /bin/sh
arguments: [-c, 'httpd -p 80 -h /tmp && echo "bound $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
kill-timeout: 1
"""


@pytest.mark.parametrize("init", ["native", "python"])
def test_service_keeps_only_net_bind_service(lithos, testnet, monkeypatch, init) -> None:
    """K-30: as uid 1000 the service binds port 80 in its netns; its only capability is
    CAP_NET_BIND_SERVICE (effective, permitted, ambient), with either pid 1."""
    if init == "python":
        monkeypatch.setenv("LITHOS_KNOT_INIT", "python")
    lithos.image("low.v1", {"low.yaml": LOW_PORT})
    lithos.sandbox("low", f"bridged-network: {{bridge: {testnet.bridge}, network: 10.71.0.0/24}}\n",
                   "low: {image: low.v1, config: /config/low.yaml, ip-addresses: [10.71.0.4]}\n")
    with in_netns(testnet.path):
        lithos.start()
    lithos.wait_stdio("low", r"^bound low/low\.0$")
    knot = lithos.running()["low/low.0"]
    # The service (sh, then sleep) and the httpd it started (daemonized, so the knot's).
    children = Path(f"/proc/{knot}/task/{knot}/children").read_text().split()
    assert len(children) == 2, children
    bit = f"{1 << 10:016x}"  # CAP_NET_BIND_SERVICE
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        caps = dict(re.findall(r"^(Cap\w+):\s+(\w+)$", status, re.M))
        assert (caps["CapEff"], caps["CapPrm"], caps["CapAmb"]) == (bit, bit, bit), caps
        assert re.search(r"^Uid:\s+1000\s", status, re.M)
    service = int(children[0])
    tcp = Path(f"/proc/{service}/net/tcp").read_text() + \
        Path(f"/proc/{service}/net/tcp6").read_text()  # fmt: skip
    assert re.search(r"^\s*\d+: 0+:0050 0+:0000 0A", tcp, re.M), tcp  # httpd: v6 any
    connect_from(testnet.path, "10.71.0.4", 80)  # from the host side of the bridge


def test_service_in_a_user_namespace_binds_low_ports(lithos, testnet) -> None:
    """K-30 with a uid-map: the service's CAP_NET_BIND_SERVICE is its user namespace's,
    not the netns's (the broker made it), so the broker opens low ports to every uid of
    that netns alone (ip_unprivileged_port_start = 0); the host's value is untouched."""
    knob = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    with in_netns(testnet.path):
        host_value = knob.read_text()
    mapped = LOW_PORT + ("uid-map: [{inside: 0, outside: 10000, count: 2000}]\n"
                         "gid-map: [{inside: 0, outside: 10000, count: 2000}]\n")
    lithos.image("low.v1", {"low.yaml": mapped})
    lithos.sandbox("low", f"bridged-network: {{bridge: {testnet.bridge}, network: 10.71.0.0/24}}\n",
                   "low: {image: low.v1, config: /config/low.yaml, ip-addresses: [10.71.0.6]}\n")
    with in_netns(testnet.path):
        lithos.start()
    lithos.wait_stdio("low", r"^bound low/low\.0$")
    knot = lithos.running()["low/low.0"]
    service = int(Path(f"/proc/{knot}/task/{knot}/children").read_text().split()[0])
    status = Path(f"/proc/{service}/status").read_text()
    assert re.search(r"^Uid:\s+11000\s", status, re.M), status  # 1000 inside
    with in_netns(f"/proc/{service}/ns/net"):
        assert knob.read_text() == "0\n"
    with in_netns(testnet.path):
        assert knob.read_text() == host_value
    connect_from(testnet.path, "10.71.0.6", 80)


def test_after_setup_command(lithos, testnet, tmp_path) -> None:
    """K-32: after-setup-command runs with @{container_ip}, in the container's netns but
    the host's other namespaces, with only TERM and PATH in its environment."""
    out = tmp_path / "after"
    script = ('echo "ip=@{container_ip} net=$(readlink /proc/self/ns/net) '
              'mnt=$(readlink /proc/self/ns/mnt) pid=$(readlink /proc/self/ns/pid) '
              'uid=$(id -u) links=$(ls /sys/class/net | tr "\\n" " ")"; env')
    lithos.image("n.v1", {"show.yaml": SHOW})
    lithos.sandbox(
        "net",
        f"allow-tcp-ports: [{EXTERNAL_PORT}]\n"
        f"bridged-network:\n  bridge: {testnet.bridge}\n  network: 10.71.0.0/24\n"
        f"  after-setup-command: [/bin/sh, -c, '{{ {script}; }} > {out}']\n",
        "app: {image: n.v1, config: /config/show.yaml, ip-addresses: [10.71.0.5]}\n",
    )  # fmt: skip
    with in_netns(testnet.path):
        lithos.start()
    lithos.wait_stdio("net", r"^up net/app\.0$")
    service = lithos.service_pid(lithos.running()["net/app.0"])
    text = out.read_text()
    first, env = text.split("\n", 1)
    fields = dict(item.split("=", 1) for item in first.split(" ", 5))
    assert "ip" in fields, text
    assert fields["ip"] == "10.71.0.5"
    assert fields["net"] == os.readlink(f"/proc/{service}/ns/net")
    assert fields["net"] != os.readlink(f"/proc/{lithos.pid}/ns/net")
    assert fields["mnt"] == os.readlink(f"/proc/{lithos.pid}/ns/mnt")  # the host's
    assert fields["pid"] == os.readlink(f"/proc/{lithos.pid}/ns/pid")
    assert fields["uid"] == "0"
    names = {line.split("=", 1)[0] for line in env.splitlines() if "=" in line}
    assert names <= {"TERM", "PATH", "PWD", "SHLVL", "_"}, env  # the last three: sh's own
    assert {"TERM", "PATH"} <= names


def test_missing_bridge_is_a_clear_refusal(lithos, testnet) -> None:
    """A bridge that does not exist: the broker refuses the start naming the sandbox
    file and the key, and leaves no veth behind."""
    bridged_tree(lithos, testnet, bridge="ltnobridge0")
    with in_netns(testnet.path):
        lithos.start()
    match = lithos.wait_for(r"denied StartInstance from supervisor .*net/app\.0.*")
    line = match.group(0)
    assert "sandboxes/net.yaml: bridged-network.bridge" in line, line
    assert '"ltnobridge0" does not exist' in line, line
    assert veths(testnet) == set()
    assert "net/app.0" not in lithos.running()


BAD_ADDRESSES = [
    ("[10.71.0.2, 10.99.0.3]", r"app\.ip-addresses\[1\]: 10\.99\.0\.3 is not inside network "
                               r"10\.71\.0\.0/24"),
    ("[10.71.0.2, 10.71.0.2]", r"app\.ip-addresses\[1\]: 10\.71\.0\.2 is the same as "
                               r"ip-addresses\[0\]"),
    ("[10.71.0.2]", r"app\.ip-addresses: \[1 addresses\] are fewer than instances \(2\)"),
]


@pytest.mark.parametrize(("addresses", "error"), BAD_ADDRESSES)
def test_bad_addresses(lithos, testnet, addresses, error) -> None:
    """K-35 (and inventory rule 2: at start too): lithos_check names the file, the key and
    the value; lithos_tree starts no instance of the process and makes no veth."""
    bridged_tree(lithos, testnet, addresses=addresses)
    check = subprocess.run(
        [sys.executable, "-m", "protocol.config.check", "-C", str(lithos.master)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert check.returncode != 0
    assert re.search(r"processes/net\.yaml: " + error, check.stdout + check.stderr), check
    with in_netns(testnet.path):
        lithos.start()
    lithos.wait_for(error)
    assert lithos.running() == {}
    assert veths(testnet) == set()


def lithos_cmd(lithos, testnet: NetNs, *args: str) -> subprocess.CompletedProcess[str]:
    with in_netns(testnet.path):
        return subprocess.run(
            [sys.executable, "-m", "broker.cmd", "--master", str(lithos.master), *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip


def test_lithos_cmd_in_a_bridged_sandbox(lithos, testnet) -> None:
    """2.3 step 8, K-31: lithos_cmd gives a command ip-addresses[0] on the bridge, or only
    lo when it has none; the veth is gone when it ends."""
    bridged_tree(lithos, testnet)
    done = lithos_cmd(lithos, testnet, "net", "cmd")
    assert done.returncode == 0, done.stderr
    done = lithos_cmd(lithos, testnet, "net", "bare")
    assert done.returncode == 0, done.stderr
    log = lithos.stdio_log("net")
    runs = re.findall(r"((?:^\d+: .*\n)*)^links (.*)$", log, re.M)
    assert len(runs) == 2, log
    (addrs, links), (bare_addrs, bare_links) = runs
    assert re.search(r"li-[0-9a-f]{6}-0009\s+inet 10\.71\.0\.9/24", addrs), log
    assert sorted(links.split()) == ["li-" + links.split("li-")[1].split()[0], "lo"]
    assert bare_links.split() == ["lo"]
    assert "inet 127.0.0.1/8" in bare_addrs
    assert veths(testnet) == set()


def test_stale_veth_is_replaced_and_veth_goes_with_its_container(lithos, testnet) -> None:
    """K-32 step 2: a host-side veth left by an earlier run is deleted before the new
    pair is made; when a container ends its veth is deleted by the broker even while
    something else still holds the container's netns; the restart gets a new pair."""
    from broker.netcheck import veth_names  # the names Lithos gives (K-32 step 1)

    stale, _ = veth_names(testnet.bridge, ipaddress.ip_address("10.71.0.2"))
    with IPRoute(netns=testnet.path, flags=0) as ipr:
        ipr.link("add", ifname=stale, kind="veth", peer={"ifname": "lt" + secrets.token_hex(4)})
    bridged_tree(lithos, testnet)
    with in_netns(testnet.path):
        lithos.start()
    lithos.wait_stdio("net", r"^up net/app\.0$")
    lithos.wait_for(rf'removed stale veth "{stale}" of a previous run')
    assert stale in veths(testnet)
    service = lithos.service_pid(lithos.running()["net/app.0"])
    held = os.open(f"/proc/{service}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        mark = lithos.mark()
        os.kill(service, signal.SIGKILL)  # the knot exits with it; the supervisor restarts
        lithos.wait_for(rf"veth {stale} removed \(net/app\.0 ended\)", start=mark)
        with IPRoute(netns=f"/proc/self/fd/{held}", flags=0) as ipr:
            left = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        assert left == {"lo"}, left  # the old container's netns lost its end too
        lithos.wait_for(r"Forked net/app\.0", start=mark, timeout_s=30)
        assert stale in veths(testnet)
    finally:
        os.close(held)
