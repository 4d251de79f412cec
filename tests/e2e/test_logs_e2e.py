"""Logs end to end (issue #12; T-40..T-42, K-4, K-12, K-41, T-27, T-28).

A real lithos_tree on a temporary tree: master.log and the sandbox log get their
lines at each level; the services' output and the start and death lines share the
stdio log; a moved stdio log is left behind at the next start; syslog mode sends
datagrams to a socket the test binds (LITHOS_SYSLOG_SOCKET); the config log gets a
line per start and rotates at 10 MiB.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; echo "err $LITHOS_NAME" >&2; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
"""
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def start_tree(lithos, args: tuple[str, ...] = ("--log-stderr", "--log-level", "debug"),
               env: dict[str, str] | None = None) -> None:
    """lithos.start() with other flags or environment; waits for the supervisor."""
    tail_class = sys.modules[type(lithos).__module__].LogTail
    r, w = os.pipe()
    lithos.proc = subprocess.Popen(
        [sys.executable, "-m", "broker.main", "-C", str(lithos.master), *args],
        cwd=REPO, stdout=w, stderr=w, stdin=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )  # fmt: skip
    os.close(w)
    lithos.log = tail_class(r)


def start_app(lithos, sandbox_text: str = "", master_extra: str = "",
              args: tuple[str, ...] | None = None, env: dict[str, str] | None = None) -> None:
    if master_extra:
        lithos.master.write_text(lithos.master.read_text() + master_extra)
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", sandbox_text, "app: {image: app.v1, config: /config/app.yaml}\n")
    if args is None and env is None:
        lithos.start()
    else:
        start_tree(lithos, *(() if args is None else (args,)), env=env)


def test_master_log_and_sandbox_log_get_their_lines(lithos, wait_file_text) -> None:
    """T-40, T-41: master.log has the tree's lines (DEBUG with module:line), the
    sandbox log the knot's: INFO `[name] Starting container`, WARN `Starting`,
    ERROR `Process ... killed by signal`."""
    lithos.sandbox("bad", "", "bad: [\n")  # the supervisor logs an ERROR for it
    start_app(lithos)
    log_dir = lithos.root / "log"
    lithos.wait_stdio("app", r"^up app/app\.0$")
    master_log = log_dir / "master.log"
    wait_file_text(master_log, rf"^\[{TS}\]\[WARN\] lithos_tree started")
    wait_file_text(master_log, rf"^\[{TS}\]\[INFO\] Forked app/app\.0 \(pid: \d+\)")
    wait_file_text(master_log, rf"^\[{TS}\]\[DEBUG\]broker\.server:\d+: StartInstance from ")
    # The supervisor's lines land in master.log too (relayed by the broker), at
    # their own levels.
    wait_file_text(master_log, rf"^\[{TS}\]\[INFO\] app/app\.0: STARTING -> RUNNING")
    wait_file_text(master_log, rf"^\[{TS}\]\[ERROR\] sandbox bad: config failed to load")
    sandbox_log = log_dir / "app.log"
    wait_file_text(sandbox_log, rf"^\[{TS}\]\[INFO\] \[app/app\.0\] Starting container$")
    wait_file_text(sandbox_log, rf'^\[{TS}\]\[WARN\] Starting "app/app\.0": "/bin/sh" "-c" ')
    ((_, knot),) = lithos.running().items()
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    wait_file_text(sandbox_log, rf'^\[{TS}\]\[ERROR\] Process "app/app\.0" killed by signal '
                                r"SIGKILL\[9\], uptime \d+s$")
    for text in (sandbox_log.read_text(), master_log.read_text()):
        assert all(re.match(rf"\[{TS}\]\[(ERROR|WARN|INFO|DEBUG|TRACE)\]", line)
                   for line in text.splitlines()), text


def test_cli_level_applies_to_tree_supervisor_and_knots(lithos, wait_file_text) -> None:
    """1.2, T-42: `--log-level error` on lithos_tree: only ERROR lines in master.log
    (broker and supervisor) and in the sandbox log (passed on to the knots)."""
    lithos.sandbox("bad", "", "bad: [\n")
    start_app(lithos, args=("--log-level", "error"))
    log_dir = lithos.root / "log"
    lithos.wait_stdio("app", r"^up app/app\.0$")
    wait_file_text(log_dir / "master.log", r"\[ERROR\] sandbox bad: config failed to load")
    knot = lithos.recorded_pids()[0]
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    wait_file_text(log_dir / "app.log", r'\[ERROR\] Process "app/app\.0" killed by signal')
    lithos.wait_stdio("app", r'(?s)killed by signal.*Starting "app/app\.0"')
    for name in ("master.log", "app.log"):
        lines = (log_dir / name).read_text().splitlines()
        assert lines and all("][ERROR] " in line for line in lines), (name, lines)


