"""Fixtures of the protocol suite: fd-leak checking everywhere, ChannelPair, the fuzz mark.

Every test here runs under the shared `no_fd_leak` fixture (STYLE P6, trio's
test_for_leaking_fds). Tests marked `fuzz` (the long decoder fuzz run) are skipped
unless selected with `-m fuzz` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from protocol.channel import Channel
from protocol.codec import Decoder


@pytest.fixture(autouse=True)
def _check_fd_leaks(no_fd_leak: None) -> Iterator[None]:
    yield


@dataclass
class ChannelPair:
    """Two connected channels, like h11's ConnectionPair: `broker` and `peer`."""

    broker: Channel
    peer: Channel

    def close(self) -> None:
        self.broker.close()
        self.peer.close()


@pytest.fixture
def channel_pair() -> Iterator[ChannelPair]:
    broker, peer = Channel.pair()
    pair = ChannelPair(broker, peer)
    yield pair
    pair.close()


@pytest.fixture
def small_channel_pair() -> Iterator[ChannelPair]:
    """A pair whose receivers accept at most 1024 bytes per datagram."""
    decoder = Decoder(max_message_bytes=1024, max_large_message_bytes=1024)
    broker, peer = Channel.pair(decoder)
    pair = ChannelPair(broker, peer)
    yield pair
    pair.close()
