"""Taking back listening sockets from adopted containers after a SIGKILL of lithos_tree.

Owns one recovery step: a broker that was killed lost its listening sockets,
but the containers it left running still hold them (each service has its
port's socket as an inherited fd). A new broker that adopted those knots
duplicates each socket back out of them (pidfd_getfd(2), as root) so that a
restarted sibling shares the very same socket again instead of failing with
EADDRINUSE. Rules: only sockets that listen on an address the knot's record
names are taken; everything else is closed at once. The result is in the
shape of PortTable.export(), so PortTable.adopt() checks it like a re-exec's.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import socket
from collections.abc import Iterable

from broker.children import Child
from broker.ports import EXPORT_VERSION, Address, PortError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

_SYS_PIDFD_GETFD = 438  # same number on every architecture (new syscall table)
_libc = ctypes.CDLL(None, use_errno=True)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(got)


def _holders(child: Child) -> list[int]:
    """The knot and its service(s): whoever may hold the inherited sockets."""
    pids = [child.pid]
    with contextlib.suppress(OSError), open(f"/proc/{child.pid}/task/{child.pid}/children") as f:
        pids += [int(p) for p in f.read().split()]
    return pids


def reclaim(children: Iterable[Child]) -> dict[str, Any]:
    """An export() of the listening sockets the adopted `children` hold."""
    by_inode: dict[int, dict[str, Any]] = {}
    for child in children:
        wanted = set()
        for host, port in child.ports:
            with contextlib.suppress(PortError):
                wanted.add(Address.parse(host, port))
        if not wanted:
            continue
        for pid in _holders(child):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                _take_from(pid, pidfd, child.instance, wanted, by_inode)
            finally:
                os.close(pidfd)
    return {"version": EXPORT_VERSION, "sockets": list(by_inode.values())}


def _take_from(pid: int, pidfd: int, instance: str, wanted: set[Address],
               by_inode: dict[int, dict[str, Any]]) -> None:  # fmt: skip
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for name in fds:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = _pidfd_getfd(pidfd, int(name))
        except (OSError, ValueError):
            continue
        inode = os.fstat(fd).st_ino
        if inode in by_inode:
            os.close(fd)
            if instance not in by_inode[inode]["instances"]:
                by_inode[inode]["instances"].append(instance)
            continue
        sock = socket.socket(fileno=fd)
        try:
            address = Address.parse(*sock.getsockname()[:2])
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        except (OSError, PortError, TypeError):
            sock.close()
            continue
        if not listening or address not in wanted:
            sock.close()
            continue
        os.set_inheritable(fd, False)
        reuse_addr = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        reuse_port = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        by_inode[inode] = {
            "fd": sock.detach(),
            "host": address.host,
            "port": address.port,
            "bound-port": address.port,
            "reuse-addr": reuse_addr,
            "reuse-port": reuse_port,
            "set-non-block": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
            "listen-backlog": 128,
            "instances": [instance],
        }
        log.info("Socket %s taken back from %s (pid %d) as %d", address, instance, pid, fd)
