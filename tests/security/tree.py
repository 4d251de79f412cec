"""Helpers of the security tests: a small live tree, /proc readers, raw control clients.

Owns nothing of lithos; it reads /proc and speaks to the control socket the way
a hostile local user could (raw datagrams, wrong fds, another uid). Rules: only
processes of the test's own tree are read; every socket is closed by its user.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import socket
from pathlib import Path

from protocol import messages as m
from protocol.channel import Channel
from protocol.records import Role
from tests.e2e.conftest import Lithos

SLEEPER = """
executable: /bin/sh
arguments: ["-c", "echo sleeper-up; exec /bin/sleep 100000"]
user-id: {uid}
group-id: {uid}
tcp-ports:
  "@{{port}}":
    fd: 3
variables:
  port: !TcpPort
restart-timeout: 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sleeper(lithos: Lithos, uid: int = 1000) -> tuple[str, int, int]:
    """A tree with one `sleep` on a port; returns (instance, knot pid, port)."""
    port = free_port()
    lithos.image("sec.v1", {"sleep.yaml": SLEEPER.format(uid=uid)})
    lithos.sandbox(
        "sec",
        f"allow-tcp-ports: [{port}]\n",
        f"sleep: {{image: sec.v1, config: /config/sleep.yaml, variables: {{port: {port}}}}}\n",
    )
    lithos.start()
    lithos.wait_stdio("sec", r"^sleeper-up$")  # the service runs (it forked and exec'd)
    return "sec/sleep.0", lithos.running()["sec/sleep.0"], port


def supervisor_pid(lithos: Lithos) -> int:
    """The live supervisor's pid, from the broker's last `supervisor started` line."""
    assert lithos.log is not None
    for line in reversed(lithos.log.lines):
        match = re.search(r"supervisor started \(pid (\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError("no `supervisor started` line in the log")


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def vm_rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return out


def raw_client(lithos: Lithos) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(lithos.runtime / "control.sock"))
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float = 10.0) -> bool:
    """True when the broker closed (or reset) this connection, after any replies."""
    sock.settimeout(timeout_s)
    try:
        while True:
            if sock.recv(1 << 21) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def send_with_fd(sock: socket.socket, data: bytes, fd: int) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def get_status(ch: Channel, request_id: int = 9) -> m.Message:
    ch.send(m.GetStatus(), request_id)
    return ch.recv().message


def hello(ch: Channel, role: Role = Role.CONTROL) -> m.Message:
    ch.send(m.Hello(m.PROTOCOL_VERSION, role), 1)
    return ch.recv().message


def read_memory(pid: int) -> bytes:
    """Every readable mapping of pid's address space (root reads /proc/<pid>/mem)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] == "[vvar]"):
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue
    return b"".join(chunks)
