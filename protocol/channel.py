"""Channel: one AF_UNIX SOCK_SEQPACKET socket carrying encoded messages and their fds.

Owns: the only socket send/recv with fds (SCM_RIGHTS) of lithos, and peer
credentials (SO_PEERCRED). Rules: one datagram is one message plus its fds; a
truncated datagram or ancillary buffer (MSG_TRUNC, MSG_CTRUNC) is a
ProtocolViolation; every fd received is close-on-exec (MSG_CMSG_CLOEXEC) and is
wrapped in an OwnedFd at once, and the fds of a rejected datagram are closed before
the exception leaves. Decisions belong to the caller: this module never retries,
never sleeps and never logs. Encoding and validation are protocol.codec's.
"""

from __future__ import annotations

import array
import mmap
import socket
import struct
from collections.abc import Sequence
from types import TracebackType

from protocol.codec import MAX_FDS, Decoder, encode
from protocol.errors import ChannelClosed, ProtocolViolation
from protocol.fds import OwnedFd, close_all
from protocol.messages import Message
from protocol.structs import dataclass

_INT = array.array("i").itemsize
# Exactly MAX_FDS ints: one fd more than any message takes sets MSG_CTRUNC.
_ANCILLARY_BYTES = socket.CMSG_LEN(MAX_FDS * _INT)
_SEND_BUFFER_SLACK = 64 * 1024  # skb overhead counted against SO_SNDBUF
_SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; not exported by the socket module
# The receive buffer is an anonymous mapping: only the pages a datagram was written
# to are resident, and after a datagram larger than this they are given back.
_KEEP_RESIDENT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Received:
    """One message received; the caller owns (and must close or pass on) the fds."""

    message: Message
    request_id: int
    fds: tuple[OwnedFd, ...]

    def close_fds(self) -> None:
        """Close every fd that came with the message (e.g. after refusing it)."""
        close_all(self.fds)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED: the peer's pid, uid and gid when it connected (socketpair: created)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials the kernel recorded for the peer of a connected AF_UNIX socket."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return PeerCredentials(pid, uid, gid)


class Channel:
    """A connected SOCK_SEQPACKET socket speaking the protocol; owns the socket."""

    def __init__(self, sock: socket.socket, decoder: Decoder | None = None) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            raise ValueError(f"Channel needs an AF_UNIX SOCK_SEQPACKET socket, got {sock!r}")
        self._sock = sock
        self._decoder = decoder or Decoder()
        # One byte more than the largest datagram, so that an oversized one is seen as
        # oversized by the decoder rather than only through MSG_TRUNC. Not a bytearray:
        # its 1 MiB would be resident in every process for every channel.
        self._buffer = mmap.mmap(-1, self._decoder.max_datagram_bytes + 1,
                                 flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # fmt: skip
        self._grow_send_buffer(self._decoder.max_datagram_bytes + _SEND_BUFFER_SLACK)

    @classmethod
    def pair(cls, decoder: Decoder | None = None) -> tuple[Channel, Channel]:
        """Two connected channels (socketpair); both fds are close-on-exec."""
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(left, decoder), cls(right, decoder)

    @classmethod
    def from_fileno(cls, fd: int, decoder: Decoder | None = None) -> Channel:
        """Adopt an inherited socket fd (e.g. the supervisor's end, passed by the broker)."""
        return cls(socket.socket(fileno=fd), decoder)

    def _grow_send_buffer(self, size: int) -> None:
        # AF_UNIX refuses a datagram larger than SO_SNDBUF - 32 with EMSGSIZE, and the
        # default (net.core.wmem_default, ~208 KiB) is below a large Snapshot. Root may
        # go past net.core.wmem_max with SO_SNDBUFFORCE; others get what wmem_max allows.
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= size:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def peer_credentials(self) -> PeerCredentials:
        return peer_credentials(self._sock)

    def send(self, message: Message, request_id: int, fds: Sequence[int | OwnedFd] = ()) -> None:
        """Send one message with exactly type(message).FDS fds (the caller keeps them).

        Raises ValueError/TypeError for a message this side must not send, OSError from
        the socket (BlockingIOError when non-blocking and the peer's queue is full).
        """
        if len(fds) != message.FDS:
            raise ValueError(
                f"{type(message).__name__} takes {message.FDS} fds, {len(fds)} were given"
            )
        # The peer runs the same limits: refuse here what it would refuse there.
        data = encode(message, request_id, self._decoder.limit_for(type(message)))
        if not fds:
            self._sock.send(data)
            return
        numbers = array.array("i", (fd if isinstance(fd, int) else fd.fileno() for fd in fds))
        self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, numbers)])

    def recv(self) -> Received:
        """Wait for one message (in the socket's blocking mode).

        Raises:
            ProtocolViolation: the datagram or its fds are not one valid message.
            ChannelClosed: the peer closed its end.
            BlockingIOError: the socket is non-blocking and nothing is queued.
        """
        return self._recv(0)

    def try_recv(self) -> Received | None:
        """One message if one is queued, else None (never blocks).

        Raises:
            ProtocolViolation: the datagram or its fds are not one valid message.
            ChannelClosed: the peer closed its end.
        """
        try:
            return self._recv(socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def _recv(self, flags: int) -> Received:
        try:
            size, ancillary, msg_flags, _ = self._sock.recvmsg_into(
                [self._buffer], _ANCILLARY_BYTES, flags | socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionResetError:
            # A peer that exits with our reply unread resets a SEQPACKET pair:
            # for the receiver that is the same as a close.
            raise ChannelClosed("peer reset the channel") from None
        fds, foreign = _take_fds(ancillary)
        try:
            if msg_flags & socket.MSG_CTRUNC:
                raise ProtocolViolation(f"more than {MAX_FDS} fds or other ancillary data")
            if msg_flags & socket.MSG_TRUNC:
                raise ProtocolViolation(f"datagram larger than {len(self._buffer)} bytes")
            if foreign:
                raise ProtocolViolation(f"unexpected ancillary data: {foreign}")
            if size == 0:
                if fds:
                    raise ProtocolViolation(f"empty datagram with {len(fds)} fds")
                raise ChannelClosed("peer closed the channel")
            data = self._buffer[:size]  # one copy, not two
            if size > _KEEP_RESIDENT_BYTES:
                self._buffer.madvise(mmap.MADV_DONTNEED, 0, size)
            frame = self._decoder.decode(data, [fd.fileno() for fd in fds])
        except BaseException:
            close_all(fds)  # s6's unixmessage_drop: a rejected message's fds die with it
            raise
        return Received(frame.message, frame.request_id, tuple(fds))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _take_fds(ancillary: list[tuple[int, int, bytes]]) -> tuple[list[OwnedFd], list[str]]:
    """Own every fd in the ancillary data; name any other kind of control message."""
    fds: list[OwnedFd] = []
    foreign: list[str] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            numbers = array.array("i")
            numbers.frombytes(data[: len(data) - len(data) % _INT])  # a truncated tail
            fds.extend(OwnedFd(fd) for fd in numbers)
        else:
            foreign.append(f"level {level} type {kind}")
    return fds, foreign
