"""Issue 5: three instances really serve one port; a service holds only its
stdio and declared ports (no broker fds); cgroup limits are really applied
and the cgroup goes with its container (T-51)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
WEB_PY = (REPO / "examples" / "demo" / "image" / "code" / "web.py").read_text()
PY_WEB = """
user-id: 1000
group-id: 1000
variables:
  port: !TcpPort
tcp-ports:
  "@{port}":
    fd: 3
volumes:
  /tmp: !Tmpfs { size: 16Mi }
  /usr: !Readonly /usr
executable: /usr/bin/python3
arguments: [/code/web.py]
environ:
  PYTHONDONTWRITEBYTECODE: "1"
restart-timeout: 0
kill-timeout: 2
"""
SLEEP_PORT = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
memory-limit: 67108864
kill-timeout: 1
tcp-ports:
  "@{port}":
    fd: 3
variables:
  port: !TcpPort
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_image(root: Path) -> None:
    """The host's /usr (mounted read-only) with usr-merged links: /usr/bin/python3 runs."""
    for d in ("etc", "tmp", "proc", "sys", "dev", "usr", "code", "config", "state"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink(f"usr/{link}", root / link)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "resolv.conf").write_text("")
    (root / "code" / "web.py").write_text(WEB_PY)
    (root / "config" / "web.yaml").write_text(PY_WEB)


def get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode()


def test_three_instances_serve_one_port(lithos) -> None:
    port = free_port()
    python_image(lithos.image_dir / "py.v1")
    lithos.sandbox("py", f"allow-tcp-ports: [{port}]\nreadonly-paths: {{/usr: /usr}}\n",
                   f"web: {{image: py.v1, config: /config/web.yaml, instances: 3, "
                   f"variables: {{port: {port}}}}}\n")  # fmt: skip
    lithos.start()
    for i in range(3):  # each accepts once it serves (a loaded machine starts them slowly)
        lithos.wait_stdio("py", rf"^py/web\.{i}: serving on fd 3$")
    seen: set[str] = set()
    for _ in range(600):
        reply = get(port)
        assert reply.startswith("HTTP/1.0 200"), reply
        seen.add(reply.split("hello from ", 1)[1].split()[0])
        if len(seen) == 3:
            break
    assert seen == {"py/web.0", "py/web.1", "py/web.2"}


def test_service_fds_cgroup_limit_and_removal(lithos) -> None:
    port = free_port()
    lithos.image("s.v1", {"s.yaml": SLEEP_PORT})
    lithos.sandbox("cg", f"allow-tcp-ports: [{port}]\n",
                   f"s: {{image: s.v1, config: /config/s.yaml, variables: {{port: {port}}}}}\n")
    lithos.start()
    lithos.wait_stdio("cg", r"^up cg/s\.0$")  # the service runs (then execs sleep)
    knot = lithos.running()["cg/s.0"]
    service = lithos.service_pid(knot)
    # fd audit: stdio and the declared port, nothing of the broker's.
    fds = {int(fd): os.readlink(f"/proc/{service}/fd/{fd}")
           for fd in os.listdir(f"/proc/{service}/fd")}  # fmt: skip
    assert sorted(fds) == [0, 1, 2, 3], fds
    assert fds[0] == "/dev/null"
    assert stat.S_ISSOCK(os.stat(f"/proc/{service}/fd/3").st_mode)
    broker_sockets = set()
    for fd in os.listdir(f"/proc/{lithos.pid}/fd"):
        # The broker runs on: a control connection of lithos.running() above may
        # close between the listing and the readlink.
        with contextlib.suppress(FileNotFoundError):
            broker_sockets.add(os.readlink(f"/proc/{lithos.pid}/fd/{fd}"))
    assert fds[3] in broker_sockets  # the one listening socket the broker holds
    for fd in (1, 2):
        assert fds[fd].endswith("/log/stderr/cg.log"), fds
    # The knot itself holds nothing of the broker either (no control socket,
    # no other container's port, no supervisor channel).
    knot_fds = {os.readlink(f"/proc/{knot}/fd/{fd}") for fd in os.listdir(f"/proc/{knot}/fd")}
    control = os.stat(lithos.runtime / "control.sock").st_ino
    assert f"socket:[{control}]" not in knot_fds
    # cgroup limits really applied (v1 memory controller on this host).
    group = Path("/sys/fs/cgroup/memory") / lithos.cgroup_name / "cg:s.0.scope"
    if not group.parent.parent.is_dir():
        pytest.skip("no cgroup v1 memory hierarchy")
    assert int((group / "memory.limit_in_bytes").read_text()) == 67108864
    assert str(service) in (group / "cgroup.procs").read_text().split()
    mark = lithos.mark()
    os.kill(service, signal.SIGKILL)
    lithos.wait_for(r"Container cg/s\.0 \(pid: \d+\) exited", start=mark)
    lithos.wait_for(r"cg/s\.0: STARTING -> RUNNING", start=mark)
    assert lithos.stop() == 0
    assert not group.exists()
