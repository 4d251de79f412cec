"""sd_notify(3) without libsystemd: tell systemd lithos_tree is ready.

With `Type=notify`, systemd waits for `READY=1` on the datagram socket named in
NOTIFY_SOCKET; lithos_tree sends it once its supervisor has reconciled (every
configured container started or adopted), so `systemctl start lithos` returns
when the services are up. Without NOTIFY_SOCKET this does nothing.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Sends `state` (e.g. "READY=1") to systemd; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
