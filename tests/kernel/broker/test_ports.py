"""The broker's socket table with real sockets on loopback (T-13..T-17, E-15..E-17).

No root needed: every socket is on 127.0.0.1 or ::1 at a port the test found free.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ports import Address, PortError, PortTable, SocketSettings

SHARED = SocketSettings()
REUSE_PORT = SocketSettings(reuse_port=True)
ROOT = str(Path(__file__).resolve().parents[3])


@pytest.fixture
def table(no_fd_leak: None) -> Iterator[PortTable]:
    t = PortTable()
    try:
        yield t
    finally:
        t.close()


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    try:
        client.connect((host, port))
    except BaseException:
        client.close()
        raise
    return client


def accept_within(fd: int, timeout_s: float = 5.0) -> bool:
    """Accept one pending connection on listening fd `fd` (borrowed), waiting at most."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return False
    with socket.socket(fileno=os.dup(fd)) as listener:
        conn, _ = listener.accept()
        conn.close()
    return True


def ino(fd: int) -> int:
    return os.fstat(fd).st_ino


def test_instances_share_one_socket_across_sandboxes(table: PortTable) -> None:  # E-15
    port = free_port()
    fd_a = table.acquire("web/app.0", "127.0.0.1", port, SHARED)
    fd_b = table.acquire("api/worker.1", "127.0.0.1", port, SocketSettings(listen_backlog=5))
    assert ino(fd_a) == ino(fd_b)
    [info] = table.sockets()
    assert info.instances == {"web/app.0", "api/worker.1"}
    assert info.settings == SHARED  # the first opener's options win (T-14)
    with connect("127.0.0.1", port):
        assert accept_within(fd_b)


def test_release_of_one_keeps_listening_release_of_all_closes(table: PortTable) -> None:
    port = free_port()
    table.acquire("web/app.0", "127.0.0.1", port, SHARED)
    fd = table.acquire("web/app.1", "127.0.0.1", port, SHARED)
    assert table.release("web/app.0") == []  # E-15: a restart never closes the port
    with connect("127.0.0.1", port):
        assert accept_within(fd)
    assert table.release("web/app.1") == [Address("127.0.0.1", port)]
    assert table.sockets() == []
    with pytest.raises(ConnectionRefusedError):  # E-16
        connect("127.0.0.1", port).close()
    fd = table.acquire("web/app.1", "127.0.0.1", port, SHARED)  # listens again at next start
    with connect("127.0.0.1", port):
        assert accept_within(fd)


def test_retain_keeps_only_live_instances(table: PortTable) -> None:  # T-12, T-34 step 4
    p1, p2 = free_port(), free_port()
    table.acquire("web/app.0", "127.0.0.1", p1, SHARED)
    table.acquire("web/app.1", "127.0.0.1", p2, SHARED)
    assert table.retain({"web/app.1", "other/x.0"}) == [Address("127.0.0.1", p1)]
    assert [i.address.port for i in table.sockets()] == [p2]


def test_reuse_port_gives_each_instance_its_own_socket(table: PortTable) -> None:  # T-15
    port = free_port()
    fd_a = table.acquire("web/app.0", "127.0.0.1", port, REUSE_PORT)
    fd_b = table.acquire("web/app.1", "127.0.0.1", port, REUSE_PORT)
    assert ino(fd_a) != ino(fd_b)
    assert table.acquire("web/app.0", "127.0.0.1", port, REUSE_PORT) == fd_a
    # The kernel spreads connections over both by a hash of the client's port.
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while seen != {fd_a, fd_b} and time.monotonic() < deadline:
        with connect("127.0.0.1", port):
            ready, _, _ = select.select([fd_a, fd_b], [], [], 5)
            for fd in ready:
                assert accept_within(fd, 0)
                seen.add(fd)
    assert seen == {fd_a, fd_b}
    assert table.release("web/app.0") == [Address("127.0.0.1", port)]
    with connect("127.0.0.1", port):
        assert accept_within(fd_b)


def test_ipv6_works(table: PortTable) -> None:
    try:
        port = free_port("::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    fd = table.acquire("web/app.0", "0:0::1", port, SHARED)
    assert table.sockets()[0].address == Address("::1", port)
    assert str(table.sockets()[0].address) == f"[::1]:{port}"
    with connect("::1", port):
        assert accept_within(fd)


def test_set_non_block_and_backlog(table: PortTable) -> None:
    fd = table.acquire("web/app.0", "127.0.0.1", free_port(), SocketSettings(set_non_block=True))
    assert not os.get_blocking(fd)
    assert not os.get_inheritable(fd)  # CLOEXEC until prepare_for_exec
    table.prepare_for_exec()
    assert os.get_inheritable(fd)
    table.exec_failed()  # execve failed: children must not inherit the socket either
    assert not os.get_inheritable(fd)


def test_errors_name_address_step_and_errno(table: PortTable) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortError, match=rf"^tcp-ports 127.0.0.1:{port}: bind: EADDRINUSE$"):
            table.acquire("web/app.0", "127.0.0.1", port, SHARED)
    with pytest.raises(PortError, match=r"^tcp-ports 80: host: 'localhost' is not an IP address"):
        table.acquire("web/app.0", "localhost", 80, SHARED)
    with pytest.raises(PortError, match=r"^tcp-ports 70000: port must be in 0..65535"):
        table.acquire("web/app.0", "127.0.0.1", 70000, SHARED)
    with pytest.raises(PortError, match=r"^tcp-ports 127.0.0.1:1: listen-backlog: -1 must be"):
        table.acquire("web/app.0", "127.0.0.1", 1, SocketSettings(listen_backlog=-1))
    assert table.sockets() == []


