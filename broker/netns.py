"""The broker thread's trips into a container's network namespace, and NetworkError.

Owns setns(CLONE_NEWNET) for the broker: into a namespace (`enter_netns`, also
the after-setup helper's pre-exec step) and back (`return_to_netns`, fatal when
it fails), and `inside_netns`, the block that does both on the calling thread
only (/proc/thread-self). Split from broker/bridge.py so that the start path
(broker/netstart.py) needs no pyroute2: bridge.py, the only module that imports
it (about 13 MB of a broker's memory, 280 modules), is imported at the first
bridged start, never by a broker whose sandboxes all use the host network.
Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Iterator

__all__ = [
    "CLONE_NEWNET",
    "EXIT_WRONG_NETNS",
    "THREAD_NETNS",
    "NetworkError",
    "enter_netns",
    "inside_netns",
    "return_to_netns",
]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
THREAD_NETNS = "/proc/thread-self/ns/net"
EXIT_WRONG_NETNS = 70  # EX_SOFTWARE: the broker could not return to its own netns

_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(Exception):
    """Setting up or tearing down a container's network failed; the message says why."""


def enter_netns(fd: int) -> None:
    """This thread into the netns `fd`; its other namespaces stay as they are."""
    # Python 3.11 has no os.setns. Only CLONE_NEWNET: the after-setup helper keeps
    # the broker's mount, pid, uts and ipc namespaces, so it runs host binaries.
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def return_to_netns(own_fd: int) -> None:
    if _libc.setns(own_fd, CLONE_NEWNET) != 0:  # every later socket would be a container's
        err = errno.errorcode.get(ctypes.get_errno(), "?")
        log.critical("bridge: cannot return to our own network namespace: %s; exiting", err)
        os._exit(EXIT_WRONG_NETNS)


@contextlib.contextmanager
def inside_netns(netns_fd: int) -> Iterator[None]:
    """This thread (only) in `netns_fd` for the block, then back in its own netns.

    Sockets made in the block live in `netns_fd` for good; so do children forked there.
    """
    own_fd = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(netns_fd)
        try:
            yield
        finally:
            return_to_netns(own_fd)
    finally:
        os.close(own_fd)
