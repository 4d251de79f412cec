"""The network step of a start in a bridged sandbox (K-30..K-34).

Owns, for one instance of a `bridged-network` sandbox: its new network
namespace (held by an fd until the knot has joined it), the veth pair, address,
route and after-setup-command in it (through broker/bridge.py), and its
non-external `tcp-ports`, bound inside that namespace by the broker. Rules:
- The broker stays in the host netns: the namespace is made with unshare and
  the ports are bound with setns, each undone by a setns back in a `finally`,
  on the calling thread only (/proc/thread-self). Failing to get back is fatal.
- On failure nothing is left behind: no veth, no netns fd, no socket; the
  error is one NetworkError naming the config key and the value.
- Decides nothing: the NetPlan was made and checked by broker/policy.py.
- broker/bridge.py (pyroute2) is imported by the first bridged start, not with
  this module: a broker without bridged sandboxes never loads it.
Only the host end's name outlives the start (Child.veth), for clean-up.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import field

from broker.netns import THREAD_NETNS, NetworkError, inside_netns, return_to_netns
from broker.policy import NetPlan, PortRequest
from knot import linux
from knot.ports import open_listening_socket
from protocol.structs import dataclass

__all__ = ["ContainerNet", "NetworkError", "discard", "prepare", "remove_host_veth"]

log = logging.getLogger(__name__)
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
# pyroute2 logs every netlink message at DEBUG: a start would fill the broker's log.
logging.getLogger("pyroute2").setLevel(logging.WARNING)



@dataclass(slots=True)
class ContainerNet:
    """What prepare() made for one start; the starter closes it once the knot runs."""

    netns_fd: int
    veth: str = ""  # the host end; "" for a netns with only lo
    fds: dict[int, int] = field(default_factory=dict)  # fd in the container -> our socket

    def close(self) -> None:
        """Closes our netns fd and sockets (the knot has its own copies); idempotent."""
        for fd in [self.netns_fd, *self.fds.values()]:
            if fd >= 0:
                os.close(fd)
        self.netns_fd = -1
        self.fds = {}


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def new_netns() -> int:
    """An fd of a new, empty network namespace; this thread's own netns is unchanged."""
    host_fd = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.unshare(linux.CLONE_NEWNET)
        try:
            return os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            return_to_netns(host_fd)
    finally:
        os.close(host_fd)


def _open_ports(requests: Sequence[PortRequest], netns_fd: int) -> dict[int, int]:
    """K-34: the non-external tcp-ports, bound inside the container's netns."""
    fds: dict[int, int] = {}
    try:
        with inside_netns(netns_fd):
            for req in requests:
                s = req.settings
                sock = open_listening_socket(req.host, req.port, s.listen_backlog,
                                             s.reuse_addr, s.reuse_port, s.set_non_block)
                fds[req.fd] = sock.detach()
    except OSError as exc:
        for fd in fds.values():
            os.close(fd)
        # open_listening_socket's text already names tcp-ports, the port and the address.
        raise NetworkError(f"{exc.strerror} (inside the container's network namespace)") \
            from exc  # fmt: skip
    return fds


def prepare(plan: NetPlan) -> ContainerNet:
    """A netns connected as `plan` says, with its ports bound; give its fd to spawn_knot.

    Raises:
        NetworkError: naming the key and the value; nothing is left behind.
    """
    from broker import bridge  # pyroute2: imported by bridged starts only (broker/netns.py)

    try:
        net = ContainerNet(new_netns())
    except OSError as exc:
        raise NetworkError(f"bridged-network: creating the container's network namespace: "
                           f"{_errname(exc)}") from exc  # fmt: skip
    try:
        if plan.address is None:
            bridge.setup_isolated(net.netns_fd)
        else:
            handle = bridge.setup_container_network(
                net.netns_fd, plan.bridge, plan.address, plan.prefixlen, plan.gateway,
                plan.after_setup_command)  # fmt: skip
            net.veth = handle.host_ifname
        net.fds = _open_ports(plan.ports, net.netns_fd)
        if plan.user_namespace:
            _open_low_ports(net.netns_fd)
    except BaseException as exc:
        discard(net)
        if isinstance(exc, NetworkError):
            raise NetworkError(_with_file(str(exc), plan)) from exc
        raise
    return net


def _open_low_ports(netns_fd: int) -> None:
    """K-30 with a uid-map: ports below 1024 for every uid, in this netns only.

    The service keeps CAP_NET_BIND_SERVICE, but in its own user namespace, while the
    netns belongs to the host's (the broker made it): the capability does not count
    there. `ip_unprivileged_port_start` is per network namespace (Linux 4.11), so 0
    lets the service bind low ports on its own addresses and changes nothing else.
    """
    with inside_netns(netns_fd):  # /proc/sys/net is the netns of the opening thread
        try:
            with open(UNPRIVILEGED_PORT_START, "w") as f:
                f.write("0")
        except OSError as exc:
            # Older kernels: the service cannot bind low ports itself (tcp-ports still work).
            log.warning("bridged-network: %s = 0 in the container's network namespace: %s",
                        UNPRIVILEGED_PORT_START, _errname(exc))  # fmt: skip


def _with_file(message: str, plan: NetPlan) -> str:
    """`message` prefixed with the file its leading key comes from (STYLE P8)."""
    for key, path in plan.files:
        if message.startswith(key):
            return f"{path}: {message}"
    return message


def discard(net: ContainerNet, why: str = "after a failed start") -> None:
    """Undoes prepare(): fds closed, veth deleted (after a failed start, or at the end)."""
    net.close()
    if net.veth:
        remove_host_veth(net.veth, why)


def remove_host_veth(name: str, why: str) -> None:
    """Deletes the host end `name` if it is still there (the kernel deletes the pair
    when the netns goes, but asynchronously, and only when nothing else holds it)."""
    from broker import bridge

    try:
        if bridge.remove_veth(name):
            log.info("veth %s removed (%s)", name, why)
    except NetworkError as exc:
        log.warning("%s", exc)
