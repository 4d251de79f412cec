"""A peer that dies with data unread resets the socket: that is ChannelClosed."""

from __future__ import annotations

import socket

import pytest

from protocol import messages as m
from protocol.channel import Channel
from protocol.errors import ChannelClosed
from protocol.records import Role


def test_reset_by_peer_is_channel_closed(no_fd_leak: None) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours, theirs = Channel(a), Channel(b)
    ours.send(m.Hello(m.PROTOCOL_VERSION, Role.SUPERVISOR), 1)
    theirs.close()  # closed with our message unread: the kernel resets the pair
    with pytest.raises(ChannelClosed):
        ours.try_recv()
    ours.close()
