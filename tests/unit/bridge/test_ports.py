"""knot.ports: the options of a listening socket (K-34), on loopback."""

from __future__ import annotations

import os
import socket

import pytest

from knot.ports import open_listening_socket, put_at_fd


def test_options_are_applied() -> None:
    with open_listening_socket("127.0.0.1", 0, 7, True, True, True) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert not sock.getblocking()
    with open_listening_socket("::1", 0, 7, False, False, False) as sock:
        assert sock.family == socket.AF_INET6
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getblocking()


def test_address_in_use_names_the_port(no_fd_leak: None) -> None:
    with open_listening_socket("127.0.0.1", 0, 1, False, False, False) as first:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match=rf"tcp-ports: {port}: listening on 127\.0\.0\.1"):
            open_listening_socket("127.0.0.1", port, 1, False, False, False)


def test_put_at_fd_leaves_one_inheritable_copy(no_fd_leak: None) -> None:
    sock = open_listening_socket("127.0.0.1", 0, 1, False, False, False)
    port = sock.getsockname()[1]
    target = os.dup(0)  # a free fd number we own, like the `fd:` of a tcp-port
    try:
        put_at_fd(sock, target)
        assert sock.fileno() == -1
        assert os.get_inheritable(target)
        with socket.socket(fileno=os.dup(target)) as again:
            assert again.getsockname()[1] == port
    finally:
        os.close(target)
