"""The version handshake that opens every connection, as two pure checks.

Owns: what makes a Hello acceptable (the broker side) and a HelloOk acceptable
(the connecting side). Rules: a refusal is a Denied naming both versions or the
role and the socket, so the peer can print it as is; which socket a connection
came in on is the caller's knowledge, passed as `expected_role`. Pure: no I/O.
"""

from __future__ import annotations

from protocol.errors import Denied, ProtocolViolation
from protocol.messages import PROTOCOL_VERSION, Hello, HelloOk
from protocol.records import DenyCode, Role

_SOCKET_OF = {Role.SUPERVISOR: "the supervisor's socketpair", Role.CONTROL: "the control socket"}


def check_hello(hello: Hello, expected_role: Role) -> None:
    """Accept a Hello that arrived on the socket of expected_role.

    Raises:
        Denied: VERSION_MISMATCH for another protocol version, NOT_PERMITTED for a role
            that does not belong on this socket.
    """
    if hello.protocol_version != PROTOCOL_VERSION:
        raise Denied(
            DenyCode.VERSION_MISMATCH,
            f"Hello: protocol_version: {hello.protocol_version}: this broker speaks "
            f"protocol {PROTOCOL_VERSION} (run lithos commands of the same release)",
        )
    if hello.role is not expected_role:
        raise Denied(
            DenyCode.NOT_PERMITTED,
            f"Hello: role: {hello.role.value}: not accepted on {_SOCKET_OF[expected_role]} "
            f"(only {expected_role.value})",
        )


def check_hello_ok(reply: HelloOk) -> None:
    """Accept the broker's HelloOk.

    Raises:
        ProtocolViolation: the broker claims another protocol version than it accepted.
    """
    if reply.protocol_version != PROTOCOL_VERSION:
        raise ProtocolViolation(
            f"HelloOk: protocol_version: {reply.protocol_version}, this side speaks "
            f"{PROTOCOL_VERSION}"
        )
