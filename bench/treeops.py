"""lithos tree with N containers running: idle CPU, supervisor recovery, re-exec.

Owns the measures made on one running lithos_tree (issue #10, items 4 and 5): the
CPU time (utime + stime, /proc/PID/stat) and the times scheduled (the third field of
every thread's /proc/PID/task/TID/schedstat) of the broker and the supervisor over
an idle period; SIGKILL of the supervisor -> its successor reconciled every child;
SIGQUIT of the broker -> the re-executed broker answers a control request (and then
-> its new supervisor reconciled). "Reconciled" is the broker's sd_notify READY=1,
sent when the supervisor's SupervisorReady arrives, which it sends after its first
reconciliation (supervisor/main.py take_over); the bench listens on its own
NOTIFY_SOCKET. Rules: event waits only (the notify socket, inotify on the runtime
dir), each with a deadline; nothing here starts or kills anything but the tree's
own broker and supervisor, by pid. Pure helpers (parsers, the limits check) are
unit-tested in tests/unit/bench.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import BenchError, children
from bench.measure import NS_PER_MS, Result

IN_CREATE = 0x100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIDS_PER_CONTAINER = 2  # the knot (then the native pid 1) and the service
FDS_PER_CONTAINER = 0   # the broker keeps no fd per child (pidfds only for orphans)
KB_PER_CONTAINER = 200  # native pid 1 ~58 kB PSS, the service, kernel stacks, page tables
SPARE_PIDS = 500
SPARE_KB = 1 << 20  # 1 GB for the knots' transient Python and everything else


# -- pure helpers ----------------------------------------------------------------

def stat_ticks(text: str) -> int:
    """utime + stime (clock ticks) from a /proc/PID/stat line."""
    fields = text.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def schedstat_slices(text: str) -> tuple[int, int]:
    """(ns on the CPU, times scheduled) from a /proc/PID/task/TID/schedstat line."""
    run_ns, _wait_ns, slices = (int(x) for x in text.split()[:3])
    return run_ns, slices


def inotify_names(buf: bytes) -> list[str]:
    """The names in a buffer of struct inotify_event records."""
    names = []
    offset = 0
    while offset + _EVENT.size <= len(buf):
        _wd, _mask, _cookie, length = _EVENT.unpack_from(buf, offset)
        offset += _EVENT.size
        names.append(buf[offset:offset + length].rstrip(b"\0").decode(errors="replace"))
        offset += length
    return names


def limit_problems(n: int, pid_max: int, pids_used: int, threads_max: int, nofile: int,
                   mem_available_kb: int) -> list[str]:
    """Why this machine cannot hold n more containers (empty when it can)."""
    problems = []
    need_pids = n * PIDS_PER_CONTAINER + SPARE_PIDS
    if pids_used + need_pids > min(pid_max, threads_max):
        problems.append(f"{n} containers need about {need_pids} pids; kernel.pid_max "
                        f"{pid_max}, kernel.threads-max {threads_max}, {pids_used} in use")
    need_fds = n * FDS_PER_CONTAINER + 256
    if nofile < need_fds:
        problems.append(f"RLIMIT_NOFILE {nofile} < {need_fds}")
    need_kb = n * KB_PER_CONTAINER + SPARE_KB
    if mem_available_kb < need_kb:
        problems.append(f"{n} containers need about {need_kb // 1024} MB; MemAvailable is "
                        f"{mem_available_kb // 1024} MB")
    return problems


# -- the machine -------------------------------------------------------------------

def check_limits(n: int) -> None:
    """Raises BenchError when pids, fds or memory are short for n containers."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the broker inherits the harness's limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    problems = limit_problems(
        n, int(Path("/proc/sys/kernel/pid_max").read_text()),
        sum(1 for p in os.listdir("/proc") if p.isdigit()),
        int(Path("/proc/sys/kernel/threads-max").read_text()), hard,
        int(meminfo["MemAvailable"].split()[0]))
    if problems:
        raise BenchError("bench: this machine cannot hold the run: " + "; ".join(problems))


def cpu(pid: int) -> tuple[int, int, int]:
    """(utime+stime ticks, ns on the CPU, times scheduled) of pid, all its threads."""
    ticks = stat_ticks(Path(f"/proc/{pid}/stat").read_text())
    run_ns = slices = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            r, s = schedstat_slices(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text())
            run_ns += r
            slices += s
    return ticks, run_ns, slices


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def supervisor_pid(broker: int) -> int:
    """The broker's live supervisor child (`python3 -m supervisor`)."""
    for pid in children(broker):
        argv = _cmdline(pid).split(b"\0")
        if b"-m" in argv and b"supervisor" in argv:
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                    return pid
    raise BenchError(f"bench: no supervisor under lithos_tree (pid {broker})")


