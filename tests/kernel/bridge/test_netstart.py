"""broker.netstart on real namespaces: the network step of a bridged start (K-30..K-34).

The calling thread is moved into a "host" netns the test made (bridge.inside_netns),
so the new container netns, the veth and the ports never touch the real host.
On failure nothing is left: no veth on the bridge, no fd in this process.
"""

from __future__ import annotations

import os
import socket
from ipaddress import ip_address

import pytest

from broker import netstart
from broker.bridge import inside_netns
from broker.policy import NetPlan, PortRequest
from protocol.config import TcpPortConfig

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

FILES = (("bridged-network", "/etc/lithos/sandboxes/web.yaml"),
         ("ip-addresses", "/etc/lithos/processes/web.yaml"),
         ("tcp-ports", "/images/web/config/web.yaml"))


def plan(bridge: str, *, host: str = "0.0.0.0", after: tuple[str, ...] = (),
         address: str | None = "10.71.0.2") -> NetPlan:
    port = PortRequest(host, 7000, 3, TcpPortConfig(fd=3, host=ip_address(host)))
    return NetPlan(bridge, ip_address(address) if address else None, 24,
                   ip_address("10.71.0.1") if address else None, after, (port,), FILES)


def host_veths(kernel, host: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {name for name in kernel.links_in(host) if name.startswith("li_")}


def test_prepare_connects_binds_inside_and_discard_removes(kernel, no_fd_leak: None) -> None:
    host = kernel.new_netns()
    bridge = kernel.new_bridge(host)
    host_fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with inside_netns(host_fd):
            net = netstart.prepare(plan(bridge))
        try:
            inside = f"/proc/self/fd/{net.netns_fd}"
            assert kernel.links_in(inside) == {"lo", net.veth.replace("_", "-")}
            v4 = {a for a in kernel.addresses_in(inside, net.veth.replace("_", "-")) if "." in a}
            assert v4 == {"10.71.0.2/24"}  # and the kernel's own IPv6 link-local
            assert kernel.default_gateway_in(inside) == "10.71.0.1"
            assert host_veths(kernel, host) == {net.veth}
            sock = socket.socket(fileno=os.dup(net.fds[3]))
            with sock:  # listening, in the container's netns: reachable at its address
                assert sock.getsockname() == ("0.0.0.0", 7000)
                client = kernel.socket_in(inside)
                with client:
                    client.connect(("10.71.0.2", 7000))
        finally:
            with inside_netns(host_fd):
                netstart.discard(net, "test")
        assert host_veths(kernel, host) == set()
        assert net.netns_fd == -1 and net.fds == {}
    finally:
        os.close(host_fd)


def test_isolated_netns_has_only_lo(kernel, no_fd_leak: None) -> None:
    """K-31: no address -> lo, up, and nothing else; the ports are still bound in it."""
    host = kernel.new_netns()
    host_fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with inside_netns(host_fd):
            net = netstart.prepare(plan("unused0", address=None))
        try:
            assert net.veth == ""
            assert kernel.links_in(f"/proc/self/fd/{net.netns_fd}") == {"lo"}
            assert sorted(net.fds) == [3]
        finally:
            netstart.discard(net)
    finally:
        os.close(host_fd)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"host": "10.71.0.99"},
     r"^/images/web/config/web\.yaml: tcp-ports: 7000: listening on 10\.71\.0\.99:7000: "
     r"Cannot assign requested address \(inside the container's network namespace\)$"),
    ({"after": ("/bin/false",)},
     r"^/etc/lithos/sandboxes/web\.yaml: bridged-network\.after-setup-command: "
     r"\['/bin/false'\]: exited with code 1$"),
])
def test_a_failed_step_leaves_nothing(kernel, no_fd_leak: None, kwargs, error) -> None:
    host = kernel.new_netns()
    bridge = kernel.new_bridge(host)
    host_fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with inside_netns(host_fd), pytest.raises(netstart.NetworkError, match=error):
            netstart.prepare(plan(bridge, **kwargs))
        assert host_veths(kernel, host) == set()
    finally:
        os.close(host_fd)


def test_missing_bridge_names_the_sandbox_file(kernel, no_fd_leak: None) -> None:
    host = kernel.new_netns()
    host_fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with inside_netns(host_fd), pytest.raises(
                netstart.NetworkError, match=r'^/etc/lithos/sandboxes/web\.yaml: '
                r'bridged-network\.bridge: "ltnone0" does not exist'):
            netstart.prepare(plan("ltnone0"))
        assert host_veths(kernel, host) == set()
    finally:
        os.close(host_fd)
