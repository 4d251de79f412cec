"""broker.netcheck: veth names (K-32), ip-addresses checks (K-35), after-setup templates."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.netcheck import check_addresses, substitute_after_setup, veth_names


def test_veth_name_follows_the_lithos_rule() -> None:
    digest = hashlib.blake2b(b'{"bridge":"br0","ip":"10.71.0.2"}', digest_size=64).hexdigest()
    assert veth_names("br0", ip_address("10.71.0.2")) == (
        f"li_{digest[:6]}_0002", f"li-{digest[:6]}-0002")


def test_veth_name_uses_the_last_two_octets() -> None:
    host, _ = veth_names("br0", ip_address("10.71.1.255"))
    assert host.endswith("_01ff")
    host6, _ = veth_names("br0", ip_address("fd00::abcd"))
    assert host6.endswith("_abcd")


def test_veth_names_differ_per_bridge_and_address() -> None:
    a = veth_names("br0", ip_address("10.0.0.2"))
    assert a != veth_names("br1", ip_address("10.0.0.2"))
    assert a != veth_names("br0", ip_address("10.1.0.2"))  # same last octets, other hash


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=15),
       st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_veth_names_always_fit_ifnamsiz(bridge: str, address: IPv4Address | IPv6Address,
                                        ) -> None:
    host, guest = veth_names(bridge, address)
    assert len(host) == len(guest) == 14 <= 15
    assert host.startswith("li_") and "_" not in guest
    assert host.isascii() and "/" not in host and " " not in host


NET = ip_network("10.71.0.0/24")


def test_good_addresses_have_no_problems() -> None:
    assert check_addresses(NET, [NET[2], NET[3]], 2) == []
    assert check_addresses(NET, [NET[2], NET[3], NET[4]], 2) == []  # extras are ignored


def test_address_outside_the_network() -> None:
    """The py_bridged example: 10.41.0.2 in 10.71.0.0/16 (inventory section 7)."""
    assert check_addresses(ip_network("10.71.0.0/16"), [ip_address("10.41.0.2")], 1) == [
        "ip-addresses: 10.41.0.2 is outside bridged-network.network 10.71.0.0/16"]
    assert check_addresses(NET, [ip_address("fd00::2")], 1) == [
        "ip-addresses: fd00::2 is outside bridged-network.network 10.71.0.0/24"]


def test_network_and_broadcast_addresses() -> None:
    problems = check_addresses(NET, [NET[0], NET[255]], 2)
    assert len(problems) == 2
    assert all("network or broadcast address" in p for p in problems)


def test_duplicate_address() -> None:
    assert check_addresses(NET, [NET[2], NET[2]], 2) == [
        "ip-addresses: 10.71.0.2 is listed twice (two instances cannot share an address)"]


def test_fewer_addresses_than_instances() -> None:
    assert check_addresses(NET, [NET[2]], 3) == [
        "ip-addresses: [10.71.0.2] has 1 address(es) for instances: 3 "
        "(instance i gets ip-addresses[i]; add 2 more)"]


def test_empty_list_is_reported_unless_there_are_no_instances() -> None:
    """K-31: an empty list means isolated instances; lithos_check reports it."""
    assert check_addresses(NET, [], 0) == []
    [problem] = check_addresses(NET, [], 2)
    assert problem.startswith("ip-addresses: [] is empty but instances: 2")


def test_after_setup_substitution() -> None:
    argv, errors = substitute_after_setup(
        ["/usr/bin/arping@{container_ip}", "-U", "-c1", "@{container_ip}", "a@{x}b", "@"],
        ip_address("10.71.0.2"))
    assert argv == ["/usr/bin/arping@{container_ip}", "-U", "-c1", "10.71.0.2", "ab", "@"]
    assert errors == ['bridged-network.after-setup-command: no variable "x" '
                      "(only @{container_ip} is known); using an empty string"]
