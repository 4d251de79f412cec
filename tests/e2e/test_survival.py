"""What survives what (issue 5): a killed supervisor, a re-exec (SIGQUIT, E-17,
T-1) and a SIGKILL of lithos_tree itself. Containers keep their pids; exits
that happen while nobody supervises are replayed exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# The service says it is up (then becomes sleep, same pid): a line to wait for.
SLEEP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
"""
WEB = SLEEP + """
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


def wait_running(lithos, count: int, timeout_s: float = 60.0) -> dict[str, int]:
    """Waits (on log lines, then status) until `count` instances run."""
    deadline = time.monotonic() + timeout_s
    mark = 0
    while True:
        running = lithos.running()
        if len(running) >= count:
            return running
        assert time.monotonic() < deadline, f"only {len(running)} of {count} running"
        # The next broker log line is the next chance that something changed.
        lithos.wait_for(r"Forked|Container", timeout_s=deadline - time.monotonic(),
                        start=max(mark, lithos.mark()))  # fmt: skip
        mark = lithos.mark()


def services(lithos, sandbox: str, running: dict[str, int]) -> dict[str, int]:
    """Instance -> service pid, once each knot logged its start line."""
    for name in running:
        lithos.wait_stdio(sandbox, rf"^up {name}$")
    return {name: lithos.service_pid(pid) for name, pid in running.items()}


def test_supervisor_kill_keeps_50_children_and_replays_exits(lithos) -> None:
    lithos.image("many.v1", {"s.yaml": SLEEP})
    lithos.sandbox("many", "", "s: {image: many.v1, config: /config/s.yaml, instances: 50}\n")
    lithos.start()
    before = wait_running(lithos, 50, 90)
    assert len(before) == 50
    lithos.wait_for(r"supervisor ready: 50 instances wanted, 50 running|"
                    r"STARTING -> RUNNING", timeout_s=30)  # fmt: skip
    sup = lithos.supervisor_pid()
    victims = ["many/s.3", "many/s.17"]
    mark = lithos.mark()
    # Kill the supervisor, then two knots while no supervisor listens: the
    # broker queues those exits and hands them to the next one.
    os.kill(sup, signal.SIGKILL)
    for name in victims:
        os.kill(before[name], signal.SIGKILL)
    lithos.wait_for(r"supervisor (exited|killed)", start=mark)
    new_sup = lithos.supervisor_pid(start=mark)
    assert new_sup != sup
    lithos.wait_for(r"supervisor ready:", start=mark, timeout_s=30)
    for name in victims:
        lithos.wait_for(rf"Forked {name} ", start=mark)
    after = wait_running(lithos, 50)
    for name, pid in before.items():
        if name in victims:
            assert after[name] != pid
        else:
            assert after[name] == pid, name
    # Exactly one restart each: one more start line, and no second one.
    lithos.wait_for(r"many/s\.17: STARTING -> RUNNING", start=mark)
    for name in victims:
        assert lithos.count(rf"Forked {name} ", mark) == 1, name
    assert lithos.count(r"Forked ", mark) == len(victims)


def test_sigquit_reexec_keeps_pid_children_and_socket(lithos) -> None:
    port = free_port()
    lithos.image("web.v1", {"web.yaml": WEB})
    lithos.sandbox("web", f"allow-tcp-ports: [{port}]\n",
                   f"web: {{image: web.v1, config: /config/web.yaml, instances: 2, "
                   f"variables: {{port: {port}}}}}\n")  # fmt: skip
    lithos.start()
    before = wait_running(lithos, 2)
    svc = services(lithos, "web", before)
    inode = os.stat(f"/proc/{svc['web/web.0']}/fd/3").st_ino
    sup = lithos.supervisor_pid()
    mark = lithos.mark()
    os.kill(lithos.pid, signal.SIGQUIT)
    lithos.wait_for(r"lithos_tree started \(pid \d+, re-exec\)", start=mark)
    lithos.wait_for(r"supervisor ready:", start=mark)
    assert lithos.proc.poll() is None
    assert lithos.running() == before
    new_sup = lithos.supervisor_pid(start=mark)
    assert new_sup != sup
    lithos.wait_for(rf"previous supervisor \(pid {sup}\) exited", start=mark)
    assert lithos.count(r"supervisor .*restarting in", mark) == 0
    # E-17: the broker still holds the very same listening socket.
    held = set()
    for fd in os.listdir(f"/proc/{lithos.pid}/fd"):
        target = os.readlink(f"/proc/{lithos.pid}/fd/{fd}")
        if target.startswith("socket:"):
            held.add(int(target[8:-1]))
    assert inode in held
    assert lithos.count(r"Forked ", mark) == 0
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # The children are still ours: an exit is reaped and restarted once.
    mark = lithos.mark()
    os.kill(svc["web/web.1"], signal.SIGKILL)
    lithos.wait_for(r"web/web\.1: STARTING -> RUNNING", start=mark)
    assert lithos.count(r"Forked web/web\.1 ", mark) == 1
    assert lithos.stop() == 0


def test_sigkill_of_tree_next_one_adopts(lithos) -> None:
    lithos.image("app.v1", {"a.yaml": SLEEP})
    lithos.sandbox("app", "", "a: {image: app.v1, config: /config/a.yaml, instances: 3}\n")
    lithos.start()
    before = wait_running(lithos, 3)
    sup = lithos.supervisor_pid()
    lithos.proc.kill()
    lithos.proc.wait()
    # The supervisor dies with its broker (pdeathsig); the containers stay.
    _wait_gone(sup)
    for pid in before.values():
        os.kill(pid, 0)
    lithos.start()
    mark = 0
    lithos.wait_for(r"supervisor ready: 3 instances wanted, 3 running")
    assert lithos.running() == before
    assert lithos.count(r"Forked ", mark) == 0
    for name in before:
        lithos.wait_for(rf"{name}: recovered \(pid {before[name]}\)")
    # Adopted knots are watched by pidfd: an exit is noticed and restarted once.
    mark = lithos.mark()
    os.kill(before["app/a.1"], signal.SIGKILL)
    lithos.wait_for(r"pid \d+ exited while not our child", start=mark)
    lithos.wait_for(r"app/a\.1: STARTING -> RUNNING", start=mark)
    assert lithos.count(r"Forked app/a\.1 ", mark) == 1
    assert lithos.count(r"Forked ", mark) == 1
    assert lithos.stop() == 0
    # Orphans exit too at SIGTERM; nothing is left.
    assert list((lithos.runtime / "children").iterdir()) == []
    assert not (lithos.runtime / "state" / "app").exists()


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout_s)[0], f"pid {pid} still alive"
    finally:
        os.close(fd)


def test_exit_during_reexec_keeps_its_status_and_restarts_once(lithos) -> None:
    lithos.image("gap.v1", {"g.yaml": SLEEP})
    lithos.sandbox("gap", "", "g: {image: gap.v1, config: /config/g.yaml, instances: 3}\n")
    lithos.start()
    before = wait_running(lithos, 3)
    mark = lithos.mark()
    # The knot dies while lithos_tree is exec'ing its new image: it is a zombie
    # when the new image recovers its children, and is reaped with its status.
    os.kill(lithos.pid, signal.SIGQUIT)
    os.kill(before["gap/g.1"], signal.SIGKILL)
    lithos.wait_for(r"lithos_tree started \(pid \d+, re-exec\)", start=mark)
    lithos.wait_for(rf"Container gap/g\.1 \(pid: {before['gap/g.1']}\) killed by signal SIGKILL",
                    start=mark)  # fmt: skip
    # Usually the new image restarts it (STARTING); when the old one saw the death and
    # restarted it first (a start takes about a millisecond now), the new one adopts
    # that new knot (STOPPED -> RUNNING). Either way: restarted once, status kept.
    lithos.wait_for(r"gap/g\.1: (STARTING|STOPPED) -> RUNNING", start=mark)
    after = wait_running(lithos, 3)
    assert after["gap/g.0"] == before["gap/g.0"] and after["gap/g.2"] == before["gap/g.2"]
    assert after["gap/g.1"] != before["gap/g.1"]
    assert lithos.count(r"Forked gap/g\.1 ", mark) == 1
    assert lithos.count(r"Forked ", mark) == 1
    assert lithos.stop() == 0


def test_knot_dead_while_tree_down_is_cleaned_up(lithos) -> None:
    lithos.image("dn.v1", {"d.yaml": SLEEP})
    lithos.sandbox("dn", "", "d: {image: dn.v1, config: /config/d.yaml, instances: 2}\n")
    lithos.start()
    before = wait_running(lithos, 2)
    lithos.proc.kill()
    lithos.proc.wait()
    os.kill(before["dn/d.0"], signal.SIGKILL)
    _wait_gone(before["dn/d.0"])
    state = lithos.runtime / "state" / "dn" / "d.0"
    assert state.is_dir()  # left behind by the killed broker
    (state / "stale").write_text("from the previous run")
    lithos.start()
    lithos.wait_for(r"dn/d\.0: pid \d+ exited while lithos_tree was down; cleaning up")
    lithos.wait_for(r"dn/d\.0: STARTING -> RUNNING")
    after = lithos.running()
    assert after["dn/d.1"] == before["dn/d.1"]
    assert not (state / "stale").exists()  # a fresh state dir (E-30)
    assert lithos.count(r"Forked ") == 1
    assert lithos.stop() == 0


def test_sigkill_of_tree_then_restart_of_a_port_sharing_instance(lithos) -> None:
    port = free_port()
    lithos.image("wp.v1", {"web.yaml": WEB})
    lithos.sandbox("wp", f"allow-tcp-ports: [{port}]\n",
                   f"web: {{image: wp.v1, config: /config/web.yaml, instances: 2, "
                   f"variables: {{port: {port}}}}}\n")  # fmt: skip
    lithos.start()
    before = wait_running(lithos, 2)
    svc = services(lithos, "wp", before)
    lithos.proc.kill()
    lithos.proc.wait()
    lithos.start()
    lithos.wait_for(r"supervisor ready: 2 instances wanted, 2 running")
    # The killed broker's socket lives on in its containers: taken back once.
    lithos.wait_for(rf"Socket 0\.0\.0\.0:{port} taken back from wp/web\.[01]")
    assert lithos.count(r"taken back") == 1
    mark = lithos.mark()
    os.kill(svc["wp/web.1"], signal.SIGKILL)
    lithos.wait_for(r"wp/web\.1: STARTING -> RUNNING", start=mark)
    lithos.wait_stdio("wp", r"(?s)up wp/web\.1$.*^up wp/web\.1$")
    after = lithos.running()
    new = lithos.service_pid(after["wp/web.1"])
    old = svc["wp/web.0"]
    # Both hold one listening socket again (the one the survivor kept).
    assert os.stat(f"/proc/{new}/fd/3").st_ino == os.stat(f"/proc/{old}/fd/3").st_ino
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_leftovers_of_a_killed_tree_are_swept_at_its_next_start(lithos) -> None:
    """T-12a, T-12b, E-30, CMD-2: state dirs and cgroups that no live knot or running
    lithos_cmd owns are removed when lithos_tree starts; the live instance's stay."""
    lithos.image("sw.v1", {"d.yaml": SLEEP})
    lithos.sandbox("sw", "", "d: {image: sw.v1, config: /config/d.yaml, instances: 1}\n")
    lithos.start()
    running = wait_running(lithos, 1)
    services(lithos, "sw", running)  # the knot is past its set-up, in its group
    knot = running["sw/d.0"]
    lithos.proc.kill()
    lithos.proc.wait()
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()  # a pid that ran and is gone: a SIGKILLed lithos_cmd's
    # The tree's groups, in every hierarchy the live knot is in.
    tops = [Path("/sys/fs/cgroup", line.split(":", 2)[1].removeprefix("name="),
                 line.split(":", 2)[2].strip().lstrip("/")).parent
            for line in Path(f"/proc/{knot}/cgroup").read_text().splitlines()
            if line.split(":", 2)[2].strip().endswith("/sw:d.0.scope")]  # fmt: skip
    tops = [t for t in tops if t.is_dir()]
    assert tops, Path(f"/proc/{knot}/cgroup").read_text()
    gone_groups = ["gone:d.0.scope", "sw:d.7.scope", f"sw:cmd.x.{dead.pid}.scope"]
    for top in tops:
        for name in [*gone_groups, "stray"]:
            (top / name).mkdir()
    state = lithos.runtime / "state"
    gone_dirs = [state / "gone" / "d.0", state / "sw" / "d.7", state / "sw" / f"cmd.x.{dead.pid}"]
    for path in gone_dirs:
        path.mkdir(parents=True)
        (path / "stale").write_text("from the previous run")
    (state / "sw" / "d.0" / "mine").write_text("the live instance's")

    lithos.start()
    lithos.wait_for(rf'Dangling state dir "{state}/sw/d\.7"\. Deleting\.\.\.')
    lithos.wait_for(rf'Empty sandbox dir "{state}/gone"\. Deleting\.\.\.')
    lithos.wait_for(r'Dangling cgroup ".*/sw:d\.7\.scope"\. Deleting\.\.\.')
    assert lithos.running()["sw/d.0"] == knot
    assert not any(p.exists() for p in gone_dirs) and not (state / "gone").exists()
    assert (state / "sw" / "d.0" / "mine").exists()
    for top in tops:
        assert sorted(p.name for p in top.iterdir() if p.is_dir()) == \
            sorted(["stray", "sw:d.0.scope"] + (["lithos_tree.scope"]
                   if (top / "lithos_tree.scope").is_dir() else [])), top  # fmt: skip
    assert lithos.count(r"Forked ") == 0
    assert lithos.stop() == 0
