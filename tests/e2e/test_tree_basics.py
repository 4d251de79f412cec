"""lithos_tree end to end: three instances share one port; a dead service is
restarted; SIGTERM stops everything and leaves nothing behind (E-15, E-30, T-38)."""

from __future__ import annotations

import os
import signal
import socket

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# The service only needs to hold the socket: the kernel accepts connections
# into the shared backlog whether or not the service calls accept().
WEB = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
tcp-ports:
  "@{port}":
    fd: 3
variables:
  port: !TcpPort
restart-timeout: 0
"""
APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_three_instances_share_one_listening_socket(lithos) -> None:
    port = free_port()
    lithos.image("web.v1", {"web.yaml": WEB})
    lithos.sandbox(
        "web",
        f"allow-tcp-ports: [{port}]\n",
        f"web: {{image: web.v1, config: /config/web.yaml, instances: 3, "
        f"variables: {{port: {port}}}}}\n",
    )
    lithos.start()
    for i in range(3):
        lithos.wait_stdio("web", rf"^up web/web\.{i}$")  # the service runs
    running = lithos.running()
    assert sorted(running) == ["web/web.0", "web/web.1", "web/web.2"]
    # Each knot holds fd 3, and all three are the very same socket (one inode).
    inodes = set()
    for pid in running.values():
        inodes.add(os.stat(f"/proc/{lithos.service_pid(pid)}/fd/3").st_ino)
    assert len(inodes) == 1
    # The port listens on the host: a client connects (the kernel accepts into
    # the shared backlog even though sleep never calls accept).
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_killed_service_is_restarted_and_sigterm_cleans_up(lithos) -> None:
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", "", "app: {image: app.v1, config: /config/app.yaml}\n")
    lithos.start()
    lithos.wait_stdio("app", r"^up app/app\.0$")
    ((name, knot),) = lithos.running().items()
    service = lithos.service_pid(knot)
    mark = lithos.mark()
    os.kill(service, signal.SIGKILL)
    lithos.wait_for(r"app/app\.0: RUNNING -> BACKOFF", start=mark)
    lithos.wait_for(r"app/app\.0: STARTING -> RUNNING", start=mark)
    assert lithos.running()[name] != knot
    state = lithos.runtime / "state" / "app" / "app.0"
    assert state.is_dir()  # E-30: exists while it runs
    assert lithos.stop() == 0
    assert not state.exists()
    assert list((lithos.runtime / "children").iterdir()) == []
    assert "killed by signal SIGKILL" in lithos.stdio_log("app")


def test_metrics_and_config_log(lithos) -> None:
    """X-M1..X-M4 and T-27: the supervisor publishes the manual's metrics in
    runtime-dir (counters carried over a supervisor restart); each start logs
    the process config; a clean exit removes the metric files (X-M7)."""
    import json
    import struct

    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", "", "app: {image: app.v1, config: /config/app.yaml}\n")
    lithos.start()
    lithos.wait_stdio("app", r"up app/app\.0")

    def metrics() -> dict[str, int]:
        meta = (lithos.runtime / "metrics.meta").read_text().splitlines()
        values = (lithos.runtime / "metrics.values").read_bytes()
        out = {}
        for i, line in enumerate(meta):
            head, _, body = line.partition(": ")
            d = json.loads(body)
            fmt = "<Q" if head.startswith("counter") else "<q"
            out[f"{d['group']}.{d['metric']}"] = struct.unpack_from(fmt, values, i * 8)[0]
        return out

    first = metrics()
    assert first["master.containers"] == 1 and first["master.sandboxes"] == 1
    assert first["processes.app.app.started"] == 1
    assert first["containers.running"] == 1 and first["master.restarts"] == 1
    assert "lithos_containers_running 1" in (lithos.runtime / "metrics.prom").read_text()
    assert (lithos.runtime / "metrics.values").stat().st_size % 4096 == 0

    # A reload is a fresh supervisor: counters carry over, restarts counts it.
    mark = lithos.mark()
    lithos.proc.send_signal(signal.SIGQUIT)
    lithos.wait_for(r"supervisor ready:", start=mark)
    again = metrics()
    assert again["master.restarts"] == 2
    assert again["processes.app.app.started"] == 1  # adopted, not restarted

    log = (lithos.root / "log" / "config" / "app.log").read_text().splitlines()
    assert len(log) == 2  # one line per start of lithos_tree (T-27, E-4)
    stamp, _, body = log[0].partition(" ")
    assert stamp.endswith("Z") and json.loads(body)["app"]["image"] == "app.v1"

    assert lithos.stop() == 0
    assert not (lithos.runtime / "metrics.values").exists()
