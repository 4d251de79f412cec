"""Bridged networking (K-30..K-34): the veth pair, the container's address and route.

Owns every netlink change made for a `bridged-network` sandbox: it creates the
veth pair, attaches the host end to the operator's bridge, configures the
container end inside the container's netns, runs `after-setup-command` there,
and deletes the pair again. Rules:
- All netlink goes through pyroute2; nothing runs /sbin/ip or brctl.
- It never decides whether an address is allowed (broker/policy.py does, with
  broker/netcheck.py); it takes plain typed values, not config objects.
- On failure nothing it created is left behind: deleting the host end deletes
  the pair. Every failure is one NetworkError naming the config key and value.
- The bridge itself belongs to the operator; this module never creates it.
- The only module that imports pyroute2: broker/netstart.py imports it at the
  first bridged start (broker/netns.py has the setns part and NetworkError).
Imports protocol at most; never supervisor/ or knot/.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import subprocess
from collections.abc import Iterator, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from broker.netcheck import (
    IpAddress,
    check_addresses,
    substitute_after_setup,
    veth_names,
)
from broker.netns import (
    NetworkError,
    enter_netns,
    inside_netns,
    return_to_netns,
)
from protocol.structs import dataclass

__all__ = [
    "NetworkError",
    "NetworkHandle",
    "Netns",
    "check_addresses",
    "inside_netns",
    "remove_veth",
    "return_to_netns",
    "setup_container_network",
    "setup_isolated",
    "teardown",
    "veth_names",
]

log = logging.getLogger(__name__)

Netns = str | int  # a path such as /proc/<pid>/ns/net, or an open fd of one
# The helper's environment: TERM as Lithos passes it, plus a fixed PATH so that
# `#!/bin/sh` scripts find their tools (Lithos passed none).
HELPER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AFTER_SETUP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class NetworkHandle:
    """What setup_container_network created; give it to teardown()."""

    host_ifname: str
    guest_ifname: str
    bridge: str
    address: IpAddress
    host_netns: Netns | None = None  # None: the caller's netns


def _errname(exc: OSError | NetlinkError) -> str:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    return errno.errorcode.get(code or 0, str(code))


@contextlib.contextmanager
def _netns_fd(netns: Netns) -> Iterator[int]:
    """An fd of `netns`; a path is opened and closed here, an fd stays the caller's."""
    if isinstance(netns, int):
        yield netns
        return
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f'network namespace "{netns}": {_errname(exc)}') from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _rtnl(netns_fd: int | None) -> Iterator[IPRoute]:
    """An rtnetlink socket in `netns_fd` (None: our own netns)."""
    # Not IPRoute(netns=...): pyroute2 forks a helper for that and SIGTERMs it, and
    # the helper's inherited signal wakeup fd then tells the broker *it* got SIGTERM.
    # A netlink socket belongs to the netns it was made in; IPRoute() makes it at once.
    try:
        if netns_fd is None:
            ipr = IPRoute()
        else:
            with inside_netns(netns_fd):
                ipr = IPRoute()
    except (OSError, NetlinkError) as exc:
        where = "our" if netns_fd is None else f"fd {netns_fd}'s"
        raise NetworkError(
            f"bridge: opening rtnetlink in {where} network namespace: {_errname(exc)}"
        ) from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _check_bridge(ipr: IPRoute, bridge: str) -> int:
    try:
        index = _index(ipr, bridge)
        kind = (
            None
            if index is None
            else ipr.get_links(index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        )
    except NetlinkError as exc:
        raise NetworkError(
            f'bridged-network.bridge: "{bridge}": looking it up: {_errname(exc)}'
        ) from exc
    if index is None:
        raise NetworkError(
            f'bridged-network.bridge: "{bridge}" does not exist in the host network '
            f"namespace (the operator creates the bridge, e.g. "
            f'"ip link add {bridge} type bridge"; see docs/networking.md)'
        )
    if kind != "bridge":
        raise NetworkError(
            f'bridged-network.bridge: "{bridge}" is a {kind or "plain"} interface, not a bridge'
        )
    return index


def _delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete the veth `ifname` if it exists; True when something was deleted."""
    index = _index(ipr, ifname)
    if index is None:
        return False
    kind = ipr.get_links(index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "veth":  # a root daemon never deletes an interface it did not make
        raise NetworkError(
            f'bridge: "{ifname}" is a {kind or "plain"} interface, not a '
            f"veth; refusing to delete it (rename or remove it by hand)"
        )
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:  # gone in between: what we wanted
            return False
        raise
    return True


def remove_veth(name: str, host_netns: Netns | None = None) -> bool:
    """Delete the veth `name` (and so its peer); True if it existed, a missing one is fine."""
    try:
        with contextlib.ExitStack() as stack:
            fd = None if host_netns is None else stack.enter_context(_netns_fd(host_netns))
            with _rtnl(fd) as ipr:
                return _delete_link(ipr, name)
    except (OSError, NetlinkError) as exc:
        raise NetworkError(f'bridge: deleting veth "{name}": {_errname(exc)}') from exc


def teardown(handle: NetworkHandle) -> None:
    """Remove the veth pair of a container; idempotent."""
    if remove_veth(handle.host_ifname, handle.host_netns):
        log.info(
            "%s: veth %s removed (container address %s)",
            handle.bridge,
            handle.host_ifname,
            handle.address,
        )


def setup_isolated(netns: Netns) -> None:
    """A bridged instance without an address: only lo, up (K-31)."""
    with _netns_fd(netns) as fd:
        try:
            with _rtnl(fd) as ipr:
                ipr.link("set", index=_index(ipr, "lo"), state="up")
        except (OSError, NetlinkError) as exc:
            raise NetworkError(
                f"ip-addresses: []: setting lo up in the container "
                f"network namespace: {_errname(exc)}"
            ) from exc


def setup_container_network(
    netns: Netns,
    bridge: str,
    address: IpAddress,
    prefixlen: int,
    gateway: IpAddress | None,
    after_setup_command: Sequence[str],
    *,
    host_netns: Netns | None = None,
    after_setup_timeout_s: float = AFTER_SETUP_TIMEOUT_S,
) -> NetworkHandle:
    """Connect the container netns `netns` to `bridge` with `address`/`prefixlen` (K-32).

    `host_netns` is where the bridge lives (None: the caller's netns).
    Raises:
        NetworkError: naming the key and value; nothing created is left behind.
    """
    if after_setup_command and not after_setup_command[0].startswith("/"):
        raise NetworkError(
            f"bridged-network.after-setup-command: {list(after_setup_command)} "
            f'must start with an absolute path, not "{after_setup_command[0]}"'
        )
    if not 0 < prefixlen <= address.max_prefixlen:
        raise NetworkError(
            f"bridged-network.network: prefix length {prefixlen} is not in "
            f"1..{address.max_prefixlen} (for ip-addresses {address})"
        )
    if gateway is not None and gateway.version != address.version:
        raise NetworkError(
            f"bridged-network.default-gateway: {gateway} is not an "
            f"IPv{address.version} address like ip-addresses {address}"
        )
    host, guest = veth_names(bridge, address)
    handle = NetworkHandle(host, guest, bridge, address, host_netns)
    with contextlib.ExitStack() as stack:
        container_fd = stack.enter_context(_netns_fd(netns))
        host_fd = None if host_netns is None else stack.enter_context(_netns_fd(host_netns))
        with _rtnl(host_fd) as ipr:
            bridge_index = _check_bridge(ipr, bridge)
            _create_pair(ipr, handle, container_fd)
            try:
                _attach(ipr, handle, bridge_index)
                with _rtnl(container_fd) as guest_ipr:
                    _configure_guest(guest_ipr, handle, prefixlen, gateway)
                if after_setup_command:
                    _run_after_setup(
                        after_setup_command, address, container_fd, after_setup_timeout_s
                    )
            except BaseException:
                _cleanup(ipr, host)  # deleting the host end deletes the pair
                raise
    log.info(
        "%s: veth %s attached, container end %s has %s/%d", bridge, host, guest, address, prefixlen
    )
    return handle


def _cleanup(ipr: IPRoute, host: str) -> None:
    try:
        _delete_link(ipr, host)
    except (NetlinkError, NetworkError) as exc:  # keep the first error; log this one
        log.error('bridge: deleting veth "%s" after a failed setup: %s', host, exc)


def _create_pair(ipr: IPRoute, handle: NetworkHandle, container_fd: int) -> None:
    host, guest = handle.host_ifname, handle.guest_ifname
    try:
        # Same name as last run: the host end of a container that died with its
        # netns still referenced (v0.19 "delete the host-side veth first").
        if _delete_link(ipr, host):
            log.warning(
                '%s: removed stale veth "%s" of a previous run (ip-addresses %s)',
                handle.bridge,
                host,
                handle.address,
            )
        # The peer is created directly inside the container netns, so the guest
        # end never appears in the host netns even for a moment.
        ipr.link("add", ifname=host, kind="veth", peer={"ifname": guest, "net_ns_fd": container_fd})
    except NetlinkError as exc:
        hint = " (stale interface from a previous run?)" if exc.code == errno.EEXIST else ""
        raise NetworkError(
            f'ip-addresses: {handle.address}: creating veth "{host}"/"{guest}"'
            f": {_errname(exc)}{hint}"
        ) from exc


def _attach(ipr: IPRoute, handle: NetworkHandle, bridge_index: int) -> None:
    try:
        index = _index(ipr, handle.host_ifname)
        ipr.link("set", index=index, master=bridge_index)
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise NetworkError(
            f'bridged-network.bridge: "{handle.bridge}": adding veth '
            f'"{handle.host_ifname}" to the bridge: {_errname(exc)}'
        ) from exc


def _configure_guest(
    ipr: IPRoute, handle: NetworkHandle, prefixlen: int, gateway: IpAddress | None
) -> None:
    address, guest = handle.address, handle.guest_ifname
    step = "setting lo up"
    try:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        index = _index(ipr, guest)
        step = f"adding {address}/{prefixlen} to {guest}"
        ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen)
        step = f"setting {guest} up"
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise NetworkError(
            f"ip-addresses: {address}: {step} in the container network namespace: {_errname(exc)}"
        ) from exc
    if gateway is None:
        return
    family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
    try:
        ipr.route("add", family=family, dst="default", gateway=str(gateway))
    except NetlinkError as exc:
        hint = (
            f" (the gateway must be inside {address}/{prefixlen})"
            if exc.code == errno.ENETUNREACH
            else ""
        )
        raise NetworkError(
            f"bridged-network.default-gateway: {gateway}: adding the default "
            f"route in the container: {_errname(exc)}{hint}"
        ) from exc


def _run_after_setup(
    argv: Sequence[str], address: IpAddress, container_fd: int, timeout_s: float
) -> None:
    command, unknown = substitute_after_setup(argv, address)
    for message in unknown:
        log.error("%s", message)
    key = f"bridged-network.after-setup-command: {command}"
    env = {"TERM": os.environ.get("TERM", "dumb"), "PATH": HELPER_PATH}
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            cwd="/",
            preexec_fn=lambda: enter_netns(container_fd),
        )
    except OSError as exc:
        raise NetworkError(f"{key}: cannot run: {_errname(exc)}") from exc
    except subprocess.SubprocessError as exc:  # setns in the child failed
        raise NetworkError(f"{key}: cannot enter the container network namespace") from exc
    # Wait on a pidfd with a deadline: a hung helper (arping without -c) must
    # not hang the broker.
    pidfd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    if not ready:
        proc.kill()
        proc.wait()
        raise NetworkError(f"{key}: still running after {timeout_s:g}s, killed")
    code = proc.wait()
    if code != 0:
        what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise NetworkError(f"{key}: {what}")
    log.info("%s: after-setup-command %s done", address, command)
