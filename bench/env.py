"""The bench's world: a temp dir with the image and the compiled programs, the
ready pipe, and the processes it started.

Owns everything the bench creates on the host: one temp dir (image, C programs,
crun bundle and state, knot state dirs), the ready pipe every payload writes to,
and the harness's descendants. Rules: the harness is a child subreaper, so every
container's pid 1 ends up as its child or grandchild, and cleanup SIGKILLs exactly
the harness's own descendants (found through /proc/PID/task/TID/children), never
anything by name. Nothing is mounted on the host: the harness first moves into a private mount
namespace of its own (where, on a cgroup v1 "hybrid" host, the cgroup2 mount at
/sys/fs/cgroup/unified is detached: crun refuses hybrid hosts, and no contender
uses cgroups), and every container gets its own from there.

The temp dir is a tmpfs mounted in that namespace (LITHOS_BENCH_DISK=1: left on the
host's /tmp): lithos_tree keeps its runtime-dir (child records, state dirs, sockets)
under it, and a production runtime-dir is /run/lithos, a tmpfs. On this machine /tmp
is ext4 mounted with `discard`, where a mkdir or a small file write + rename takes
about 0.4 ms (tmpfs: 5-15 us); crun's state stays in its own /run/crun.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench import csrc

BUSYBOX = "/bin/busybox"
IMAGE_DIRS = ("bin", "etc", "tmp", "proc", "sys", "dev", "data", "state", "ready", "config")
PAYLOAD_HOLD = "/bin/lbready"   # writes its byte, then pauses forever
PAYLOAD_ONCE = "/bin/lbonce"    # writes its byte, then exits
PAYLOAD_FIFO = "/bin/lbfifo"    # writes its byte to /ready/fifo, then pauses forever
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
HYBRID_UNIFIED = "/sys/fs/cgroup/unified"
DISK_ENV = "LITHOS_BENCH_DISK"
GRACE_S = 1.0  # how long a start may stay silent once all its processes exited


class BenchError(Exception):
    """The bench cannot run here (not root, no compiler, a contender failed)."""


def children(pid: int) -> list[int]:
    """Direct children of pid (all its threads), adopted orphans included."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it exited as we looked
        return kids
    for tid in tids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            kids += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def descendants(pid: int) -> list[int]:
    """Every descendant of pid, parents before their children."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo += children(p)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def rollup_kb(pid: int) -> dict[str, int]:
    """smaps_rollup of pid in kB (empty if it is gone or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])
    return fields


def pss_kb(pid: int) -> int:
    """Proportional set size of pid (0 if it is gone)."""
    return rollup_kb(pid).get("Pss", 0)


def uss_kb(pid: int) -> int:
    """Unique set size of pid: its private pages, what killing it would free."""
    r = rollup_kb(pid)
    return r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)


def _ignore(signum: int, frame: object) -> None:
    pass


