"""Fixtures for the bridge kernel tests: throw-away netns, bridges and sockets in them.

Every netns is a bind mount of a fresh namespace on a file in a private temp
dir (not /var/run/netns), so nothing touches the host's interfaces or mounts;
unmounting it at teardown destroys the namespace and every link in it. Names
are `lt<hex>` (<= 15 chars). Cleanup ignores only ENOENT/ENODEV.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def new_name() -> str:
    return "lt" + secrets.token_hex(4)


class Kernel:
    """Creates namespaces and bridges for one test and removes them all at the end."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="lt-bridge-")
        self._mounted: list[str] = []
        # Private namespaces: a fixed test network cannot clash with the host's.
        self.network = IPv4Network("10.71.0.0/24")

    def new_netns(self) -> str:
        """A path to a new, empty network namespace (only lo, down)."""
        path = os.path.join(self.root, new_name())
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
        pid = os.fork()
        if pid == 0:  # child: unshare its netns and pin it on `path` (same mount ns)
            code = 1
            try:
                if _libc.unshare(CLONE_NEWNET) == 0 and _libc.mount(
                        b"/proc/self/ns/net", path.encode(), None, MS_BIND, None) == 0:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "creating a test netns failed"
        self._mounted.append(path)
        return path

    def new_bridge(self, netns: str) -> str:
        name = new_name()
        with IPRoute(netns=netns, flags=0) as ipr:
            ipr.link("add", ifname=name, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        return name

    def links_in(self, netns: str) -> set[str]:
        with IPRoute(netns=netns, flags=0) as ipr:
            return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

    def addresses_in(self, netns: str, ifname: str) -> set[str]:
        with IPRoute(netns=netns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            return {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in ipr.get_addr(index=index)}

    def default_gateway_in(self, netns: str, family: int = socket.AF_INET) -> str | None:
        with IPRoute(netns=netns, flags=0) as ipr:
            for route in ipr.get_routes(family=family, table=254):
                if route["dst_len"] == 0 and route.get_attr("RTA_GATEWAY"):
                    return str(route.get_attr("RTA_GATEWAY"))
        return None

    def socket_in(self, netns: str) -> socket.socket:
        """A TCP socket that lives in `netns` (made by a forked child that setns()es)."""
        return pyroute2_netns.create_socket(netns, socket.AF_INET, socket.SOCK_STREAM,
                                            flags=0)

    def cleanup(self) -> None:
        # Unmounting drops the last reference: the kernel destroys the netns
        # and with it every bridge and veth the test made there.
        for path in reversed(self._mounted):
            if _libc.umount2(path.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENODEV):
                    raise OSError(err, os.strerror(err), path)
        self._mounted.clear()
        shutil.rmtree(self.root)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.cleanup()
