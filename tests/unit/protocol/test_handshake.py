"""protocol.handshake over a real channel: a peer of another version is refused clearly."""

from __future__ import annotations

import os

import pytest

from protocol import messages as m
from protocol.errors import Denied, ProtocolViolation
from protocol.handshake import check_hello, check_hello_ok
from protocol.records import DenyCode, Pid, Role


def broker_answers_hello(channel, expected_role: Role) -> None:
    """What the broker's first step does with the first message of a connection."""
    received = channel.recv()
    assert isinstance(received.message, m.Hello)
    try:
        check_hello(received.message, expected_role)
    except Denied as denied:
        channel.send(m.RequestDenied(denied.code, denied.reason), received.request_id)
        return
    reply = m.HelloOk(m.PROTOCOL_VERSION, Pid(os.getpid()), 1.0, "0.1.0")
    channel.send(reply, received.request_id)


def test_same_version_and_role_is_welcome(channel_pair) -> None:
    channel_pair.peer.send(m.Hello(m.PROTOCOL_VERSION, Role.SUPERVISOR), 1)
    broker_answers_hello(channel_pair.broker, Role.SUPERVISOR)
    reply = channel_pair.peer.recv()
    assert reply.request_id == 1 and isinstance(reply.message, m.HelloOk)
    check_hello_ok(reply.message)


def test_another_version_gets_a_clear_refusal(channel_pair) -> None:
    channel_pair.peer.send(m.Hello(m.PROTOCOL_VERSION + 1, Role.CONTROL), 7)
    broker_answers_hello(channel_pair.broker, Role.CONTROL)
    reply = channel_pair.peer.recv()
    assert reply.request_id == 7
    assert reply.message == m.RequestDenied(
        DenyCode.VERSION_MISMATCH,
        "Hello: protocol_version: 2: this broker speaks protocol 1 "
        "(run lithos commands of the same release)",
    )


def test_a_control_client_on_the_supervisor_socket_is_refused() -> None:
    with pytest.raises(Denied, match="role: control: not accepted on the supervisor's") as info:
        check_hello(m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), Role.SUPERVISOR)
    assert info.value.code is DenyCode.NOT_PERMITTED


def test_a_hello_ok_of_another_version_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="protocol_version: 9"):
        check_hello_ok(m.HelloOk(9, Pid(1), 0.0, "x"))
