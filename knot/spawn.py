"""spawn_knot: start one lithos_knot as pid 1 of new mount, pid, uts and ipc namespaces.

Owns how a knot is started (used by the broker and by lithos_cmd); the caller
stays its parent and reaper. Three ways (spawn_mode(), LITHOS_KNOT_SPAWN):
  * spawn (the default with the native pid 1): knot.nativespawn posix_spawns
    knot/init.c, which runs the setup (knot.plan's ops) itself. docs/knot.md,
    "Setup as data".
  * fork: the knot is forked without exec: the child forgets the caller (fds,
    signal handlers, wakeup fd), runs knot.main.run() and execs the native pid 1;
    it never returns into the caller's code (os._exit on every path).
    docs/knot.md, "Forked, not exec'd".
  * exec (Python pid 1, LITHOS_KNOT_SPAWN=exec, or fork asked by a threaded
    caller): the child execs `python3 -m knot.lithos_knot`.
Rules: the child gets exactly the fds it is given
(stdin/stdout/stderr, the tcp fds at their numbers, the spec and the stdio log),
an environment of TERM only (T-50), SIGTERM/SIGINT/SIGCHLD blocked across exec
(so a SIGTERM during the knot's setup stays pending instead of being dropped by
the kernel for a namespace init, K-40), and PR_SET_PDEATHSIG=SIGKILL (T-52).
Which pid 1 the knot hands over to after setup (the native knot/init.c or its own
Python loop) is decided here, in the caller, by knot.initbin (docs/knot.md).

How the child becomes pid 1 (measured on this machine: see the report):
  * unshare(CLONE_NEWPID) in the caller, os.fork() (or posix_spawn), then setns() back to our own
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

import ctypes
import fcntl
import functools
import gc
import os
import select
import signal
import sys
from collections.abc import Callable, Mapping

from knot import initbin, linux, nativespawn
from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import KnotSpec

KNOT_MODULE = "knot.lithos_knot"
# The directory holding the knot package: the knot runs with it as cwd, so
# `-m knot.lithos_knot` imports the same code as the spawner, installed or not.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
# With the native pid 1, LITHOS_KNOT_SPAWN=spawn (the default) starts it directly
# with posix_spawn (knot.nativespawn); fork forks the spawner, runs the setup in
# Python and execs it; exec execs `python3 -m knot.lithos_knot` (the old way).
SPAWN_ENV = "LITHOS_KNOT_SPAWN"
SPAWN_MODES = ("spawn", "fork", "exec")
KNOT_COMM = b"lithos_knot"  # the forked knot's name (comm) until it execs the native init


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
    # Every fd above, whatever RLIMIT_NOFILE says now (fds opened before a lower
    # limit was set may sit above it): CPython makes this one close_range(2).
    os.closerange(low, _FD_MAX)


_FD_MAX = 2**31 - 1


def _child(argv: list[str], fds: Mapping[int, int], parent_pidfd: int, pdeathsig: bool,
           netns_fd: int | None, go_r: int) -> None:
    try:
        if pdeathsig:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            # The parent may have died before prctl: then nobody would kill us.
            if select.select([parent_pidfd], [], [], 0)[0]:
                os._exit(EXIT_SETUP_FAILED)
        if netns_fd is not None:  # bridged (K-30): the netns the broker prepared
            linux.setns(netns_fd, linux.CLONE_NEWNET)
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC)
        _wait_go(go_r)
        _place_fds(fds)
        os.chdir(_PACKAGE_PARENT)
        os.execve(sys.executable, argv, {"TERM": os.environ.get("TERM", "dumb")})
    except BaseException as e:  # noqa: BLE001 - a forked child must never return
        try:
            os.write(2, f"knot[{argv[4]}]: spawn: {e}\n".encode(errors="replace"))
        finally:
            os._exit(EXIT_SETUP_FAILED)


@functools.cache
def _argv_area() -> tuple[int, int]:
    """This process's argv area (arg_start, arg_end: /proc/self/stat fields 48, 49).

    Read in the spawner, once: a forked child has the same addresses.
    """
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[45]), int(fields[46])


def _show_as_knot(name: str, area: tuple[int, int]) -> None:
    """Best effort: /proc/self/cmdline reads `lithos_knot --name NAME` (pgrep -f, lithos_ps).

    The forked knot still has its spawner's argv area until it execs the native
    init; the name is written over it in place (as setproctitle does) when it fits.
    PR_SET_MM would need CAP_SYS_RESOURCE. broker.children does not rely on this:
    it also knows a forked knot by its comm, KNOT_COMM.
    """
    start, end = area
    text = b"lithos_knot\0--name\0" + name.encode() + b"\0"
    if 0 < start < end and len(text) <= end - start:
        ctypes.memmove(start, text.ljust(end - start, b"\0"), end - start)


def _forked_child(spec: KnotSpec, fds: Mapping[int, int], log_no: int | None,
                  status_no: int | None, native_init: str, parent_pidfd: int,
                  pdeathsig: bool, go_r: int, argv_area: tuple[int, int],
                  netns_fd: int | None, sandbox_log: tuple[int | None, str] | None) -> None:
    """The knot forked without exec: forget the spawner, set up, exec the native init."""
    from knot import main as knot_main  # spawn_knot imported it before the fork

    try:
        gc.disable()  # a few ms to live: a collection would only copy the spawner's pages
        # The spawner's signal plumbing is not ours: its Python handlers would run
        # its code here. SIGTERM, SIGINT and SIGCHLD stay blocked (K-40).
        signal.set_wakeup_fd(-1)
        for signo in range(1, signal.NSIG):
            if callable(signal.getsignal(signo)):
                signal.signal(signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, _BLOCKED)
        linux.prctl(linux.PR_SET_NAME, ctypes.addressof(_COMM))
        _show_as_knot(spec.name, argv_area)
        if pdeathsig:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if select.select([parent_pidfd], [], [], 0)[0]:
                os._exit(EXIT_SETUP_FAILED)
        if netns_fd is not None:  # bridged (K-30): the netns the broker prepared
            linux.setns(netns_fd, linux.CLONE_NEWNET)
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC)
        _wait_go(go_r)
        _place_fds(fds)  # the spawner's sockets, pipes and pidfds: all closed
        os.chdir("/")
        if sandbox_log is not None:  # as the exec'd knot's --sandbox-log-fd/--sandbox-log
            knot_main.use_sandbox_log(spec.name, str(sandbox_log[0]), sandbox_log[1])
        knot_main.run(spec, log_no, status_no, native_init, python_pid1=False)
    except BaseException as e:  # noqa: BLE001 - a forked child must never return
        try:
            os.write(2, f"knot[{spec.name}]: spawn: {e!r}\n".encode(errors="replace"))
        finally:
            os._exit(EXIT_SETUP_FAILED)
    os._exit(EXIT_SETUP_FAILED)  # run() returns only from a Python pid 1


_COMM = ctypes.create_string_buffer(KNOT_COMM)


def spawn_mode(native_init: str | None) -> str:
    """How to start a knot: "spawn" (posix_spawn of the native init, which runs the
    setup itself), "fork" (fork without exec, the setup in Python, then exec the
    native init) or "exec" (exec `python3 -m knot.lithos_knot`).

    Without a native init: exec (a forked Python pid 1 would keep the spawner's
    heap). LITHOS_KNOT_SPAWN picks among the three, else spawn; fork only when
    single-threaded (a fork copies one thread and the others' locks).
    """
    wanted = os.environ.get(SPAWN_ENV, "spawn")
    if native_init is None or wanted == "exec":
        return "exec"
    if wanted == "fork":
        return "fork" if _single_threaded() else "exec"
    return "spawn"


def spawnable(spec: KnotSpec) -> bool:
    """Whether the spawner may build this knot's plan itself (mode "spawn").

    Not with secrets: the plaintext must never be in the spawner's memory (issue 11,
    tests/security/test_secrets.py). Not with public-hostname: its DNS lookup could
    block the broker's loop for seconds. A forked knot does both in its own process.
    """
    return spec.secrets is None and not spec.hosts_file.public_hostname


def _single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def fork_wanted(native_init: str | None) -> bool:
    """Whether the knot starts without an exec'd interpreter (spawn or fork)."""
    return spawn_mode(native_init) != "exec"


