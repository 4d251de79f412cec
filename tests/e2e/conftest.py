"""End-to-end fixtures: a real lithos_tree on a temporary tree of configs.

`lithos` builds, per test, a directory (mode 0755, so the unprivileged
supervisor can read it) holding a busybox image, a devfs, and the four configs
the test writes; `lithos.start()` runs `python -m broker.main` and waits, by
reading its log lines as they come (no sleeps), for the supervisor to be ready.
The finalizer stops lithos_tree (SIGTERM, then SIGKILL to it and to every knot
it recorded), and removes the tree and the test's cgroups, even when the test
failed. Log lines are an interface (STYLE P12): tests wait for and assert on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knot import mkdev
from protocol import messages as m
from protocol.channel import Channel
from protocol.records import Role

REPO = Path(__file__).resolve().parents[2]
BUSYBOX = "/bin/busybox"

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def build_busybox_image(root: Path) -> None:
    """An image: busybox applets in /bin, /etc/hosts, /etc/resolv.conf, mount points."""
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "config", "data", "state"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in applets:
        link = root / "bin" / name
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "resolv.conf").write_text("")


class LogTail:
    """Collects a pipe's lines in a thread; `wait_for` blocks on a condition."""

    def __init__(self, fd: int) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._fd = fd
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with os.fdopen(self._fd, "r", errors="replace") as f:
            for line in f:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = 20.0, start: int = 0) -> re.Match[str]:
        """The first line at index >= start matching `pattern`; fails after timeout_s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    match = rx.search(self.lines[i])
                    if match:
                        return match
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(
                        f"no log line matching {pattern!r} in {timeout_s}s:\n{tail}"
                    )
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)


class Lithos:
    """One test's lithos tree; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = secrets.token_hex(3)
        self.cgroup_name = f"lt-e2e-{self.tag}.slice"
        self.image_dir = root / "images"
        self.config_dir = root / "etc"
        self.runtime = root / "run"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: LogTail | None = None
        for d in (self.image_dir, self.config_dir / "sandboxes", self.config_dir / "processes"):
            d.mkdir(parents=True)
        mkdev.make_devfs(str(root / "dev"))
        self.write(
            "master.yaml",
            f"""
runtime-dir: {self.runtime}
devfs-dir: {root / "dev"}
default-log-dir: {root / "log"}
config-log-dir: {root / "log" / "config"}
stdio-log-dir: {root / "log" / "stderr"}
cgroup-name: {self.cgroup_name}
log-level: debug
""",
        )

    # -- configs --------------------------------------------------------------

    @property
    def master(self) -> Path:
        return self.config_dir / "master.yaml"

    def write(self, relpath: str, text: str) -> Path:
        path = self.config_dir / relpath
        path.write_text(text)
        return path

    def image(self, name: str, configs: dict[str, str]) -> Path:
        """A busybox image `name` with container configs at /config/<key>."""
        root = self.image_dir / name
        build_busybox_image(root)
        for cfg_name, text in configs.items():
            (root / "config" / cfg_name).write_text(text)
        return root

    def sandbox(self, name: str, text: str = "", processes: str | None = None) -> None:
        base = f"image-dir: {self.image_dir}\nallow-users: [0-65535]\nallow-groups: [0-65535]\n"
        self.write(f"sandboxes/{name}.yaml", base + text)
        if processes is not None:
            self.write(f"processes/{name}.yaml", processes)

    def wait_stdio(self, sandbox: str, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        """Waits for `pattern` in the sandbox's stdio log (the knots' start/death lines)."""
        path = self.root / "log" / "stderr" / f"{sandbox}.log"
        return wait_for_file_text(path, pattern, timeout_s)

    def service_pid(self, knot_pid: int) -> int:
        """The service (pid 2 inside) of a knot whose service was seen running.

        Wait for a line the service itself prints (e.g. `echo up; exec sleep`):
        the knot's own `Starting` line is written just before it forks.
        """
        children = Path(f"/proc/{knot_pid}/task/{knot_pid}/children").read_text().split()
        assert len(children) == 1, f"knot {knot_pid} has children {children}"
        return int(children[0])

    def stdio_log(self, sandbox: str) -> str:
        path = self.root / "log" / "stderr" / f"{sandbox}.log"
        return path.read_text() if path.exists() else ""

    # -- running ----------------------------------------------------------------

    def start(self, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        """env: added to lithos_tree's environment (ours, with PYTHONPATH)."""
        r, w = os.pipe()
        env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker.main", "-C", str(self.master), "--log-stderr",
             "--log-level", "debug"],
            cwd=REPO, stdout=w, stderr=w, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        os.close(w)
        self.log = LogTail(r)
        if wait_ready:
            self.wait_for(r"supervisor ready:")

    def wait_for(self, pattern: str, timeout_s: float = 20.0, start: int = 0) -> re.Match[str]:
        assert self.log is not None
        return self.log.wait_for(pattern, timeout_s, start)

    def mark(self) -> int:
        assert self.log is not None
        return self.log.mark()

    def lines_since(self, mark: int) -> list[str]:
        assert self.log is not None
        return list(self.log.lines[mark:])

    def supervisor_pid(self, start: int = 0) -> int:
        """The pid of the latest supervisor started at or after log line `start`."""
        self.wait_for(r"supervisor started \(pid \d+", start=start)
        text = "\n".join(self.lines_since(start))
        return int(re.findall(r"supervisor started \(pid (\d+)", text)[-1])

    def count(self, pattern: str, start: int = 0) -> int:
        """How many log lines at or after `start` match `pattern`."""
        rx = re.compile(pattern)
        return sum(1 for line in self.lines_since(start) if rx.search(line))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def control(self) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(self.runtime / "control.sock"))
        ch = Channel(sock)
        ch.send(m.Hello(m.PROTOCOL_VERSION, Role.CONTROL), 1)
        reply = ch.recv().message
        assert isinstance(reply, m.HelloOk), reply
        return ch

    def status(self) -> m.StatusTree:
        with self.control() as ch:
            ch.send(m.GetStatus(), 2)
            reply = ch.recv().message
        assert isinstance(reply, m.StatusTree), reply
        return reply

    def running(self) -> dict[str, int]:
        """Instance name -> knot pid, from the broker's status."""
        out = {}
        for sb in self.status().sandboxes:
            for p in sb.processes:
                for i in p.instances:
                    if i.pid is not None:
                        out[i.instance] = int(i.pid)
        return out

    def recorded_pids(self) -> list[int]:
        pids = []
        for rec in (self.runtime / "children").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(rec.read_text())["pid"]))
        return [p for p in pids if p > 0]  # -1: a start before its fork (broker/children.py)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM lithos_tree and wait for it (it waits for its containers)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self) -> None:
        """Stops everything this test started; each step runs even if one fails."""
        knots = self.recorded_pids()
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            try:
                for pid in knots:  # only pids this test's broker recorded as its knots
                    with contextlib.suppress(ProcessLookupError):
                        if _cmdline_has(pid, b"knot"):
                            os.kill(pid, signal.SIGKILL)
                for pid in knots:
                    _wait_gone(pid)
                _remove_cgroups(self.cgroup_name)
            finally:
                _unmount_below(self.root)
                shutil.rmtree(self.root, ignore_errors=True)


