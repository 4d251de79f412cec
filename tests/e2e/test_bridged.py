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
import os
import re
import secrets
import shutil
import socket
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

SHOW = """
executable: /bin/sh
arguments:
- -c
- 'ip -o addr; ip route; echo "links $(ls /sys/class/net | tr "\\n" " ")";
   echo "up $LITHOS_NAME"; exec sleep 1000'
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
    knots = lithos.running()
    services = {name: lithos.service_pid(pid) for name, pid in knots.items()}
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