def test_reuse_port_beside_a_shared_socket_is_refused(table: PortTable) -> None:
    port = free_port()
    table.acquire("web/app.0", "127.0.0.1", port, SHARED)
    with pytest.raises(PortError, match=rf"^tcp-ports 127.0.0.1:{port}: bind: EADDRINUSE$"):
        table.acquire("web/app.1", "127.0.0.1", port, REUSE_PORT)
    assert [i.instances for i in table.sockets()] == [{"web/app.0"}]


# ---- re-exec (T-17, E-17) ------------------------------------------------------------

CHILD = """
import json, logging, os, socket, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from broker.ports import PortTable
table = PortTable.adopt(json.loads(sys.argv[2]))
out = []
for info in table.sockets():
    sock = socket.socket(fileno=os.dup(info.fd))
    conn, _ = sock.accept()            # the connection the parent queued before exec
    conn.close(); sock.close()
    out.append({"fd": info.fd, "ino": os.fstat(info.fd).st_ino, "port": info.address.port,
                "inheritable": os.get_inheritable(info.fd), "instances": sorted(info.instances)})
print(json.dumps(out))
"""


def exec_child(table: PortTable, exported: dict[str, object], tmp_path: Path) -> tuple[list, str]:
    """fork, prepare_for_exec, execv a python child that adopts; its report and its log."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    err_path = tmp_path / "child.err"
    read_end, write_end = os.pipe()
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    pid = os.fork()
    if pid == 0:  # child: only async-safe-ish steps, then exec or _exit
        try:
            os.dup2(write_end, 1)
            os.dup2(err_fd, 2)
            table.prepare_for_exec()
            os.execv(sys.executable, [sys.executable, str(script), ROOT, json.dumps(exported)])
        finally:
            os._exit(127)
    os.close(write_end)
    os.close(err_fd)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    err = err_path.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, err
    return json.loads(out), err


def test_sockets_survive_exec_with_the_same_inode(table: PortTable, tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    fd1 = table.acquire("web/app.0", "127.0.0.1", p1, SHARED)
    table.acquire("web/app.1", "127.0.0.1", p1, SHARED)
    fd2 = table.acquire("api/x.0", "127.0.0.1", p2, REUSE_PORT)
    exported = table.export()
    json.dumps(exported)  # carried in argv or a state file: must be JSON
    clients = [connect("127.0.0.1", p1), connect("127.0.0.1", p2)]
    try:
        report, log = exec_child(table, exported, tmp_path)
    finally:
        for c in clients:
            c.close()
    assert report == [
        {
            "fd": fd1,
            "ino": ino(fd1),
            "port": p1,
            "inheritable": False,
            "instances": ["web/app.0", "web/app.1"],
        },
        {"fd": fd2, "ino": ino(fd2), "port": p2, "inheritable": False, "instances": ["api/x.0"]},
    ]
    assert f"Recovered fd {fd1} as 127.0.0.1:{p1}" in log
    # prepare_for_exec ran in the forked child only; the parent's fds keep CLOEXEC.
    assert not os.get_inheritable(fd1)


def test_adopt_does_not_trust_an_fd_that_is_another_socket(
    table: PortTable, tmp_path: Path
) -> None:
    p1, p2 = free_port(), free_port()
    fd1 = table.acquire("web/app.0", "127.0.0.1", p1, SHARED)
    fd2 = table.acquire("web/app.1", "127.0.0.1", p2, SHARED)
    exported = table.export()
    # Swap the claims: each fd now says it is the other socket.
    first, second = exported["sockets"]
    first["fd"], second["fd"] = second["fd"], first["fd"]
    report, log = exec_child(table, exported, tmp_path)
    assert report == []
    assert f"fd {fd2} is 127.0.0.1:{p2} (listening: True), not the socket 127.0.0.1:{p1}" in log
    assert f"fd {fd1} is 127.0.0.1:{p1} (listening: True), not the socket 127.0.0.1:{p2}" in log


def test_adopt_skips_closed_and_non_socket_fds(
    no_fd_leak: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f"
    path.write_text("")
    with open(path) as f:
        closed_fd = os.dup(f.fileno())
        os.close(closed_fd)
        entry = {
            "host": "127.0.0.1",
            "port": 1,
            "bound-port": 1,
            "reuse-addr": True,
            "reuse-port": False,
            "set-non-block": False,
            "listen-backlog": 128,
            "instances": ["web/app.0"],
        }
        exported = {
            "version": 1,
            "sockets": [{**entry, "fd": f.fileno()}, {**entry, "fd": closed_fd}, {"fd": "x"}],
        }
        table = PortTable.adopt(exported)
        assert table.sockets() == []
        os.fstat(f.fileno())  # still open: an untrusted fd is not closed
    assert f"fd {closed_fd} claimed as socket 127.0.0.1:1: EBADF: not adopted" in caplog.text
    assert "is not a socket: not adopted" in caplog.text
    assert "is malformed" in caplog.text
    with pytest.raises(PortError, match="want a mapping with version 1"):
        PortTable.adopt({"version": 99})


def test_connect_refused_is_econnrefused() -> None:
    # Guards the E-16 assertion above: a closed port really refuses, it does not time out.
    port = free_port()
    with pytest.raises(OSError) as info:
        connect("127.0.0.1", port).close()
    assert info.value.errno == errno.ECONNREFUSED