class Notify:
    """The NOTIFY_SOCKET the tree is started with: READY=1 when a supervisor reconciled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))

    def drain(self) -> None:
        while select.select([self.sock], [], [], 0)[0]:
            self.sock.recv(4096)

    def wait_ready(self, timeout_s: float) -> int:
        """perf_counter_ns when the next READY=1 arrives; BenchError at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise BenchError(f"bench: no READY=1 from lithos_tree in {timeout_s:g}s")
            if b"READY=1" in self.sock.recv(4096).split(b"\n"):
                return time.perf_counter_ns()

    def close(self) -> None:
        self.sock.close()


class Inotify:
    """Names created in one directory (IN_CREATE), read with select and a deadline."""

    def __init__(self, directory: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise BenchError(f"bench: inotify_init1: {os.strerror(ctypes.get_errno())}")
        if self.libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE) < 0:
            os.close(self.fd)
            raise BenchError(f"bench: inotify_add_watch {directory}: "
                             f"{os.strerror(ctypes.get_errno())}")

    def wait_for(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise BenchError(f"bench: {name} not created within {timeout_s:g}s")
            with contextlib.suppress(BlockingIOError):
                if name in inotify_names(os.read(self.fd, 65536)):
                    return

    def close(self) -> None:
        os.close(self.fd)


# -- the measures ----------------------------------------------------------------

def interpreter_ms(code: str, samples: int = 5) -> float:
    """Median ms of `python3 -c CODE` from the worktree: the floor under a supervisor
    start (`import supervisor.main`) or a broker re-exec (`import broker.startup`)."""
    import subprocess
    import sys

    times = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter_ns() - t0) / NS_PER_MS)
    return Result(times).median or 0.0


@dataclass
class Idle:
    seconds: float
    per_process: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name: cpu()

    def percent(self, name: str) -> float:
        ticks = self.per_process[name][0]
        return 100.0 * ticks / CLK_TCK / self.seconds


def idle_cpu(broker: int, seconds: float) -> Idle:
    """CPU of the broker and the supervisor over `seconds` of nothing to do."""
    pids = {"broker": broker, "supervisor": supervisor_pid(broker)}
    before = {name: cpu(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    select.select([], [], [], seconds)  # the harness itself sleeps: nothing to wait for
    elapsed = time.monotonic() - t0
    after = {name: cpu(pid) for name, pid in pids.items()}
    return Idle(elapsed, {name: tuple(a - b for a, b in zip(after[name], before[name],
                                                               strict=True))  # type: ignore[misc]
                          for name in pids})


def recovery(broker: int, notify: Notify, samples: int, spacing_s: float,
             timeout_s: float) -> Result:
    """SIGKILL of the supervisor -> READY=1 of its successor (every child reconciled).

    Samples are `spacing_s` apart (the broker resets its restart back-off for a
    supervisor that lived SUPERVISOR_STABLE_S), so each is a first failure.
    """
    result = Result()
    for i in range(samples):
        if i:
            select.select([], [], [], spacing_s)
        notify.drain()
        pid = supervisor_pid(broker)
        t0 = time.perf_counter_ns()
        os.kill(pid, signal.SIGKILL)
        t1 = notify.wait_ready(timeout_s)
        result.values.append((t1 - t0) / NS_PER_MS)
    return result


def _status_answered(runtime_dir: Path, timeout_s: float) -> int:
    """Connects (the listen() right after bind may be a few microseconds away), asks
    GetStatus; perf_counter_ns when the answer came. Returns the containers listed."""
    from supervisor import control

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            tree = control.status(runtime_dir, timeout_s)
            break
        except control.NoDaemon:
            if time.monotonic() > deadline:
                raise
            os.sched_yield()
    return sum(1 for sb in tree.sandboxes for p in sb.processes for i in p.instances
               if i.pid is not None)


def reexec(broker: int, runtime_dir: Path, notify: Notify, samples: int, n: int,
           timeout_s: float) -> tuple[Result, Result]:
    """SIGQUIT -> a control request answered by the new image; -> its supervisor READY=1."""
    serving, ready = Result(), Result()
    for _ in range(samples):
        notify.drain()
        watch = Inotify(runtime_dir)
        try:
            t0 = time.perf_counter_ns()
            os.kill(broker, signal.SIGQUIT)
            watch.wait_for("control.sock", timeout_s)
            listed = _status_answered(runtime_dir, timeout_s)
            t1 = time.perf_counter_ns()
        finally:
            watch.close()
        t2 = notify.wait_ready(timeout_s)
        if listed != n:
            raise BenchError(f"bench: after a re-exec lithos_tree lists {listed} containers, "
                             f"not {n}")
        serving.values.append((t1 - t0) / NS_PER_MS)
        ready.values.append((t2 - t0) / NS_PER_MS)
    return serving, ready
