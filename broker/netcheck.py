"""Pure decisions for bridged networking (K-32, K-35): names, address checks, templates.

Owns the veth naming rule, the checks of `ip-addresses` against
`bridged-network.network`, and the `@{container_ip}` substitution of
`after-setup-command`. Rules:
- Pure: no os, socket, subprocess or pyroute2. broker/bridge.py does the
  syscalls, broker/policy.py and lithos_check call these checks.
- Problems are returned as messages naming the key and the value; the caller
  decides whether a problem is fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from protocol.digest import blake2b

IpAddress = IPv4Address | IPv6Address
IpNetwork = IPv4Network | IPv6Network

IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL: 15 visible chars
VARIABLE_RE = re.compile(r"@\{([^}]*)\}")


def veth_names(bridge: str, address: IpAddress) -> tuple[str, str]:
    """(host end, container end) for `address` on `bridge`, as Lithos names them (K-32).

    `li_<6 hex of BLAKE2b-512 of {"bridge":..,"ip":..}>_<last two octets>`; the
    container end has `-` for `_`. A restarted instance gets the same names, which
    is how a stale host end from a previous run is found and removed.
    """
    # serde_json's compact form: no spaces, fields in declaration order, UTF-8 as is.
    key = json.dumps(
        {"bridge": bridge, "ip": str(address)}, separators=(",", ":"), ensure_ascii=False
    )
    digest = blake2b(key.encode("utf-8"), digest_size=64).hexdigest()
    packed = address.packed
    host = f"li_{digest[:6]}_{packed[-2]:02x}{packed[-1]:02x}"
    assert len(host) < IFNAMSIZ
    return host, host.replace("_", "-")


def check_addresses(
    network: IpNetwork, addresses: Sequence[IpAddress], instances: int
) -> list[str]:
    """Every problem of `ip-addresses` for a bridged process, one message each (K-35).

    An empty list is reported too (lithos_check: "no IP address specified"); a
    caller that accepts isolated instances (K-31) skips the check for it.
    """
    problems: list[str] = []
    if not addresses:
        if instances > 0:
            problems.append(
                f"ip-addresses: [] is empty but instances: {instances} (each instance i "
                f"gets ip-addresses[i]; without one it has only lo and no network)"
            )
        return problems
    seen: set[IpAddress] = set()
    for address in addresses:
        if address not in network:
            problems.append(f"ip-addresses: {address} is outside bridged-network.network {network}")
        elif (
            address in (network.network_address, network.broadcast_address)
            and network.num_addresses > 2
        ):
            problems.append(
                f"ip-addresses: {address} is the network or broadcast address of "
                f"bridged-network.network {network}"
            )
        if address in seen:
            problems.append(
                f"ip-addresses: {address} is listed twice (two instances cannot share an address)"
            )
        seen.add(address)
    if len(addresses) < instances:
        listed = "[" + ", ".join(str(a) for a in addresses) + "]"
        missing = instances - len(addresses)
        problems.append(
            f"ip-addresses: {listed} has {len(addresses)} address(es) for instances: "
            f"{instances} (instance i gets ip-addresses[i]; add {missing} more)"
        )
    return problems


def substitute_after_setup(
    argv: Sequence[str],
    container_ip: IpAddress,
) -> tuple[list[str], list[str]]:
    """`after-setup-command` with `@{container_ip}` filled in, and the unknown variables.

    As in Lithos (K-32): argv[0] is never substituted; an unknown `@{x}` becomes
    the empty string and is reported (the caller logs it; it is not fatal).
    """
    unknown: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "container_ip":
            return str(container_ip)
        unknown.append(match.group(1))
        return ""

    result = list(argv[:1]) + [
        VARIABLE_RE.sub(replace, arg) if "@" in arg else arg for arg in argv[1:]
    ]
    errors = [
        f'bridged-network.after-setup-command: no variable "{name}" '
        f"(only @{{container_ip}} is known); using an empty string"
        for name in unknown
    ]
    return result, errors
