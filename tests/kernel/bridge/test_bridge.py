"""broker.bridge on real netns, veth and bridges (K-31, K-32, P8, P9).

All of it happens in namespaces the test creates: a "host" netns holding the
bridge and one netns per container. Traffic only flows between them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import socket
import subprocess
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from broker.bridge import (
    NetworkError,
    remove_veth,
    setup_container_network,
    setup_isolated,
    teardown,
    veth_names,
)

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root


def test_two_containers_get_their_veth_address_route_and_reach_each_other(
        kernel, no_fd_leak: None) -> None:
    """K-32: each container sees lo and its veth, with address and default route."""
    host, a, b = kernel.new_netns(), kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    net = kernel.network
    gw, ip_a, ip_b = net[1], net[2], net[3]
    handle_a = setup_container_network(a, bridge, ip_a, 24, gw, [], host_netns=host)
    handle_b = setup_container_network(b, bridge, ip_b, 24, gw, [], host_netns=host)
    try:
        for ns, handle, ip in ((a, handle_a, ip_a), (b, handle_b, ip_b)):
            assert (handle.host_ifname, handle.guest_ifname) == veth_names(bridge, ip)
            assert kernel.links_in(ns) == {"lo", handle.guest_ifname}
            assert f"{ip}/24" in kernel.addresses_in(ns, handle.guest_ifname)
            assert "127.0.0.1/8" in kernel.addresses_in(ns, "lo")  # lo is up
            assert kernel.default_gateway_in(ns) == str(gw)
        assert kernel.links_in(host) == {"lo", bridge, handle_a.host_ifname,
                                         handle_b.host_ifname}

        # A listener in b, a client in a: the bytes cross the bridge.
        with kernel.socket_in(b) as listener, kernel.socket_in(a) as client:
            listener.bind((str(ip_b), 8080))
            listener.listen(1)
            client.settimeout(10)
            client.connect((str(ip_b), 8080))
            assert select.select([listener], [], [], 10)[0], "no connection arrived"
            conn, (peer, _) = listener.accept()
            with conn:
                assert peer == str(ip_a)
                client.sendall(b"ping")
                conn.settimeout(10)
                assert conn.recv(4) == b"ping"
    finally:
        teardown(handle_a)
        teardown(handle_b)
    assert kernel.links_in(host) == {"lo", bridge}
    assert kernel.links_in(a) == {"lo"}
    assert kernel.links_in(b) == {"lo"}
    teardown(handle_a)  # idempotent: ENODEV is fine


def test_missing_bridge_names_the_key_and_creates_nothing(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    with pytest.raises(NetworkError) as err:
        setup_container_network(a, "ltnosuchbr", kernel.network[2], 24, None, [],
                                host_netns=host)
    assert str(err.value).startswith('bridged-network.bridge: "ltnosuchbr" does not exist')
    assert kernel.links_in(host) == {"lo"}
    assert kernel.links_in(a) == {"lo"}


def test_an_interface_that_is_not_a_bridge_is_refused(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    with pytest.raises(NetworkError, match='bridged-network.bridge: "lo" is a plain '
                                           "interface, not a bridge"):
        setup_container_network(a, "lo", kernel.network[2], 24, None, [], host_netns=host)
    assert kernel.links_in(a) == {"lo"}


def test_gateway_outside_the_network_fails_and_leaves_no_veth(kernel) -> None:
    """The route step fails after the pair exists: the pair is deleted again."""
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    with pytest.raises(NetworkError) as err:
        setup_container_network(a, bridge, kernel.network[2], 24, ip_address("192.0.2.1"),
                                [], host_netns=host)
    assert str(err.value).startswith(
        "bridged-network.default-gateway: 192.0.2.1: adding the default route")
    assert "ENETUNREACH" in str(err.value)
    assert kernel.links_in(host) == {"lo", bridge}
    assert kernel.links_in(a) == {"lo"}


def test_bad_prefix_length_or_gateway_family_is_refused_before_any_veth(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    with pytest.raises(NetworkError, match=r"^bridged-network.network: prefix length 33 "):
        setup_container_network(a, bridge, kernel.network[2], 33, None, [], host_netns=host)
    with pytest.raises(NetworkError, match=r"^bridged-network.default-gateway: fd00::1 is "
                                           r"not an IPv4 address"):
        setup_container_network(a, bridge, kernel.network[2], 24, ip_address("fd00::1"), [],
                                host_netns=host)
    assert kernel.links_in(host) == {"lo", bridge}
    assert kernel.links_in(a) == {"lo"}


def test_after_setup_command_runs_inside_the_container_netns(kernel, tmp_path: Path,
                                                             caplog) -> None:
    """K-32 6.5: @{container_ip} substituted, unknown variables become "" and are logged."""
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    out = tmp_path / "seen"
    script = ('cat /proc/self/net/dev > "$0"; '
              'echo "ip=$1 other=[$2] env=$(env | sort | tr "\\n" " ")" >> "$0"')
    ip = kernel.network[7]
    with caplog.at_level(logging.ERROR, logger="broker.bridge"):
        handle = setup_container_network(
            a, bridge, ip, 24, None,
            ["/bin/busybox", "sh", "-c", script, str(out), "@{container_ip}", "x@{nope}y"],
            host_netns=host)
    try:
        text = out.read_text()
        assert handle.guest_ifname + ":" in text      # the container's interfaces...
        assert handle.host_ifname + ":" not in text   # ...not the host's
        assert f"ip={ip} other=[xy]" in text
        assert "env=PATH=" in text and "HOME" not in text  # an almost empty environment
        assert 'no variable "nope"' in caplog.text
    finally:
        teardown(handle)


def test_after_setup_command_failure_gives_the_exit_code_and_cleans_up(
        kernel, no_fd_leak: None) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    with pytest.raises(NetworkError) as err:
        setup_container_network(a, bridge, kernel.network[2], 24, None,
                                ["/bin/busybox", "sh", "-c", "exit 3"], host_netns=host)
    assert str(err.value).startswith("bridged-network.after-setup-command: [")
    assert str(err.value).endswith("exited with code 3")
    assert kernel.links_in(host) == {"lo", bridge}
    assert kernel.links_in(a) == {"lo"}


def test_after_setup_command_that_cannot_run_is_an_error(kernel, tmp_path: Path) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    missing = str(tmp_path / "no-such-binary")
    with pytest.raises(NetworkError, match="cannot run: ENOENT"):
        setup_container_network(a, bridge, kernel.network[2], 24, None, [missing],
                                host_netns=host)
    with pytest.raises(NetworkError, match="must start with an absolute path"):
        setup_container_network(a, bridge, kernel.network[2], 24, None, ["arping"],
                                host_netns=host)
    assert kernel.links_in(host) == {"lo", bridge}


def test_after_setup_command_that_hangs_is_killed(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    with pytest.raises(NetworkError, match=r"still running after 0\.3s, killed"):
        setup_container_network(a, bridge, kernel.network[2], 24, None,
                                ["/bin/busybox", "sleep", "60"], host_netns=host,
                                after_setup_timeout_s=0.3)
    assert kernel.links_in(host) == {"lo", bridge}


def test_stale_host_veth_of_the_same_name_is_replaced(kernel, caplog) -> None:
    """v0.19: a host end left by a previous run is deleted before re-creating it."""
    host, old, new = kernel.new_netns(), kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    ip = kernel.network[9]
    setup_container_network(old, bridge, ip, 24, None, [], host_netns=host)
    with caplog.at_level(logging.WARNING, logger="broker.bridge"):
        handle = setup_container_network(new, bridge, ip, 24, None, [], host_netns=host)
    try:
        assert "removed stale veth" in caplog.text
        assert kernel.links_in(old) == {"lo"}
        assert kernel.links_in(new) == {"lo", handle.guest_ifname}
    finally:
        teardown(handle)
    assert kernel.links_in(host) == {"lo", bridge}


def test_ipv6_address_and_gateway(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    net = ip_network("fd00:6c74::/64")
    handle = setup_container_network(a, bridge, net[5], 64, net[1], [], host_netns=host)
    try:
        assert f"{net[5]}/64" in kernel.addresses_in(a, handle.guest_ifname)
        assert kernel.default_gateway_in(a, socket.AF_INET6) == str(net[1])
    finally:
        teardown(handle)


def test_isolated_instance_gets_only_lo_up(kernel) -> None:
    """K-31: no IP for the instance: lo up, nothing else."""
    a = kernel.new_netns()
    fd = os.open(a, os.O_RDONLY)
    try:
        setup_isolated(fd)  # an fd works like a path
    finally:
        os.close(fd)
    assert kernel.links_in(a) == {"lo"}
    assert kernel.addresses_in(a, "lo") >= {"127.0.0.1/8"}


def test_missing_netns_is_a_clear_error(kernel) -> None:
    with pytest.raises(NetworkError, match=r'network namespace ".*/nope": ENOENT'):
        setup_isolated(os.path.join(kernel.root, "nope"))


def test_remove_veth_of_a_missing_interface_is_fine(kernel) -> None:
    host = kernel.new_netns()
    assert remove_veth("ltnothere", host_netns=host) is False


def test_netns_of_a_running_process_by_proc_path(kernel) -> None:
    """How the broker calls it: the netns of a live container process, /proc/<pid>/ns/net."""
    host = kernel.new_netns()
    bridge = kernel.new_bridge(host)
    unshare = ctypes.CDLL(None, use_errno=True).unshare
    # preexec runs before exec and Popen returns after exec: the netns exists by then.
    proc = subprocess.Popen(["/bin/busybox", "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, preexec_fn=lambda: unshare(0x40000000))
    try:
        netns = f"/proc/{proc.pid}/ns/net"
        assert os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino
        handle = setup_container_network(netns, bridge, kernel.network[4], 24,
                                         kernel.network[1], [], host_netns=host)
        try:
            assert kernel.links_in(netns) == {"lo", handle.guest_ifname}
            assert kernel.default_gateway_in(netns) == str(kernel.network[1])
        finally:
            teardown(handle)
        assert kernel.links_in(netns) == {"lo"}
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_existing_container_end_name_gives_eexist_and_no_veth(kernel) -> None:
    host, a = kernel.new_netns(), kernel.new_netns()
    bridge = kernel.new_bridge(host)
    ip = kernel.network[5]
    _, guest = veth_names(bridge, ip)
    with IPRoute(netns=a, flags=0) as ipr:  # something already holds the name in there
        ipr.link("add", ifname=guest, kind="bridge")
    with pytest.raises(NetworkError) as err:
        setup_container_network(a, bridge, ip, 24, None, [], host_netns=host)
    assert str(err.value).startswith(f"ip-addresses: {ip}: creating veth")
    assert str(err.value).endswith("EEXIST (stale interface from a previous run?)")
    assert kernel.links_in(host) == {"lo", bridge}
    assert kernel.links_in(a) == {"lo", guest}


def test_remove_veth_never_deletes_other_interfaces(kernel) -> None:
    host = kernel.new_netns()
    bridge = kernel.new_bridge(host)
    with pytest.raises(NetworkError, match=f'"{bridge}" is a bridge interface, not a veth'):
        remove_veth(bridge, host_netns=host)
    assert kernel.links_in(host) == {"lo", bridge}
