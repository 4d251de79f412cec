"""A knot's exit, from waitpid (or its pidfd) to the supervisor's InstanceExited.

Owns reaping (SIGCHLD: a textbook waitpid loop; the supervisor's own exits go to
broker/supervision.py), the watch on orphans adopted through pidfds, and the
queue of exits not yet delivered (Broker.pending: kept across a re-exec, handed
over in the next supervisor's snapshot). Rules:
- what a knot leaves (sockets, cgroup, state dir) goes before its record, so a
  crash in between finds the record again and the next broker cleans up (E-30);
- an exit is sent at once only to a READY supervisor that is not leaving and
  when nothing waits before it; otherwise it is queued, in order;
- unknown pids are reaped and logged at debug level.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from broker import shutdown, starter, supervision
from broker.children import Child
from broker.peers import Phase
from broker.status import History
from protocol import failpoints
from protocol import messages as m
from protocol.errors import ChannelClosed
from protocol.records import LastExit, Pid, ResourceUsage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)


def watch_orphan(b: Broker, child: Child) -> None:
    """Watches an adopted knot (not our child) through its pidfd."""
    if child.orphan_pidfd < 0:
        return
    fd = child.orphan_pidfd
    b.loop.add_reader(fd, lambda: _orphan_exited(b, child.pid, fd))


def _orphan_exited(b: Broker, pid: int, fd: int) -> None:
    b.loop.remove_reader(fd)
    # Not our child: the status went to whoever adopted it; record an
    # abnormal exit (the knot's own death line is in the stdio log).
    log.warning("pid %d exited while not our child; exit status unknown", pid)
    _child_exited(b, pid, exit_code=2, signum=None, core=False, rusage=None)


def reap(b: Broker) -> None:
    """Reaps every exited child (SIGCHLD); a textbook waitpid loop."""
    while True:
        try:
            pid, status, rusage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        exit_code, signum = (code, None) if code >= 0 else (None, -code)
        core = os.WIFSIGNALED(status) and os.WCOREDUMP(status)
        if supervision.reaped(b, pid, exit_code, signum):
            continue
        usage = ResourceUsage(rusage.ru_utime, rusage.ru_stime, max(0, rusage.ru_maxrss))
        if b.children.by_pid(pid) is None:
            log.debug("Unknown process %d exited (%s)", pid, code)
            continue
        _child_exited(b, pid, exit_code, signum, core, usage)


def _child_exited(
    b: Broker,
    pid: int,
    exit_code: int | None,
    signum: int | None,
    core: bool,
    rusage: ResourceUsage | None,
) -> None:
    child = b.children.by_pid(pid)
    if child is None:
        return
    failpoints.hit("broker.reap.after_wait")
    # What it leaves goes before its record: a crash in between finds the
    # record again, and the next broker cleans up (E-30: no stale state dir).
    starter.clean_up(child, b.ports, b.cgroups)
    failpoints.hit("broker.reap.after_cleanup")
    b.children.remove(pid)
    run_time = max(0.0, time.monotonic() - child.started_mono)
    status = f"exited with code {exit_code}" if signum is None else \
        f"killed by signal {signal.Signals(signum).name}"  # fmt: skip
    log.info("Container %s (pid: %d) %s after %.1fs", child.instance, pid, status, run_time)
    b.history.setdefault(child.instance, History()).last_exit = LastExit(
        exit_code, signum, core, time.time()
    )
    event = m.InstanceExited(child.instance, Pid(pid), exit_code, signum, core,
                             rusage or ResourceUsage(0.0, 0.0, 0), run_time)  # fmt: skip
    failpoints.hit("broker.reap.before_report")
    sup = b.supervisor
    if sup is not None and sup.phase is Phase.READY and not b.pending and \
            not b.supervisor_leaving:  # fmt: skip
        try:
            b._send(sup, event, 0)
        except (OSError, ChannelClosed):
            b.pending.append(event)
    else:
        b.pending.append(event)
    if b.shutting_down:
        shutdown.maybe_finish(b)


def flush_pending(b: Broker) -> None:
    """Sends the queued exits, in order, while a READY supervisor takes them."""
    sup = b.supervisor
    while b.pending and sup is not None and sup.phase is Phase.READY and \
            not b.supervisor_leaving:  # fmt: skip
        try:
            b._send(sup, b.pending[0], 0)
        except (OSError, ChannelClosed):
            return
        b.pending.popleft()