def _private_mount_namespace() -> None:
    """Moves the harness into its own mount namespace; see the module docstring."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise BenchError(f"bench: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise BenchError(f"bench: make / private: {os.strerror(ctypes.get_errno())}")
    if os.path.ismount(HYBRID_UNIFIED):
        libc.umount2(HYBRID_UNIFIED.encode(), MNT_DETACH)


def _mount_tmpfs(path: Path) -> bool:
    """A tmpfs on `path` (in the harness's own mount namespace); False if that failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", 0, b"mode=0700") == 0


class _Deadline(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Deadline()


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class BenchEnv:
    """One bench run's temp dir, programs, image and ready pipe; close() undoes all."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("bench: must run as root (it creates namespaces and mounts)")
        if shutil.which("gcc") is None:
            raise BenchError("bench: gcc not found (the C floor and payload are compiled here; "
                             "apt-get install gcc libc6-dev)")
        if not os.path.exists(BUSYBOX):
            raise BenchError(f"bench: {BUSYBOX} not found (the image is made from it; "
                             "apt-get install busybox-static)")
        self.sig_r = self.sig_w = -1
        self.tmp = Path(tempfile.mkdtemp(prefix="lithos-bench-"))
        self.tmpfs = False
        try:
            _private_mount_namespace()
            if os.environ.get(DISK_ENV) != "1":
                self.tmpfs = _mount_tmpfs(self.tmp)
        except BaseException:
            if self.tmpfs:
                ctypes.CDLL(None, use_errno=True).umount2(str(self.tmp).encode(), MNT_DETACH)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.ready_r, self.ready_w = os.pipe2(os.O_CLOEXEC)
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.errlog_path = self.tmp / "stderr.log"
        self.errlog = os.open(self.errlog_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                              | os.O_CLOEXEC, 0o644)
        self.image = self.tmp / "image"
        self.mnt = self.tmp / "mnt"
        self.mnt.mkdir()
        self.bin = self.tmp / "prog"
        self.bin.mkdir()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise BenchError("bench: prctl(PR_SET_CHILD_SUBREAPER) failed")
        # SIGCHLD wakes wait_ready, so a contender that dies without its byte
        # fails at once instead of at the deadline.
        self.sig_r, self.sig_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.old_sigchld = signal.signal(signal.SIGCHLD, _ignore)
        self.old_wakeup = signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        self._build()

    # --- building -------------------------------------------------------------

    def _gcc(self, source: str, out: Path, *flags: str) -> None:
        src = out.with_suffix(".c")
        src.write_text(source)
        cmd = ["gcc", "-O2", "-o", str(out), str(src), *flags]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"bench: {' '.join(cmd)} failed:\n{done.stderr}")

    def _build(self) -> None:
        for d in IMAGE_DIRS:
            (self.image / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, self.image / "bin" / "busybox")
        for name in ("sh", "mount", "umount", "chroot", "pivot_root", "sleep", "cat"):
            (self.image / "bin" / name).symlink_to("busybox")
        (self.image / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        (self.image / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        if platform.machine() == "x86_64":
            payload, flags = csrc.PAYLOAD_X86_64, ["-static", "-nostdlib",
                                                   "-fno-stack-protector", "-fno-pie",
                                                   "-no-pie"]
        else:
            payload, flags = csrc.PAYLOAD_PORTABLE, ["-static"]
        self._gcc(payload, self.image / PAYLOAD_HOLD.lstrip("/"), "-DHOLD", *flags)
        self._gcc(payload, self.image / PAYLOAD_ONCE.lstrip("/"), *flags)
        self._gcc(payload, self.image / PAYLOAD_FIFO.lstrip("/"), "-DHOLD", "-DFIFO", *flags)
        self.floor = self.bin / "lbfloor"
        self._gcc(csrc.FLOOR, self.floor)

    # --- running --------------------------------------------------------------

    def spawn(self, argv: list[str], ready_fd: bool = True,
              extra_env: dict[str, str] | None = None) -> int:
        """posix_spawn argv with stdin /dev/null, stdout+stderr the error log, fd 3 the pipe;
        the environment is PATH plus extra_env."""
        actions = [(os.POSIX_SPAWN_DUP2, self.null, 0),
                   (os.POSIX_SPAWN_DUP2, self.errlog, 1),
                   (os.POSIX_SPAWN_DUP2, self.errlog, 2)]
        if ready_fd:
            actions.append((os.POSIX_SPAWN_DUP2, self.ready_w, 3))
        return os.posix_spawn(argv[0], argv,
                              {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(extra_env or {})},
                              file_actions=actions)

    def wait_ready(self, count: int, timeout_s: float, fd: int = -1) -> int:
        """Blocks until `count` bytes came through the ready pipe (or `fd`); returns
        perf_counter_ns then.

        Raises: BenchError when they do not come within timeout_s (the error log is quoted).
        """
        deadline = time.monotonic() + timeout_s
        got = 0
        source = self.ready_r if fd < 0 else fd
        while got < count:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([source, self.sig_r], [], [], max(left, 0))
            if not ready:
                raise BenchError(f"bench: {got} of {count} containers ready after "
                                 f"{timeout_s:g}s (or all exited); stderr: "
                                 f"{self.stderr_tail()}")
            if source in ready:
                got += len(os.read(source, count - got))
            elif self.sig_r in ready:
                while _read_some(self.sig_r):
                    pass
                # Everything exited without the byte: a failed start. Not fatal at
                # once: a child being reparented to us may be missed by the scan.
                if not self._anything_alive() and not _readable(source):
                    deadline = min(deadline, time.monotonic() + GRACE_S)
                    timeout_s = GRACE_S
        return time.perf_counter_ns()

    def _anything_alive(self) -> bool:
        for pid in descendants(os.getpid()):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if stat.rpartition(")")[2].split()[0] != "Z":
                return True
        return False

    def stderr_tail(self) -> str:
        text = self.errlog_path.read_text(errors="replace")[-600:]
        return text.strip() or "(empty)"

    def reap_all(self, timeout_s: float) -> None:
        """Waits for every child (adopted ones too) to exit; Raises: BenchError at the deadline."""
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            while True:
                os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except _Deadline:
            raise BenchError(f"bench: children still running after {timeout_s:g}s: "
                             f"{children(os.getpid())}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def kill_all(self) -> None:
        """SIGKILLs every descendant of the harness (all started by it), then reaps them."""
        for _ in range(5):  # a dying parent may hand us more orphans; look again
            pids = descendants(os.getpid())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.reap_all(10.0)
        self.reap_all(10.0)

    def drain(self) -> None:
        """Discards bytes left in the ready pipe (from a failed or partial run)."""
        while select.select([self.ready_r], [], [], 0)[0]:
            if not os.read(self.ready_r, 65536):
                break

    def close(self) -> None:
        try:
            self.kill_all()
        finally:
            if self.sig_w >= 0:
                signal.set_wakeup_fd(self.old_wakeup)
                signal.signal(signal.SIGCHLD, self.old_sigchld)
            for fd in (self.ready_r, self.ready_w, self.null, self.errlog, self.sig_r,
                       self.sig_w):
                if fd >= 0:
                    os.close(fd)
            if self.tmpfs:
                ctypes.CDLL(None, use_errno=True).umount2(str(self.tmp).encode(), MNT_DETACH)
            shutil.rmtree(self.tmp, ignore_errors=True)
