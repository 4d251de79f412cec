"""Hostile control clients (issue 11): a non-root client may read the status but not
reload; a client claiming the supervisor's role is refused; garbage, truncated,
oversized datagrams and fds a message must not carry close only that connection;
a fuzz loop over the live socket leaves the broker serving, with bounded memory."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import socket
import subprocess

import pytest

from protocol import messages as m
from protocol.channel import Channel
from protocol.codec import decode, encode
from protocol.errors import ProtocolViolation
from protocol.fuzz import mutate, sample_messages, seed_frames
from protocol.records import DenyCode, Role
from tests.chaos.storm import choose_seed
from tests.security.tree import (
    closed_by_peer,
    fd_targets,
    get_status,
    hello,
    raw_client,
    send_with_fd,
    start_sleeper,
    supervisor_pid,
    vm_rss_kib,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

FUZZ_SECONDS = float(os.environ.get("LITHOS_SEC_FUZZ_SECONDS", "20"))
RSS_GROWTH_LIMIT_KIB = 20 * 1024


def _as_nobody(path: str) -> dict[str, object]:
    """In a forked child dropped to 65534: Hello, GetStatus, Reload; what each got."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this, then _exit
        out: dict[str, object] = {}
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.connect(path)
            with Channel(sock) as ch:
                out["hello"] = type(hello(ch)).__name__
                out["status"] = type(get_status(ch)).__name__
                ch.send(m.Reload(), 3)
                reply = ch.recv().message
                out["reload"] = type(reply).__name__
                if isinstance(reply, m.RequestDenied):
                    out["code"] = reply.code.value
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out["error"] = repr(e)
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


def test_non_root_client_reads_status_but_may_not_reload(sec_tree) -> None:
    start_sleeper(sec_tree)
    sup = supervisor_pid(sec_tree)
    got = _as_nobody(str(sec_tree.runtime / "control.sock"))
    assert got == {"hello": "HelloOk", "status": "StatusTree", "reload": "RequestDenied",
                   "code": DenyCode.NOT_PERMITTED.value}, got  # fmt: skip
    assert supervisor_pid(sec_tree) == sup and os.path.exists(f"/proc/{sup}")
    sec_tree.wait_for(r"denied Reload from control \(uid 65534\)")


def test_control_client_claiming_the_supervisor_role_is_refused(sec_tree) -> None:
    start_sleeper(sec_tree)
    with Channel(raw_client(sec_tree)) as ch:
        reply = hello(ch, Role.SUPERVISOR)
        assert isinstance(reply, m.RequestDenied) and reply.code is DenyCode.NOT_PERMITTED
        ch.send(m.GetSnapshot(), 2)  # and the supervisor's requests stay closed to it
        reply = ch.recv().message
        assert isinstance(reply, m.RequestDenied) and reply.code is DenyCode.NOT_PERMITTED
        ch.send(m.StartInstance("sec/sleep.1", "sha256:" + "00" * 32), 3)
        reply = ch.recv().message
        assert isinstance(reply, m.RequestDenied), reply


