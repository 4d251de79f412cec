"""lithos_tree's start-up checks and what a re-exec must not disturb, end to end.

The fatal paths (T-3 devfs-dir, M-1 directories, T-5 pid file) run the daemon
alone on a tree with no sandbox, so a bug that let it start would leave nothing
behind but itself (subprocess.run's timeout kills it); each asserts the exit
status, the one stderr line naming key, value and file, and what was or was not
created. The running cases (S-1, E-3, E-45, tcp-ports fd 1/2) use the `lithos`
fixture and wait for log lines (never sleep): a restart decided at a re-exec is
executed before the supervisor reports ready, so "ready, same pids" is the proof.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; grep -h s1-extra /etc/hosts; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
"""


def port_app(fd: int) -> str:
    return APP + f"""
tcp-ports:
  "@{{port}}":
    fd: {fd}
variables:
  port: !TcpPort
"""


PORTS = "allow-tcp-ports: [1024-65535]\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_master_key(lithos, key: str, value: str) -> None:
    """Replaces (or adds) one top-level key of the fixture's master.yaml."""
    text = lithos.master.read_text()
    line = f"{key}: {value}"
    text, n = re.subn(rf"^{re.escape(key)}:.*$", line, text, flags=re.M)
    lithos.master.write_text(text if n else text + line + "\n")