def test_sandbox_log_file_and_level_come_from_the_sandbox(lithos, wait_file_text) -> None:
    """1.2: the sandbox's `log-level: error` beats the master's debug (no CLI level
    reaches the knot here); `log-file` names the file."""
    start_app(lithos, "log-file: custom-app.log\nlog-level: error\n", args=("--log-stderr",))
    lithos.wait_stdio("app", r"^up app/app\.0$")
    ((_, knot),) = lithos.running().items()
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    path = lithos.root / "log" / "custom-app.log"
    wait_file_text(path, r'\[ERROR\] Process "app/app\.0" killed by signal SIGKILL')
    assert "[WARN]" not in path.read_text() and "[INFO]" not in path.read_text()
    assert not (lithos.root / "log" / "app.log").exists()


class SyslogSink:
    """A unix datagram socket standing in for /dev/log; collects what arrives."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.datagrams: list[str] = []

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern)
        for text in self.datagrams:
            if match := rx.search(text):
                return match
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                text = self.sock.recv(65536).decode("utf-8", "replace")
            except TimeoutError:
                break
            self.datagrams.append(text)
            if match := rx.search(text):
                return match
        raise AssertionError(f"no datagram matching {pattern!r} in {timeout_s}s:\n"
                             + "\n".join(self.datagrams[-40:]))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def syslog_sink(lithos):  # type: ignore[no-untyped-def]
    sink = SyslogSink(lithos.root / "syslog.sock")
    yield sink
    sink.close()


def test_syslog_mode_sends_every_line_to_the_syslog_socket(lithos, syslog_sink) -> None:
    """T-40, 1.1: with syslog-facility (local3 = 19) nothing goes to the files; the
    tree's and the supervisor's lines carry ident syslog-name (`myapp`, the manual's
    spelling), the knot's `myapp-<sandbox>`, each with its own pid and severity."""
    start_app(lithos, master_extra="syslog-facility: LOG_LOCAL3\nsyslog-name: myapp\n",
              args=("--log-level", "debug"),
              env={"LITHOS_SYSLOG_SOCKET": str(lithos.root / "syslog.sock")})
    stamp = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
    tree = lithos.pid
    syslog_sink.wait_for(rf"^<156>{stamp} myapp\[{tree}\]: lithos_tree started \(pid {tree}")
    sup = int(syslog_sink.wait_for(r"^<158>.* myapp\[\d+\]: supervisor started \(pid (\d+)")[1])
    syslog_sink.wait_for(rf"^<158>{stamp} myapp\[{sup}\]: app/app\.0: STARTING -> RUNNING")
    syslog_sink.wait_for(rf"^<159>{stamp} myapp\[{tree}\]: broker\.server:\d+: StartInstance ")
    knot = lithos.recorded_pids()[0]
    syslog_sink.wait_for(rf"^<158>{stamp} myapp-app\[{knot}\]: \[app/app\.0\] Starting container$")
    syslog_sink.wait_for(rf'^<156>{stamp} myapp-app\[{knot}\]: Starting "app/app\.0": "/bin/sh"')
    lithos.wait_stdio("app", r"^up app/app\.0$")
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    syslog_sink.wait_for(rf'^<155>{stamp} myapp-app\[{knot}\]: Process "app/app\.0" killed by '
                         r"signal SIGKILL\[9\], uptime \d+s$")
    log_dir = lithos.root / "log"
    assert not (log_dir / "master.log").exists() and not (log_dir / "app.log").exists()
    # The stdio log is not a log of lithos: it stays a file in syslog mode.
    assert "up app/app.0" in lithos.stdio_log("app")


def test_stdio_log_holds_output_and_start_and_death_lines(lithos) -> None:
    """K-41, K-53: the service's stdout and stderr and lithos's marker lines, in order,
    in <stdio-log-dir>/<sandbox>.log."""
    start_app(lithos)
    lithos.wait_stdio("app", r"^err app/app\.0$")
    knot = lithos.recorded_pids()[0]
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    lithos.wait_stdio("app", r"(?s)killed by signal.*\nup app/app\.0\n")
    lines = lithos.stdio_log("app").splitlines()
    start = re.compile(rf'^{TS}: ----- Starting "app/app\.0": "/bin/sh" "-c" ".*" -----$')
    death = re.compile(rf'^{TS}: ----- Process "app/app\.0" killed by signal SIGKILL\[9\], '
                       r"uptime \d+s -----$")
    kinds = ["start" if start.match(x) else "death" if death.match(x) else x for x in lines]
    assert kinds[:5] == ["start", "up app/app.0", "err app/app.0", "death", "start"], lines


