"""spawn_knot: start one lithos_knot as pid 1 of new mount, pid, uts and ipc namespaces.

Owns the fork/exec of a knot (used by the broker and by lithos_cmd); the caller
stays its parent and reaper. Rules: the child gets exactly the fds it is given
(stdin/stdout/stderr, the tcp fds at their numbers, the spec and the stdio log),
an environment of TERM only (T-50), SIGTERM/SIGINT/SIGCHLD blocked across exec
(so a SIGTERM during the knot's setup stays pending instead of being dropped by
the kernel for a namespace init, K-40), and PR_SET_PDEATHSIG=SIGKILL (T-52).
Which pid 1 the knot hands over to after setup (the native knot/init.c or its own
Python loop) is decided here, in the caller, by knot.initbin (docs/knot.md).

How the child becomes pid 1 (measured on this machine: see the report):
  * unshare(CLONE_NEWPID) in the caller, os.fork(), then setns() back to our own
    pid namespace. Only children created in between land in the new namespace,
    and the caller's own pid namespace never changes. The child is a normal
    os.fork() child (CPython's at-fork hooks run) whose parent is the caller, so
    pdeathsig and waitpid work directly. Chosen.
  * fork, unshare in the child, fork again: the grandchild is pid 1 but its
    parent is the intermediate process, so pdeathsig would fire when that exits,
    and the caller would have to be a child subreaper. Rejected.
  * raw clone(CLONE_NEWPID|...|SIGCHLD) through ctypes: skips CPython's at-fork
    handling (locks, thread state) in the child. Rejected for no gain.
PR_SET_PDEATHSIG fires when the parent *thread* exits, not when it execs: a
broker that re-execs itself in place (single-threaded, SIGQUIT) keeps its knots;
a broker that dies kills them (tests/kernel/knot/test_spawn.py checks both).
The unshare needs no single-threaded caller (CLONE_NEWPID does not require it).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
from collections.abc import Mapping

from knot import initbin, linux
from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import KnotSpec

KNOT_MODULE = "knot.lithos_knot"
# The directory holding the knot package: the knot runs with it as cwd, so
# `-m knot.lithos_knot` imports the same code as the spawner, installed or not.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def knot_argv(name: str, spec_fd: int, log_fd: int | None,
              status_fd: int | None = None) -> list[str]:
    """The knot's command line; it contains `lithos_knot --name NAME` for pgrep -f."""
    argv = [sys.executable, "-m", KNOT_MODULE, "--name", name, "--spec-fd", str(spec_fd)]
    if log_fd is not None:
        argv += ["--log-fd", str(log_fd)]
    if status_fd is not None:
        argv += ["--status-fd", str(status_fd)]
    return argv


def _spec_memfd(spec: KnotSpec) -> int:
    # A memfd rather than a pipe: the whole spec is written before the fork, so
    # no size can block the spawner, and the knot reads it with pread from 0.
    fd = os.memfd_create("lithos-knot-spec", os.MFD_CLOEXEC)
    data = memoryview(spec.to_json().encode())
    while data:
        data = data[os.write(fd, data):]
    return fd


def _place_fds(targets: Mapping[int, int]) -> None:
    """In the child: fd `source` at number `target` for each pair; everything else closed."""
    top = max([*targets, *targets.values()]) + 1
    # First move every source above every target (CLOEXEC), so that a dup2 onto
    # a target never clobbers a source still to be placed.
    staged = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, top) for t, s in targets.items()}
    for target, fd in staged.items():
        os.dup2(fd, target, inheritable=True)
    low = 0
    for fd in sorted(targets):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    # Up to the highest open fd, not just the limit: fds opened before a lower
    # RLIMIT_NOFILE was set may sit above it.
    high = max([int(fd) for fd in os.listdir("/proc/self/fd")] + [os.sysconf("SC_OPEN_MAX")])
    os.closerange(low, high + 1)