def run_tree(lithos, *args: str) -> subprocess.CompletedProcess[str]:
    """lithos_tree in the foreground, for the cases where it must exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "broker.main", "-C", str(lithos.master), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


def processes_mentioning(root: Path) -> list[int]:
    """Pids whose command line names a path under `root` (this test's tree)."""
    needle = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def assert_fatal(done: subprocess.CompletedProcess[str], lithos, *parts: str) -> str:
    """Exit 1, exactly one stderr line `Fatal error: ...` holding `parts`, nothing left."""
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Fatal error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert processes_mentioning(lithos.root) == []
    return lines[0]


@pytest.fixture
def other_process() -> Iterator[int]:
    """A live process that is not lithos_tree (its pid goes into master.pid)."""
    proc = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# -- T-3, M-1, T-5: the fatal paths -----------------------------------------------


def test_t3_missing_devfs_dir_is_one_fatal_line_and_nothing_is_created(lithos) -> None:
    devfs = lithos.root / "no-such-dev"
    set_master_key(lithos, "devfs-dir", str(devfs))
    done = run_tree(lithos)
    assert_fatal(done, lithos, "devfs-dir", str(devfs), str(lithos.master))
    assert not lithos.runtime.exists()  # checked before any directory is made (T-3, T-4)


def test_m1_missing_parent_names_the_key_the_path_and_the_errno(lithos) -> None:
    runtime = lithos.root / "missing" / "run"  # mkdir is not recursive (M-1)
    set_master_key(lithos, "runtime-dir", str(runtime))
    done = run_tree(lithos)
    assert_fatal(done, lithos, "Cant create runtime-dir: ", str(runtime), "ENOENT")
    assert not (lithos.root / "missing").exists()
    assert not (lithos.root / "log").exists()  # nothing after the failing one


@pytest.mark.parametrize(
    ("relpath", "what", "made", "not_made"),
    [
        ("run/state", "state-dir", ["run"], ["run/mnt", "log"]),
        ("log/stderr", "stdio log dir", ["run", "run/state", "run/mnt", "log", "log/config"],
         []),
    ],
)  # fmt: skip
def test_m1_a_file_where_a_directory_goes_is_fatal_in_order(
    lithos, relpath: str, what: str, made: list[str], not_made: list[str]
) -> None:
    blocker = lithos.root / relpath
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory\n")
    done = run_tree(lithos)
    line = assert_fatal(done, lithos, f"Cant create {what}: ")
    assert line == (
        f"Fatal error: Cant create {what}: Can't create dir {str(blocker)!r}, "
        "path already exists but not a directory"
    )
    assert blocker.read_text() == "not a directory\n"  # left alone
    for rel in made:
        assert (lithos.root / rel).is_dir(), rel
    for rel in not_made:
        assert not (lithos.root / rel).exists(), rel


def test_m1_lithos_cmd_makes_the_same_directories_with_the_same_error(lithos) -> None:
    blocker = lithos.root / "run" / "state"
    blocker.parent.mkdir()
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "broker.cmd", "-C", str(lithos.master), "sb", "cmd"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert_fatal(done, lithos, f"Cant create state-dir: Can't create dir {str(blocker)!r}")
    assert not (lithos.root / "run" / "mnt").exists()


def test_t5_a_pid_file_that_is_a_directory_is_one_fatal_line(lithos) -> None:
    pid_file = lithos.runtime / "master.pid"
    pid_file.mkdir(parents=True)
    done = run_tree(lithos)
    line = assert_fatal(done, lithos)
    assert line == f"Fatal error: {pid_file}: can't write the pid file: Is a directory"
    assert sorted(p.name for p in lithos.runtime.iterdir()) == ["master.pid", "mnt", "state"]


def test_t5_a_live_pid_in_master_pid_refuses_start(lithos, other_process: int) -> None:
    lithos.runtime.mkdir()
    pid_file = lithos.runtime / "master.pid"
    pid_file.write_text(f"{other_process}\n")
    done = run_tree(lithos)
    line = assert_fatal(done, lithos, str(pid_file), f"master pid is {other_process}")
    assert "live process" in line
    assert pid_file.read_text() == f"{other_process}\n"  # not overwritten
    os.kill(other_process, 0)  # and that process was not touched
    assert not (lithos.runtime / "control.sock").exists()
    log = (lithos.root / "log" / "master.log").read_text()
    assert line in log  # the log file has it too
    # With --log-stderr the log's stderr copy is the one line (it was printed twice).
    again = run_tree(lithos, "--log-stderr")
    assert again.returncode == 1
    assert [entry.endswith(f"[ERROR] {line}") for entry in again.stderr.splitlines()] == [True]


def dead_pid() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{proc.pid}\n"


@pytest.mark.parametrize(
    ("content", "warns"),
    [(dead_pid, False), (lambda: "garbage\n", True), (lambda: "", True), (lambda: "-1\n", True)],
    ids=["dead-pid", "garbage", "empty", "minus-one"],
)
def test_t5_a_dead_pid_or_garbage_is_replaced_and_the_tree_starts(
    lithos, content, warns: bool
) -> None:
    lithos.runtime.mkdir()
    pid_file = lithos.runtime / "master.pid"
    pid_file.write_text(content())
    lithos.start()
    assert pid_file.read_text() == f"{lithos.pid}\n"
    # The original warns `Pid file exists, but cannot be read` (T-5).
    warned = lithos.count(rf"{re.escape(str(pid_file))}: .*does not hold a pid")
    assert warned == (1 if warns else 0)
    assert lithos.stop() == 0
    assert pid_file.read_text() == f"{lithos.pid}\n"  # never removed (T-5)


# -- S-1, E-45: what a re-exec keeps ---------------------------------------------


def start_app(lithos, sandbox: str, sandbox_text: str = "", instances: int = 2,
              ) -> dict[str, int]:  # fmt: skip
    """Starts `instances` of APP in `sandbox`; returns instance -> service pid."""
    lithos.image(f"{sandbox}.v1", {"app.yaml": APP})
    lithos.sandbox(sandbox, sandbox_text,
                   f"app: {{image: {sandbox}.v1, config: /config/app.yaml, "
                   f"instances: {instances}}}\n")  # fmt: skip
    lithos.start()
    return services_up(lithos, sandbox, [f"{sandbox}/app.{i}" for i in range(instances)])


def services_up(lithos, sandbox: str, names: list[str]) -> dict[str, int]:
    """Waits for each instance's `up` line; returns instance -> service pid."""
    for name in names:
        lithos.wait_stdio(sandbox, rf"^up {re.escape(name)}$")
    knots = lithos.running()
    assert sorted(knots) == names
    return {name: lithos.service_pid(pid) for name, pid in knots.items()}


def sigquit(lithos) -> int:
    """Re-execs lithos_tree; returns the log mark once the new supervisor is ready."""
    mark = lithos.mark()
    os.kill(lithos.pid, signal.SIGQUIT)
    lithos.wait_for(rf"lithos_tree started \(pid {lithos.pid}, re-exec\)", start=mark)
    lithos.wait_for(r"supervisor ready: \d+ instances wanted", start=mark)
    return mark


def assert_same_services(lithos, services: dict[str, int], mark: int) -> None:
    knots = lithos.running()
    assert {name: lithos.service_pid(pid) for name, pid in knots.items()} == services
    assert lithos.count(r"Forked |: RUNNING -> ", mark) == 0  # no stop, no upgrade


def test_s1_a_sandbox_edit_and_sigquit_restart_nothing(lithos) -> None:
    services = start_app(lithos, "s1")
    # Every kind of sandbox change: hosts, a log level, a new allowed range.
    lithos.sandbox("s1", "additional-hosts: {s1-extra.example: 10.9.8.7}\n"
                         "log-level: info\nallow-tcp-ports: [1000-2000]\n")  # fmt: skip
    mark = sigquit(lithos)
    assert_same_services(lithos, services, mark)
    # The new settings apply when an instance next starts (S-1): kill one service.
    os.kill(services["s1/app.0"], signal.SIGKILL)
    lithos.wait_for(r"Forked s1/app\.0 ", start=mark)
    lithos.wait_stdio("s1", r"^10\.9\.8\.7\s+s1-extra\.example$")
    knot = lithos.running()["s1/app.1"]
    assert lithos.service_pid(knot) == services["s1/app.1"]


def test_e45_cli_log_level_survives_sigquit_with_the_knots(lithos) -> None:
    # The fixture passes --log-stderr --log-level debug; the master says warn.
    set_master_key(lithos, "log-level", "warn")
    services = start_app(lithos, "e45")
    mark = sigquit(lithos)
    assert_same_services(lithos, services, mark)
    # A debug line of the re-exec'ed broker (its message trace); the supervisor's
    # info line `supervisor ready:` that sigquit() waited for shows its level too.
    lithos.wait_for(r"SupervisorReady from supervisor", start=mark)
    for _ in range(2):  # and again: the re-exec's command line kept the flag
        mark = sigquit(lithos)
        assert_same_services(lithos, services, mark)
        lithos.wait_for(r"SupervisorReady from supervisor", start=mark)
    assert b"--log-level\0debug\0" in Path(f"/proc/{lithos.pid}/cmdline").read_bytes()


# -- E-3: no cgroups at all ------------------------------------------------------


def cgroup_dirs_named(fragment: str) -> list[str]:
    found = []
    for top, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if fragment in d]
    return found