def test_moved_stdio_log_is_left_behind_at_the_next_start(lithos, wait_file_text) -> None:
    """logrotate without copytruncate: after `mv`, the running service and its death
    line stay in the moved file; the restarted service writes to a new file."""
    start_app(lithos)
    lithos.wait_stdio("app", r"^up app/app\.0$")
    stdio = lithos.root / "log" / "stderr" / "app.log"
    moved = stdio.with_name("app.log.1")
    stdio.rename(moved)
    knot = lithos.recorded_pids()[0]
    os.kill(lithos.service_pid(knot), signal.SIGKILL)
    wait_file_text(moved, r'----- Process "app/app\.0" killed by signal SIGKILL')
    wait_file_text(stdio, r'(?s)----- Starting "app/app\.0".*\nup app/app\.0\n')
    new = stdio.read_text()
    assert "killed by signal" not in new and new.count("Starting") == 1, new
    assert moved.read_text().count("up app/app.0") == 1


def test_config_log_one_line_per_start_and_rotation(lithos) -> None:
    """T-27, T-28: a line per start of lithos_tree (a re-exec is a start); a file over
    10 MiB becomes <sandbox>.log.1 before the next line, .1 becomes .2."""
    config_dir = lithos.root / "log" / "config"
    config_dir.mkdir(parents=True)
    big = config_dir / "app.log"
    with big.open("wb") as f:  # sparse: the size is what counts
        f.truncate(10_485_760 + 1)
    (config_dir / "app.log.1").write_text("older\n")
    start_app(lithos)
    lines = (config_dir / "app.log").read_text().splitlines()
    assert len(lines) == 1 and re.match(rf"^{TS} \{{\"app\":\{{", lines[0]), lines
    assert (config_dir / "app.log.1").stat().st_size == 10_485_760 + 1
    assert (config_dir / "app.log.2").read_text() == "older\n"
    mark = lithos.mark()
    lithos.proc.send_signal(signal.SIGQUIT)  # a reload: one more line, no rotation
    lithos.wait_for(r"supervisor ready:", start=mark)
    assert len((config_dir / "app.log").read_text().splitlines()) == 2
    assert not (config_dir / "app.log.3").exists()


def test_config_log_dir_null_writes_nothing(lithos) -> None:
    """1.1 `config-log-dir: null` (0.10.2): no config log at all."""
    master = lithos.master.read_text()
    lithos.master.write_text(re.sub(r"(?m)^config-log-dir: .*$", "config-log-dir: null", master))
    start_app(lithos)
    lithos.wait_stdio("app", r"^up app/app\.0$")
    assert not (lithos.root / "log" / "config").exists()


def poke_until(lithos, pattern: str, start: int, timeout_s: float = 30.0) -> None:
    """Makes the broker log (a DEBUG line per control request) until `pattern` shows
    on its stderr: a log file is checked against its path at most once a second."""
    deadline = time.monotonic() + timeout_s
    while True:
        lithos.status()
        try:
            lithos.wait_for(pattern, timeout_s=0.2, start=start)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def restart_service(lithos) -> None:  # type: ignore[no-untyped-def]
    """Kills the container (its knot: the service may not have started yet) and waits
    for the supervisor to have it running again."""
    lithos.wait_for(r"app/app\.0: STARTING -> RUNNING")
    mark = lithos.mark()
    os.kill(lithos.running()["app/app.0"], signal.SIGKILL)
    lithos.wait_for(r"app/app\.0: STARTING -> RUNNING", start=mark)


def test_master_log_replaced_by_a_directory(lithos) -> None:
    """Bad input: said once on stderr, lines dropped and counted, supervision goes
    on, and the file is written again once the path is free."""
    start_app(lithos)
    lithos.wait_stdio("app", r"^up app/app\.0$")
    log_dir = lithos.root / "log"
    master_log = log_dir / "master.log"
    master_log.rename(log_dir / "master.log.old")
    master_log.mkdir()
    mark = lithos.mark()
    report = (rf"^lithos: log file '{re.escape(str(master_log))}': cannot open: EISDIR "
              r"\(Is a directory\); log lines are dropped until this is fixed$")
    poke_until(lithos, report, mark)
    restart_service(lithos)  # still supervising
    restart_service(lithos)
    assert lithos.count(report, mark) == 1
    master_log.rmdir()
    poke_until(lithos, rf"^lithos: log file '{re.escape(str(master_log))}': writable again "
               r"\(\d+ log lines were dropped\)$", mark)
    text = master_log.read_text()
    assert re.match(rf"^\[{TS}\]\[WARN\] log file '{re.escape(str(master_log))}': \d+ log "
                    r"lines were dropped \(cannot open: EISDIR \(Is a directory\)\)\n", text), text