_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_CREATE, IN_MOVED_TO = 0x2, 0x100, 0x80


def wait_for_file_text(path: Path, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
    """Waits (inotify on the directory, no polling) until `path` matches `pattern`."""
    rx = re.compile(pattern, re.M)
    fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mask = IN_MODIFY | IN_CREATE | IN_MOVED_TO
        if _libc.inotify_add_watch(fd, str(path.parent).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path.parent}")
        deadline = time.monotonic() + timeout_s
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            match = rx.search(text)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{path}: no match for {pattern!r} in {timeout_s}s:\n{text[-3000:]}"
                )
            if select.select([fd], [], [], left)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 65536)
    finally:
        os.close(fd)


def _cmdline_has(pid: int, word: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word in f.read()
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)


def _remove_cgroups(name: str) -> None:
    """Removes this test's cgroup (`<hierarchy>/<name>` and below) in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    tops = [base, *(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []
    for top in tops:
        group = top / name
        if not group.is_dir():
            continue
        try:
            subs = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        except FileNotFoundError:
            subs = []
        for sub in [*subs, group]:
            with contextlib.suppress(OSError):
                sub.rmdir()


def _unmount_below(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


@pytest.fixture
def wait_file_text():  # type: ignore[no-untyped-def]
    """`wait_for_file_text(path, pattern, timeout_s)` for tests outside the fixture."""
    return wait_for_file_text


@pytest.fixture
def lithos() -> Iterator[Lithos]:
    root = Path(tempfile.mkdtemp(prefix="lt-e2e-", dir="/tmp"))
    root.chmod(0o755)
    env = Lithos(root)
    try:
        yield env
    finally:
        env.cleanup()

