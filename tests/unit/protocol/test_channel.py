"""protocol.channel and protocol.fds over real SOCK_SEQPACKET socketpairs.

Every test runs under the suite's autouse fd-leak check: fds that came with a
rejected datagram must be closed by the channel, and OwnedFds by their owner.
"""

from __future__ import annotations

import array
import fcntl
import gc
import os
import selectors
import socket
from collections.abc import Iterator

import pytest

from protocol import messages as m
from protocol.channel import Channel, PeerCredentials, Received, peer_credentials
from protocol.codec import encode
from protocol.errors import ChannelClosed, ProtocolViolation
from protocol.fds import OwnedFd, close_all
from protocol.fuzz import sample_child, sample_messages

Pair = tuple[Channel, Channel]


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def send_raw(channel: Channel, data: bytes, fds: list[int]) -> None:
    """What a hostile peer can do: any bytes, any fds."""
    sock = socket.socket(fileno=os.dup(channel.fileno()))
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([data], ancillary)
    finally:
        sock.close()


def is_cloexec(fd: OwnedFd) -> bool:
    return bool(fcntl.fcntl(fd.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


@pytest.mark.parametrize("message", sample_messages(), ids=lambda msg: type(msg).__name__)
def test_every_message_crosses_a_socketpair(channel_pair, pipe, message: m.Message) -> None:
    request_id = 0 if message.KIND is m.Kind.EVENT else 99
    fds = [pipe[0], pipe[1], pipe[1]][: message.FDS]
    channel_pair.peer.send(message, request_id, fds)
    received = channel_pair.broker.recv()
    try:
        assert (received.message, received.request_id) == (message, request_id)
        assert len(received.fds) == message.FDS
    finally:
        close_all(received.fds)


def test_run_command_fds_arrive_cloexec_and_work(channel_pair, pipe) -> None:
    read_end, write_end = pipe
    channel_pair.peer.send(m.RunCommand("web", "migrate", ()), 1, [read_end, write_end, write_end])
    received = channel_pair.broker.recv()
    with received.fds[0] as stdin, received.fds[1] as stdout, received.fds[2] as stderr:
        assert all(is_cloexec(fd) for fd in (stdin, stdout, stderr))
        os.write(stdout.fileno(), b"out")
        assert os.read(stdin.fileno(), 3) == b"out"  # same pipe, new numbers
        assert stdout.fileno() not in (read_end, write_end)


def test_fds_on_a_message_that_takes_none_are_closed(channel_pair, pipe) -> None:
    before = set(os.listdir("/proc/self/fd"))
    send_raw(channel_pair.peer, encode(m.GetStatus(), 1), [pipe[0]])
    with pytest.raises(ProtocolViolation, match="GetStatus: came with 1 fds, takes 0"):
        channel_pair.broker.recv()
    assert set(os.listdir("/proc/self/fd")) == before


def test_fds_with_garbage_are_closed_and_the_channel_goes_on(channel_pair, pipe) -> None:
    send_raw(channel_pair.peer, b"\xc1garbage", [pipe[0], pipe[1]])
    with pytest.raises(ProtocolViolation, match="msgpack"):
        channel_pair.broker.recv()
    channel_pair.peer.send(m.GetStatus(), 2)
    assert channel_pair.broker.recv() == Received(m.GetStatus(), 2, ())


def test_too_many_fds_is_msg_ctrunc_and_leaks_nothing(channel_pair, pipe) -> None:
    # Ten fds where the receiver's ancillary buffer holds three: the kernel sets
    # MSG_CTRUNC, delivers what fits (the channel must close those) and drops the rest.
    before = set(os.listdir("/proc/self/fd"))
    frame = encode(m.RunCommand("web", "migrate", ()), 1)
    send_raw(channel_pair.peer, frame, [pipe[0]] * 10)
    with pytest.raises(ProtocolViolation, match="more than 3 fds"):
        channel_pair.broker.recv()
    assert set(os.listdir("/proc/self/fd")) == before
    channel_pair.peer.send(m.GetStatus(), 2)
    assert channel_pair.broker.recv().message == m.GetStatus()


def test_one_fd_too_many_for_run_command_is_rejected(channel_pair, pipe) -> None:
    frame = encode(m.RunCommand("web", "migrate", ()), 1)
    send_raw(channel_pair.peer, frame, [pipe[0], pipe[1]])
    with pytest.raises(ProtocolViolation, match="came with 2 fds, takes 3"):
        channel_pair.broker.recv()


def test_oversized_datagram_is_msg_trunc(small_channel_pair, pipe) -> None:
    send_raw(small_channel_pair.peer, b"\x00" * 4000, [pipe[0]])
    with pytest.raises(ProtocolViolation, match="larger than 1025 bytes"):
        small_channel_pair.broker.recv()


def test_datagram_of_one_byte_over_the_limit_is_rejected(small_channel_pair) -> None:
    send_raw(small_channel_pair.peer, b"\x00" * 1025, [])
    with pytest.raises(ProtocolViolation, match="exceeds 1024"):
        small_channel_pair.broker.recv()


def test_send_checks_the_fd_count(channel_pair, pipe) -> None:
    with pytest.raises(ValueError, match="RunCommand takes 3 fds, 1 were given"):
        channel_pair.peer.send(m.RunCommand("web", "migrate", ()), 1, [pipe[0]])
    with pytest.raises(ValueError, match="GetStatus takes 0 fds"):
        channel_pair.peer.send(m.GetStatus(), 1, [pipe[0]])


def test_try_recv_returns_none_when_nothing_is_queued(channel_pair) -> None:
    assert channel_pair.broker.try_recv() is None
    channel_pair.peer.send(m.GetSnapshot(), 5)
    assert channel_pair.broker.try_recv() == Received(m.GetSnapshot(), 5, ())
    assert channel_pair.broker.try_recv() is None


def test_a_selector_loop_sees_a_message(channel_pair) -> None:
    channel_pair.broker.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(channel_pair.broker, selectors.EVENT_READ)
        assert selector.select(timeout=0) == []
        channel_pair.peer.send(m.Reload(), 8)
        assert len(selector.select(timeout=5)) == 1
    assert channel_pair.broker.recv().message == m.Reload()
    with pytest.raises(BlockingIOError):
        channel_pair.broker.recv()


def test_peer_close_is_channel_closed(channel_pair) -> None:
    channel_pair.peer.close()
    with pytest.raises(ChannelClosed):
        channel_pair.broker.recv()
    with pytest.raises(ChannelClosed):
        channel_pair.broker.try_recv()


def test_empty_datagram_with_fds_is_a_violation(channel_pair, pipe) -> None:
    send_raw(channel_pair.peer, b"", [pipe[0]])
    with pytest.raises(ProtocolViolation, match="empty datagram"):
        channel_pair.broker.recv()


def test_a_snapshot_of_1000_children_crosses(channel_pair) -> None:
    snapshot = m.Snapshot(tuple(sample_child(i) for i in range(1000)), ())
    channel_pair.broker.send(snapshot, 3)
    assert channel_pair.peer.recv().message == snapshot


def test_peer_credentials_of_a_socketpair_are_ours(channel_pair) -> None:
    ours = PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    assert channel_pair.broker.peer_credentials() == ours
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left).pid == os.getpid()


def test_channel_wants_seqpacket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right, pytest.raises(ValueError, match="SOCK_SEQPACKET"):
        Channel(left)


def test_from_fileno_adopts_an_inherited_socket() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with Channel(left) as broker, Channel.from_fileno(right.detach()) as supervisor:
        supervisor.send(m.Hello(m.PROTOCOL_VERSION, m.Role.SUPERVISOR), 1)
        assert broker.recv().message == m.Hello(1, m.Role.SUPERVISOR)


def test_owned_fd_close_is_idempotent_and_fileno_after_close_raises(pipe) -> None:
    fd = OwnedFd(os.dup(pipe[0]))
    number = fd.fileno()
    fd.close()
    fd.close()
    assert fd.closed and repr(fd) == "OwnedFd(closed)"
    with pytest.raises(ValueError, match="after close"):
        fd.fileno()
    assert not os.path.exists(f"/proc/self/fd/{number}")


def test_owned_fd_detach_hands_over_ownership(pipe) -> None:
    fd = OwnedFd(os.dup(pipe[0]))
    number = fd.detach()
    fd.close()  # no effect: no longer ours
    os.fstat(number)
    os.close(number)


def test_a_forgotten_owned_fd_is_closed_with_a_warning(pipe) -> None:
    fd = OwnedFd(os.dup(pipe[0]))
    with pytest.warns(ResourceWarning, match="never closed"):
        del fd
        gc.collect()


def test_send_refuses_what_the_peer_would_refuse(small_channel_pair) -> None:
    with pytest.raises(ValueError, match="exceeds the limit of 1024"):
        small_channel_pair.peer.send(m.ReloadOk(("x" * 2000,)), 1)
    assert small_channel_pair.broker.try_recv() is None


def _resident_pages(buffer: object) -> int:
    """How many pages of `buffer` are in memory (mincore(2); the kernel may merge its
    mapping with a neighbour, so smaps cannot tell)."""
    import ctypes
    import mmap

    view = ctypes.c_char.from_buffer(buffer)  # type: ignore[arg-type]
    address = ctypes.addressof(view)
    del view
    length = len(buffer)  # type: ignore[arg-type]
    vec = (ctypes.c_ubyte * ((length + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    assert libc.mincore(address, length, vec) == 0, os.strerror(ctypes.get_errno())
    return sum(b & 1 for b in vec)


def test_the_receive_buffer_holds_only_the_pages_a_datagram_used(channel_pair) -> None:
    """1 MiB per channel would be resident in the broker and the supervisor for
    nothing: the buffer is a mapping, and a large datagram's pages are given back."""
    buffer = channel_pair.broker._buffer
    assert _resident_pages(buffer) == 0
    channel_pair.peer.send(m.GetStatus(), 1)
    channel_pair.broker.recv()
    assert _resident_pages(buffer) == 1
    send_raw(channel_pair.peer, b"\x00" * 200_000, [])
    with pytest.raises(ProtocolViolation):
        channel_pair.broker.recv()
    assert _resident_pages(buffer) == 0