AUTO = "auto"


def spawn_knot(spec: KnotSpec, *, inherited_fds: Mapping[int, int], stdin: int, stdout: int,
               stderr: int, stdio_log: int | None = None, pdeathsig: bool = True,
               status_fd: int | None = None,
               native_init: str | os.PathLike[str] | None = AUTO,
               netns_fd: int | None = None,
               sandbox_log: tuple[int, str] | None = None,
               fork: bool | None = None,
               before_setup: Callable[[int], None] | None = None) -> int:
    """Starts the knot for `spec`; returns its pid as the caller sees it.

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
    fork: True forks the knot without exec (it runs knot.main.run() in the child,
    then execs the native init: needs one); False execs `python3 -m
    knot.lithos_knot`; None (default) decides with spawn_mode(): with a native
    init, posix_spawn it and let it run the setup (knot.nativespawn).
    before_setup(pid) runs in the caller while the knot waits, before it execs or
    sets anything up (so before the service exists): to put it in its cgroup (T-51).
    If it raises, the knot is killed and reaped and the exception propagates.
    Raises: ValueError if inherited_fds does not match spec.tcp_fds, or fork=True
    without a native init; OSError.
    """
    if sorted(inherited_fds) != sorted(spec.tcp_fds):
        raise ValueError(f"{spec.name}: inherited fds {sorted(inherited_fds)} do not match "
                         f"tcp fds {sorted(spec.tcp_fds)}")
    if native_init == AUTO:
        native_init = initbin.choose()
    init = None if native_init is None else os.fspath(native_init)
    if fork is None:
        mode = spawn_mode(init)
        if mode == "spawn" and init is not None and not os.access(init, os.X_OK):
            mode = "exec"  # that knot fails as it always did: `open native init: ...`, 78
        if mode == "spawn" and not spawnable(spec):
            mode = "fork" if _single_threaded() else "exec"
    elif fork and init is None:
        raise ValueError(f"{spec.name}: a forked knot needs the native init")
    else:
        mode = "fork" if fork else "exec"
    fork = mode == "fork"
    if fork:  # knot.main, service, caps: imported by the first forked knot's spawner
        import knot.main  # noqa: F401 - once here, not in every child after its fork
    fds = {0: stdin, 1: stdout, 2: stderr, **inherited_fds}
    spec_no = max(fds) + 1  # the exec'd knot's spec; a forked one has the spec object
    log_no = spec_no + 1 if stdio_log is not None else None
    status_no = max(spec_no, log_no or 0) + 1 if status_fd is not None else None
    if mode == "spawn" and init is not None:
        if stdio_log is not None and log_no is not None:
            fds[log_no] = stdio_log
        if status_fd is not None and status_no is not None:
            fds[status_no] = status_fd
        placed_log = None if sandbox_log is None else (
            sandbox_log[0], max(max(fds), spec_no) + 1, sandbox_log[1])
        return nativespawn.spawn_native(spec, init, fds, log_no, status_no,
                                        pdeathsig=pdeathsig, netns_fd=netns_fd,
                                        sandbox_log=placed_log, before_setup=before_setup)
    spec_fd = own_pidns = pidfd = go_r = go_w = -1
    argv_area = _argv_area() if fork else (0, 0)
    try:
        if before_setup is not None:
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
        if not fork:
            fds[spec_no] = spec_fd = _spec_memfd(spec)
        if stdio_log is not None and log_no is not None:
            fds[log_no] = stdio_log
        if status_fd is not None and status_no is not None:
            fds[status_no] = status_fd
        argv = knot_argv(spec.name, spec_no, log_no, status_no)
        slog_no: int | None = None
        if sandbox_log is not None:  # the sandbox log (protocol.sandboxlog)
            slog_no = max(max(fds), spec_no) + 1
            fds[slog_no] = sandbox_log[0]
            argv += ["--sandbox-log-fd", str(slog_no), "--sandbox-log", sandbox_log[1]]
        if init is not None:
            argv += ["--init", init]
        pidfd = os.pidfd_open(os.getpid())
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # Blocked across the fork too: a SIGTERM between fork and exec would be
        # dropped, the child being a namespace init with SIG_DFL (K-40).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                if go_w >= 0:  # ours to write: kept, the spawner's death would not be EOF
                    os.close(go_w)
                if fork and init is not None:
                    slog = None if sandbox_log is None else (slog_no, sandbox_log[1])
                    _forked_child(spec, fds, log_no, status_no, init, pidfd, pdeathsig, go_r,
                                  argv_area, netns_fd, slog)
                _child(argv, fds, pidfd, pdeathsig, netns_fd, go_r)
        finally:
            # Children we fork later (and the broker's other work) stay in our namespace.
            linux.setns(own_pidns, linux.CLONE_NEWPID)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if before_setup is not None:
            try:
                before_setup(pid)
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
            os.write(go_w, b"g")
        return pid
    finally:
        for fd in (spec_fd, own_pidns, pidfd, go_r, go_w):
            if fd >= 0:
                os.close(fd)


def _wait_go(go_r: int) -> None:
    """In the child: until the spawner's before_setup is done (one byte; EOF: it died)."""
    if go_r >= 0 and os.read(go_r, 1) != b"g":
        os._exit(EXIT_SETUP_FAILED)
