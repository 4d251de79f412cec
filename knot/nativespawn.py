"""spawn_native: start a knot as the native pid 1 (knot/init.c) directly, with posix_spawn.

Owns the default way a knot starts when the native init is available (issue #10
item 1; docs/knot.md, "Spawned straight into the native init"). The spawner does
the host-side part of the setup and builds the rest as data (knot.plan); init.c
runs it in the new namespaces, then does its pid-1 duties. Nothing Python runs
in the knot at all: glibc's posix_spawn is clone(CLONE_VM|CLONE_VFORK) + execve,
so no page tables are copied and no forked image is torn down.

Order (the child waits on the go pipe before reading anything):
  1. unshare(CLONE_NEWPID), posix_spawn(init), setns() back (knot.spawn's way:
     the caller stays the knot's parent; only this child lands in the new pid ns).
     Signal mask SIGTERM/SIGINT/SIGCHLD blocked (K-40), every other signal to
     SIG_DFL (exec keeps SIG_IGN), environment TERM only (T-50), the fds placed by
     POSIX_SPAWN_DUP2, each from above every target (a copy when the fd was not:
     a dup2 onto its own number would keep CLOEXEC on some glibc); init.c closes
     everything else.
  2. before_setup(pid): the broker puts the knot in its cgroup (T-51). If it
     raises, the knot is killed and reaped and the error propagates.
  3. "Starting container" in the sandbox log (K-12); knot.plan.build() (the state
     dir, resolv.conf, hosts, volume dirs: on the host, here; a spec with secrets
     or public-hostname is never spawned this way, knot.spawn forks it: the plaintext
     must not be in the spawner's memory, tests/security/test_secrets.py, and a DNS
     lookup must not block the broker); the
     description (knot.initdesc, with the ops) to the memfd; the go byte.
  4. init.c: pdeathsig + "is the spawner alive" (its pidfd), setns to the bridged
     netns (K-30), unshare mount/uts/ipc, close_range, the ops, then the service.
Rules: the caller's state is never touched but for the pid ns switch (setns back
in a finally); every fd made here is closed here.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable, Mapping

from knot import initdesc, linux, plan
from knot.spec import KnotSpec
from protocol import sandboxlog

_BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
# To SIG_DFL in the child: Python ignores SIGPIPE and SIGXFSZ, a caller may ignore others.
_DEFAULTED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _placements(targets: Mapping[int, int]) -> tuple[list[tuple[int, int, int]], list[int]]:
    """POSIX_SPAWN_DUP2 actions putting fd `source` at `target`; and the copies made.

    A source at or below the highest target is first copied (CLOEXEC) above every
    fd involved, so that no dup2 clobbers a source still to be placed, and none is
    a dup2 onto its own number; one above every target is placed as it is (no dup2
    can clobber it, nor is any onto itself): two syscalls less per fd on every start.
    """
    high = max(targets)
    top = max(high, *targets.values()) + 1
    copies: list[int] = []
    actions = []
    try:
        for target, source in targets.items():
            if source <= high:
                copies.append(fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, top))
                source = copies[-1]
            actions.append((os.POSIX_SPAWN_DUP2, source, target))
    except BaseException:
        for fd in copies:
            os.close(fd)
        raise
    return actions, copies


def spawn_native(spec: KnotSpec, init: str, fds: Mapping[int, int], log_no: int | None,
                 status_no: int | None, *, pdeathsig: bool, netns_fd: int | None,
                 sandbox_log: tuple[int, int, str] | None,
                 before_setup: Callable[[int], None] | None) -> int:
    """Starts init.c as the knot of `spec`; returns its pid (our child).

    fds maps the knot's fd numbers to ours (0-2, the tcp fds, the stdio log at
    log_no, the status pipe at status_no); sandbox_log is (our fd, its number in
    the knot, settings). Raises OSError (posix_spawn, pipes) or what before_setup raised.
    """
    if spec.secrets is not None or spec.hosts_file.public_hostname:  # knot.spawn.spawnable
        raise ValueError(f"{spec.name}: secrets and public-hostname are never handled in the "
                         "spawner")
    targets = dict(fds)
    slog: sandboxlog.SandboxLog | None = None
    slog_no = -1
    if sandbox_log is not None:
        slog = sandboxlog.SandboxLog.from_arg(sandbox_log[2])
        slog_no = sandbox_log[1]
        targets[slog_no] = sandbox_log[0]
    nxt = max(targets) + 1
    desc_no, go_no = nxt, nxt + 1
    pidfd_no = go_no + 1 if pdeathsig else -1
    netns_no = max(go_no, pidfd_no) + 1 if netns_fd is not None else -1
    desc_fd = go_r = go_w = pidfd = own_pidns = -1
    copies: list[int] = []
    try:
        desc_fd = os.memfd_create("lithos-init", os.MFD_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        targets[desc_no], targets[go_no] = desc_fd, go_r
        if pdeathsig:
            targets[pidfd_no] = pidfd = os.pidfd_open(os.getpid())
        if netns_fd is not None:
            targets[netns_no] = netns_fd
        actions, copies = _placements(targets)
        argv = ["lithos_knot", "--name", spec.name, "--init-fd", str(desc_no),
                "--go-fd", str(go_no)]
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.posix_spawn(init, argv, {"TERM": os.environ.get("TERM", "dumb")},
                                 file_actions=actions, setsigmask=_BLOCKED,
                                 setsigdef=_DEFAULTED)
        finally:
            # Children we start later (and the caller's other work) stay in our namespace.
            linux.setns(own_pidns, linux.CLONE_NEWPID)
        for fd in (*copies, go_r, pidfd, own_pidns):
            if fd >= 0:
                os.close(fd)
        copies, go_r, pidfd, own_pidns = [], -1, -1, -1
        try:
            if before_setup is not None:
                before_setup(pid)
            writer = None if slog is None or sandbox_log is None else \
                sandboxlog.Writer(sandbox_log[0], slog, pid)
            if writer is not None:
                writer.write(sandboxlog.INFO, f"[{spec.name}] Starting container")  # K-12
            try:
                ops, environ = plan.build(spec)
            except Exception as e:  # noqa: BLE001 - a bug here: the knot fails, as a forked one
                ops, environ = plan.failed("spawn", repr(e)), {}
            knot_writer = None if writer is None else sandboxlog.Writer(slog_no, writer.log,
                                                                        pid)
            desc = initdesc.from_spec(spec, environ, log_no, status_no, knot_writer,
                                      pdeathsig=pdeathsig, parent_pidfd=pidfd_no,
                                      netns_fd=netns_no, unshare=True, ops=tuple(ops))
            _write_all(desc_fd, initdesc.encode(desc))
            os.write(go_w, b"g")
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        return pid
    finally:
        for fd in (*copies, desc_fd, go_r, go_w, pidfd, own_pidns):
            if fd >= 0:
                os.close(fd)
