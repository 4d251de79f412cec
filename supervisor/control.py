"""The control-socket client of the CLI tools (lithos_ps, lithos_switch).

Owns: connecting to `<runtime-dir>/control.sock`, the Hello handshake, one
request and its reply, and reading `<runtime-dir>/master.pid`. Rules: every
failure becomes a NoDaemon or ControlError whose text names the socket or
the file; a request waits at most `timeout_s` (a CLI never hangs on a stuck
broker); the broker's RequestDenied is a ControlError carrying its code.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from protocol import messages as m
from protocol.channel import Channel
from protocol.errors import ChannelClosed, ProtocolViolation
from protocol.records import DenyCode, Role

DEFAULT_TIMEOUT_S = 10.0


class NoDaemon(Exception):
    """No lithos_tree answers on the control socket (not running, or gone)."""


class ControlError(Exception):
    """The broker refused a request, or the conversation broke."""

    def __init__(self, text: str, code: DenyCode | None = None) -> None:
        super().__init__(text)
        self.code = code


def socket_path(runtime_dir: Path) -> Path:
    return runtime_dir / "control.sock"


def connect(runtime_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Channel:
    """A channel past the handshake; raises NoDaemon when nobody listens."""
    path = socket_path(runtime_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as e:
        sock.close()
        raise NoDaemon(f"{path}: no lithos_tree listens here ({e.strerror})") from None
    except OSError as e:
        sock.close()
        raise ControlError(f"{path}: cannot connect: {e}") from None
    channel = Channel(sock)
    try:
        reply = _ask(channel, m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), 1, path)
    except BaseException:
        channel.close()
        raise
    if not isinstance(reply, m.HelloOk):
        channel.close()
        raise ControlError(f"{path}: unexpected reply to Hello: {type(reply).__name__}")
    return channel


def request(runtime_dir: Path, message: m.Request,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> m.Message:
    """Connect, send one request, return its reply (RequestDenied raises ControlError)."""
    with connect(runtime_dir, timeout_s) as channel:
        return _ask(channel, message, 2, socket_path(runtime_dir))


def status(runtime_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> m.StatusTree:
    reply = request(runtime_dir, m.GetStatus(), timeout_s)
    if not isinstance(reply, m.StatusTree):
        raise ControlError(f"unexpected reply to GetStatus: {type(reply).__name__}")
    return reply


def _ask(channel: Channel, message: m.Request, request_id: int, path: Path) -> m.Message:
    try:
        channel.send(message, request_id)
        while True:
            received = channel.recv()
            for fd in received.fds:
                fd.close()
            if received.request_id == request_id:
                break  # events (request id 0) are not for us
    except TimeoutError:
        raise ControlError(f"{path}: no reply to {type(message).__name__} in time") from None
    except (ChannelClosed, ConnectionError) as e:
        raise NoDaemon(f"{path}: lithos_tree closed the connection ({e})") from None
    except ProtocolViolation as e:
        raise ControlError(f"{path}: bad reply: {e}") from None
    reply = received.message
    if isinstance(reply, m.RequestDenied):
        raise ControlError(f"lithos_tree refused {type(message).__name__}: {reply.reason}",
                           reply.code)
    return reply


def read_master_pid(runtime_dir: Path) -> int:
    """The pid in master.pid; raises NoDaemon naming the file when there is none."""
    path = runtime_dir / "master.pid"
    try:
        text = path.read_text().strip()
    except OSError:
        raise NoDaemon(f"Can't read pid file {path}. Probably daemon is not running.") from None
    try:
        pid = int(text)
    except ValueError:
        raise NoDaemon(f"{path}: {text[:20]!r} is not a pid. Probably daemon is not "
                       "running.") from None
    return pid


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