def _child(argv: list[str], fds: Mapping[int, int], parent_pidfd: int, pdeathsig: bool,
           netns_fd: int | None) -> None:
    try:
        if pdeathsig:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            # The parent may have died before prctl: then nobody would kill us.
            if select.select([parent_pidfd], [], [], 0)[0]:
                os._exit(EXIT_SETUP_FAILED)
        if netns_fd is not None:  # bridged (K-30): the netns the broker prepared
            linux.setns(netns_fd, linux.CLONE_NEWNET)
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC)
        _place_fds(fds)
        os.chdir(_PACKAGE_PARENT)
        os.execve(sys.executable, argv, {"TERM": os.environ.get("TERM", "dumb")})
    except BaseException as e:  # noqa: BLE001 - a forked child must never return
        try:
            os.write(2, f"knot[{argv[4]}]: spawn: {e}\n".encode(errors="replace"))
        finally:
            os._exit(EXIT_SETUP_FAILED)


AUTO = "auto"


def spawn_knot(spec: KnotSpec, *, inherited_fds: Mapping[int, int], stdin: int, stdout: int,
               stderr: int, stdio_log: int | None = None, pdeathsig: bool = True,
               status_fd: int | None = None,
               native_init: str | os.PathLike[str] | None = AUTO,
               netns_fd: int | None = None,
               sandbox_log: tuple[int, str] | None = None) -> int:
    """Forks and execs the knot for `spec`; returns its pid as the caller sees it.

    inherited_fds maps the fd number the service must see (spec.tcp_fds) to the
    caller's fd; the knot gets each at that number (fd 0 replaces stdin). stdin,
    stdout and stderr become the knot's 0, 1, 2 (its own errors go to 2);
    stdio_log is where the service's output and the start/death lines go.
    pdeathsig=False is for lithos_tree: its containers must outlive a broker that
    is killed (it finds them again from its records); lithos_cmd keeps the
    original's SIGKILL on parent death (T-52).
    status_fd (lithos_cmd): the knot writes the service's raw wait status there,
    one decimal line per death, so that lithos_cmd can exit with the command's
    own code (inventory "How we decide" 3); the service never sees this fd.
    native_init: the native pid 1 binary the knot execs after setup (knot/init.c);
    None runs the Python pid 1; AUTO asks knot.initbin.choose() (native when it can
    be built, unless LITHOS_KNOT_INIT=python).
    netns_fd: a network namespace (bridged sandboxes, broker/netstart.py) the knot
    joins before anything else; None keeps the caller's. The knot never gets the fd.
    sandbox_log: (fd, settings) of the sandbox log (protocol.sandboxlog): the fd
    the spawner opened and SandboxLog.to_arg(); the knot's own lines go there.
    Raises: ValueError if inherited_fds does not match spec.tcp_fds; OSError.
    """
    if sorted(inherited_fds) != sorted(spec.tcp_fds):
        raise ValueError(f"{spec.name}: inherited fds {sorted(inherited_fds)} do not match "
                         f"tcp fds {sorted(spec.tcp_fds)}")
    fds = {0: stdin, 1: stdout, 2: stderr, **inherited_fds}
    spec_no = max(fds) + 1
    log_no = spec_no + 1 if stdio_log is not None else None
    status_no = max(spec_no, log_no or 0) + 1 if status_fd is not None else None
    spec_fd = _spec_memfd(spec)
    own_pidns = pidfd = -1
    try:
        fds[spec_no] = spec_fd
        if stdio_log is not None and log_no is not None:
            fds[log_no] = stdio_log
        if status_fd is not None and status_no is not None:
            fds[status_no] = status_fd
        argv = knot_argv(spec.name, spec_no, log_no, status_no)
        if sandbox_log is not None:  # the sandbox log (protocol.sandboxlog)
            slog_no = max(fds) + 1
            fds[slog_no] = sandbox_log[0]
            argv += ["--sandbox-log-fd", str(slog_no), "--sandbox-log", sandbox_log[1]]
        if native_init == AUTO:
            native_init = initbin.choose()
        if native_init is not None:
            argv += ["--init", os.fspath(native_init)]
        pidfd = os.pidfd_open(os.getpid())
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # Blocked across the fork too: a SIGTERM between fork and exec would be
        # dropped, the child being a namespace init with SIG_DFL (K-40).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                _child(argv, fds, pidfd, pdeathsig, netns_fd)
        finally:
            # Children we fork later (and the broker's other work) stay in our namespace.
            linux.setns(own_pidns, linux.CLONE_NEWPID)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid
    finally:
        for fd in (spec_fd, own_pidns, pidfd):
            if fd >= 0:
                os.close(fd)