def test_full_disk_is_said_once_and_recovers(lithos) -> None:
    """Bad input: default-log-dir on a 256 KiB tmpfs that the test fills up."""
    small = lithos.root / "small"
    small.mkdir()
    (lithos.root / "log").mkdir()  # config-log-dir and stdio-log-dir stay there
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "lt-e2e-logs", str(small)],
                   check=True)  # unmounted by the lithos fixture's clean-up
    master = lithos.master.read_text()
    lithos.master.write_text(re.sub(r"(?m)^default-log-dir: .*$", f"default-log-dir: {small}",
                                    master))
    start_app(lithos)
    lithos.wait_stdio("app", r"^up app/app\.0$")
    filler = small / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError as e:
            assert e.errno == 28  # ENOSPC
    mark = lithos.mark()
    report = (rf"^lithos: log file '{re.escape(str(small / 'master.log'))}': cannot write: "
              r"ENOSPC \(No space left on device\); log lines are dropped until this is fixed$")
    poke_until(lithos, report, mark)
    restart_service(lithos)  # still supervising; the knot's own lines are dropped too
    assert lithos.count(report, mark) == 1
    filler.unlink()
    poke_until(lithos, r"^lithos: log file .*master\.log': writable again", mark)
    assert re.search(r"\]\[WARN\] log file .*: \d+ log lines were dropped \(cannot write: "
                     r"ENOSPC", (small / "master.log").read_text())


def test_unopenable_sandbox_and_stdio_logs_do_not_stop_services(lithos) -> None:
    """Bad input: a directory where the sandbox log and the stdio log should be. The
    service runs all the same (output to /dev/null), each problem is logged once, and
    the next start after the fix writes both files again."""
    log_dir = lithos.root / "log"
    sandbox_log, stdio = log_dir / "app.log", log_dir / "stderr" / "app.log"
    sandbox_log.mkdir(parents=True)
    stdio.mkdir(parents=True)
    start_app(lithos)
    lithos.wait_for(r"app/app\.0: STARTING -> RUNNING")
    restart_service(lithos)
    restart_service(lithos)
    for path, what in ((sandbox_log, "sandbox log"), (stdio, "stdio log")):
        assert lithos.count(rf"\[WARN\] {what} '{re.escape(str(path))}': cannot open: EISDIR "
                            r"\(Is a directory\); .* until this is fixed$") == 1
    sandbox_log.rmdir()
    stdio.rmdir()
    mark = lithos.mark()
    restart_service(lithos)
    lithos.wait_for(rf"\[WARN\] sandbox log '{re.escape(str(sandbox_log))}': writable again",
                    start=mark)
    lithos.wait_for(rf"\[WARN\] stdio log '{re.escape(str(stdio))}': writable again", start=mark)
    lithos.wait_stdio("app", r"^up app/app\.0$")
    assert '[WARN] Starting "app/app.0"' in sandbox_log.read_text()


CMD = """
kind: Command
executable: /bin/sh
arguments: [-c, 'echo "ran $LITHOS_NAME"']
user-id: 1000
group-id: 1000
"""


def test_lithos_cmd_and_its_knot_log_to_the_sandbox_log(lithos) -> None:
    """T-40, 2.3: lithos_cmd logs to the sandbox log at its own level; its knot gets
    no --log-level (step 10), so it logs at the sandbox's or master's level (debug)."""
    lithos.image("cmd.v1", {"cmd.yaml": CMD})
    lithos.sandbox("sb", "", "show: {image: cmd.v1, config: /config/cmd.yaml, kind: Command}\n")

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "broker.cmd", "--master", str(lithos.master), *args,
             "sb", "show"], cwd=REPO, capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return re.findall(r"ran (sb/cmd\.show\.\d+)", lithos.stdio_log("sb"))[-1]

    name = run("--log-level", "info")
    text = (lithos.root / "log" / "sb.log").read_text()
    assert re.search(rf"^\[{TS}\]\[INFO\] {name}: started, knot pid \d+$", text, re.M), text
    assert re.search(rf"^\[{TS}\]\[INFO\] \[{name}\] Starting container$", text, re.M), text
    assert re.search(rf'^\[{TS}\]\[WARN\] Starting "{name}": "/bin/sh" "-c" ', text, re.M)
    assert re.search(rf'^\[{TS}\]\[ERROR\] Process "{name}" exited with code 0, uptime \d+s$',
                     text, re.M), text
    name = run("--log-level", "error")
    text = (lithos.root / "log" / "sb.log").read_text()
    assert f'Starting "{name}"' in text and f"{name}: started" not in text
