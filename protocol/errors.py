"""The two failure kinds of the protocol (STYLE P3; h11's Local/Remote, s6's EPROTO/EPERM).

ProtocolViolation: the peer is broken or hostile; close that channel (never the broker).
Denied: a well-formed request that the policy refuses; reply RequestDenied and carry on.
Pure: imports only protocol.records.
"""

from __future__ import annotations

from protocol.records import DenyCode


class ProtocolViolation(Exception):
    """Bytes or fds that are not a valid message; the only exception decoding raises."""


class Denied(Exception):
    """A well-formed request refused by the policy; becomes RequestDenied(code, reason)."""

    def __init__(self, code: DenyCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason


class ChannelClosed(Exception):
    """The peer closed its end of the channel (an empty datagram reads the same)."""