def test_e3_cgroup_name_null_runs_and_stops_without_cgroups(lithos) -> None:
    set_master_key(lithos, "cgroup-name", "null")
    sandbox = f"e3x{lithos.tag}"
    with open("/proc/self/cgroup") as f:
        ours = f.read()
    services = start_app(lithos, sandbox)
    for pid in [lithos.pid, *lithos.running().values(), *services.values()]:
        with open(f"/proc/{pid}/cgroup") as f:
            assert f.read() == ours, pid  # nobody was moved anywhere
    assert cgroup_dirs_named(sandbox) == []
    assert cgroup_dirs_named(lithos.cgroup_name) == []
    knots = list(lithos.running().values())
    assert lithos.stop() == 0
    for pid in knots + list(services.values()):
        assert not Path(f"/proc/{pid}").exists(), pid
    assert cgroup_dirs_named(sandbox) == []


# -- tcp-ports fd 1/2 ------------------------------------------------------------


def test_tcp_port_on_fd_1_or_2_is_a_config_error_and_others_run(lithos) -> None:
    good_port, bad_port = free_port(), free_port()
    lithos.image("fd.v1", {"good.yaml": port_app(3), "bad.yaml": port_app(1)})
    def procs(v: int) -> str:
        return (f"good: {{image: fd.v{v}, config: /config/good.yaml, "
                f"variables: {{port: {good_port}}}}}\n"
                f"bad: {{image: fd.v1, config: /config/bad.yaml, "
                f"variables: {{port: {bad_port}}}}}\n")

    lithos.sandbox("fd", PORTS, procs(1))
    lithos.start()
    problem = "is stdout/stderr (use 0 or a number >= 3)"
    bad_file = lithos.image_dir / "fd.v1" / "config" / "bad.yaml"
    lithos.wait_for(re.escape(f"fd/bad: config failed to load: {bad_file}: "
                              f"tcp-ports.@{{port}}.fd: 1 {problem}"))
    service = services_up(lithos, "fd", ["fd/good.0"])
    with socket.create_connection(("127.0.0.1", good_port), timeout=10):
        pass  # the good instance holds its port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", bad_port), timeout=10).close()
    assert 'Starting "fd/bad' not in lithos.stdio_log("fd")
    # Decision 4: an edit to fd 2 is a config that fails to load: the running
    # instance of the last good config keeps running.
    lithos.image("fd.v2", {"good.yaml": port_app(2)})
    lithos.write("processes/fd.yaml", procs(2))
    mark = sigquit(lithos)
    v2_file = lithos.image_dir / "fd.v2" / "config" / "good.yaml"
    lithos.wait_for(re.escape(f"fd/good: config failed to load: {v2_file}: "
                              f"tcp-ports.@{{port}}.fd: 2 {problem}"), start=mark)
    assert_same_services(lithos, service, mark)


@pytest.mark.parametrize("fd", [1, 2])
def test_lithos_check_reports_a_tcp_port_on_fd_1_or_2(lithos, fd: int) -> None:
    port = free_port()
    lithos.image("ck.v1", {"app.yaml": port_app(fd)})
    lithos.sandbox("ck", PORTS, f"app: {{image: ck.v1, config: /config/app.yaml, "
                             f"variables: {{port: {port}}}}}\n")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "protocol.config.check", "-C", str(lithos.master), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done
    problems = json.loads(done.stdout)
    keys = [(p["file"], p["key"], p["value"]) for p in problems]
    bad_file = str(lithos.image_dir / "ck.v1" / "config" / "app.yaml")
    assert (bad_file, "tcp-ports.@{port}.fd", str(fd)) in keys, problems
