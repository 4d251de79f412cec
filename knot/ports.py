"""Listening sockets opened inside a bridged container (K-34).

In a bridged sandbox every `tcp-ports` entry without `external: true` is opened
by the container itself, in its own netns, after setuid (with
CAP_NET_BIND_SERVICE, see knot/caps.py) and just before exec; a new socket is
bound at every start. Rules:
- No logging (runs in the forked child): errors are OSError naming the address
  for the knot's step() to report.
- The socket is returned close-on-exec; put_at_fd() places it at the `fd` the
  config names, and only that copy is inherited by the app.
Imports nothing of ours.
"""

from __future__ import annotations

import ipaddress
import os
import socket


def open_listening_socket(host: str, port: int, backlog: int, reuse_addr: bool,
                          reuse_port: bool, non_block: bool) -> socket.socket:
    """socket, SO_REUSEADDR/SO_REUSEPORT, O_NONBLOCK, bind, listen, as Lithos does (K-34)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(not non_block)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"tcp-ports: {port}: listening on {host}:{port}: "
                                 f"{os.strerror(exc.errno or 0)}") from exc
    return sock


def put_at_fd(sock: socket.socket, fd: int) -> None:
    """Move `sock` to exactly `fd` (`tcp-ports: {80: {fd: 3}}`), inheritable across exec."""
    if sock.fileno() == fd:
        os.set_inheritable(fd, True)
        sock.detach()
        return
    os.dup2(sock.fileno(), fd)  # dup2's copy is inheritable by default
    sock.close()