def _abuses() -> list[tuple[str, bytes, bool]]:
    """(what, datagram, with an fd) that must each close only their own connection."""
    hello_frame = encode(m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), 1)
    return [
        ("garbage", b"\x00\xffGARBAGE\xc1" * 7, False),
        ("random bytes", random.Random(1).randbytes(300), False),
        ("truncated hello", hello_frame[: len(hello_frame) // 2], False),
        ("truncated by one byte", hello_frame[:-1], False),
        ("oversized (70 KiB)", b"\x93\xa5Hello\x01" + b"\xc0" * (70 * 1024), False),
        ("oversized (1.5 MiB)", b"\x93" + b"\x00" * (1536 * 1024), False),
        ("hello with an fd", hello_frame, True),
        ("empty datagram with an fd", b"", True),
    ]


@pytest.mark.parametrize("what,data,with_fd", _abuses(), ids=[a[0] for a in _abuses()])
def test_bad_datagram_closes_only_its_connection(sec_tree, what, data, with_fd) -> None:
    start_sleeper(sec_tree)
    broker = sec_tree.pid
    bystander = sec_tree.control()  # a well-behaved client, connected all along
    before = len(fd_targets(broker))
    sock = raw_client(sec_tree)
    sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE: room for 1.5 MiB
    if with_fd:
        with open("/dev/null", "rb") as devnull:
            send_with_fd(sock, data, devnull.fileno())
    else:
        sock.send(data)
    assert closed_by_peer(sock), f"{what}: the connection stayed open"
    sock.close()
    with bystander:
        assert isinstance(get_status(bystander), m.StatusTree)
    assert isinstance(sec_tree.status(), m.StatusTree)
    assert sec_tree.proc is not None and sec_tree.proc.poll() is None and sec_tree.pid == broker
    # Nothing leaked: the fd that came with the datagram was closed with it.
    assert len(fd_targets(broker)) <= before, (what, fd_targets(broker))


def test_fuzzed_frames_on_the_live_socket_leave_the_broker_serving(sec_tree) -> None:
    start_sleeper(sec_tree)
    seed = choose_seed()
    print(f"control fuzz seed {seed} (LITHOS_CHAOS_SEED={seed}), {FUZZ_SECONDS}s")
    broker = sec_tree.pid
    rng = random.Random(seed)
    frames = [frame for frame, _ in seed_frames()]
    hello_frame = encode(m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), 1)
    sent = connections = 0

    def fuzz(seconds: float) -> None:
        nonlocal sent, connections
        deadline = _now() + seconds
        sock: socket.socket | None = None
        while _now() < deadline:
            if sock is None:
                sock = raw_client(sec_tree)
                sock.setblocking(False)
                connections += 1
                if rng.random() < 0.7:
                    sock.send(hello_frame)
            data = mutate(rng, rng.choice(frames), frames) if rng.random() < 0.9 \
                else rng.randbytes(rng.randint(0, 80))  # fmt: skip
            if _decodes_to_reload(data):
                continue  # see _decodes_to_reload
            try:
                if rng.random() < 0.05:
                    send_with_fd(sock, data, sock.fileno())
                else:
                    sock.send(data)
                sent += 1
                while sock.recv(1 << 21):
                    pass  # replies; EOF (b"") means the broker closed us
                sock.close()
                sock = None
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError):
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    try:
        fuzz(min(2.0, FUZZ_SECONDS / 4))  # warm up: allocator pools, log buffers
    finally:
        assert sec_tree.log is not None
        print("\n".join(sec_tree.log.lines[-15:]))
    assert isinstance(sec_tree.status(), m.StatusTree)
    rss_before, fds_before = vm_rss_kib(broker), len(fd_targets(broker))
    fuzz(FUZZ_SECONDS)
    assert isinstance(sec_tree.status(), m.StatusTree)
    rss_after, fds_after = vm_rss_kib(broker), len(fd_targets(broker))
    print(f"{sent} frames over {connections} connections; broker VmRSS {rss_before} -> "
          f"{rss_after} KiB, fds {fds_before} -> {fds_after}")  # fmt: skip
    assert sec_tree.proc is not None and sec_tree.proc.poll() is None and sec_tree.pid == broker
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)
    assert fds_after <= fds_before + 2, fd_targets(broker)
    assert sent > 100


def _decodes_to_reload(data: bytes) -> bool:
    """A valid Reload from root restarts the supervisor: allowed, not abuse."""
    try:
        frame = decode(data, ())
    except ProtocolViolation:
        return False
    return isinstance(frame.message, m.Reload)




def test_valid_frame_with_request_id_0_does_not_kill_the_broker(sec_tree) -> None:
    start_sleeper(sec_tree)
    broker = sec_tree.pid
    event = next(msg for msg in sample_messages() if isinstance(msg, m.InstanceExited))
    for with_hello in (False, True):
        sock = raw_client(sec_tree)
        if with_hello:
            sock.send(encode(m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), 1))
        sock.send(encode(event, 0))
        closed_by_peer(sock, 5.0)
        sock.close()
        assert sec_tree.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):  # it dies within a second
            code = sec_tree.proc.wait(1.0)
            raise AssertionError(f"lithos_tree died (exit code {code})")
        assert isinstance(sec_tree.status(), m.StatusTree)
        assert sec_tree.pid == broker


def _now() -> float:
    import time

    return time.monotonic()




def test_connection_flood_does_not_kill_the_broker(sec_tree) -> None:
    _, knot, _ = start_sleeper(sec_tree)
    broker = sec_tree.pid
    # A broker with room for 40 more fds stands for any limit a flood can reach.
    limit = len(fd_targets(broker)) + 40
    resource.prlimit(broker, resource.RLIMIT_NOFILE, (limit, limit))
    flood: list[socket.socket] = []
    try:
        for _ in range(80):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
            flood.append(sock)
            try:  # a full backlog (a broker that stopped accepting) says EAGAIN
                sock.connect(str(sec_tree.runtime / "control.sock"))
            except BlockingIOError:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = sec_tree.proc.wait(2.0)  # the broker accepts what it can
            raise AssertionError(f"lithos_tree died (exit code {code})")
    finally:
        for sock in flood:
            sock.close()
    assert isinstance(sec_tree.status(), m.StatusTree)
    mark = sec_tree.mark()  # and the supervisor still restarts a dead service
    os.kill(sec_tree.service_pid(knot), signal.SIGKILL)
    sec_tree.wait_for(r"sec/sleep\.0: STARTING -> RUNNING", 20.0, mark)
