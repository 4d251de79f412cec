"""The supervisor's life, as the broker sees it: started, restarted, waited for.

Owns the supervisor process and the Broker attributes that describe it
(supervisor_pid, old_supervisor_pid, supervisor_started, supervisor_failures,
supervisor_leaving, relays: set in Broker.__init__, changed only here, but for
the relays closed by Broker.close()); its peer (Broker.supervisor) is made
here and then served by the dispatcher like any other. Rules:
- it runs as supervisor-user, its stderr relayed into our log (broker/logrelay.py);
- a dead one is restarted after SUPERVISOR_BACKOFF_S (the first restart is
  immediate; a life of SUPERVISOR_STABLE_S resets the back-off), never while
  shutting down;
- after a re-exec, the previous one is waited for (it publishes its last
  metrics, X-M6) before a new one starts, and SIGKILLed if it is late;
- what a supervisor sent before it died or before a re-exec is carried out;
- while it is leaving (reload), exits wait in `pending` for the next one.
Nothing here decides when to start or stop an instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time

from broker import published, shutdown
from broker.daemon import spawn_supervisor
from broker.logrelay import LogRelay
from broker.peers import Peer
from protocol.channel import Channel
from protocol.records import Role

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)

# The first restart is immediate (a supervisor that lived SUPERVISOR_STABLE_S had
# no crash loop; containers go unsupervised until its successor is ready).
SUPERVISOR_BACKOFF_S = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
SUPERVISOR_STABLE_S = 10.0  # a supervisor that lived this long resets the back-off
REEXEC_DRAIN_S = 5.0  # at most this long a re-exec waits for the supervisor's last requests


def start_or_wait(b: Broker) -> None:
    """At start-up: a new supervisor, or (after a re-exec) first the previous one's exit."""
    if b.old_supervisor_pid is None:
        start_supervisor(b)
    else:
        # It saw its channel close at the exec; it handles what it had read,
        # publishes its metrics and exits. A new one started meanwhile would read
        # the metric files before that last publish and overwrite it (X-M6).
        log.info("waiting for the previous supervisor (pid %d) to exit",
                 b.old_supervisor_pid)  # fmt: skip
        b.loop.call_later(SUPERVISOR_STABLE_S, lambda: _previous_supervisor_late(b))


def last_requests(b: Broker, fd: int) -> None:
    """Before a re-exec: the supervisor's last requests are carried out, not dropped.

    Our side of its channel is shut for writing: it sees the end, handles the
    events it had read (their Spawns are counted as started, X-M6) and exits; its
    requests are read until then. Bounded by REEXEC_DRAIN_S (a stuck supervisor
    must not stop the re-exec).
    """
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + REEXEC_DRAIN_S
    while fd in b.peers and (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            log.warning("re-exec: the supervisor did not finish in %.0fs", REEXEC_DRAIN_S)
            return
        b._on_readable(fd)


def _previous_supervisor_late(b: Broker) -> None:
    if b.old_supervisor_pid is not None:
        log.warning("previous supervisor (pid %d) still runs after %.0fs; killing it",
                    b.old_supervisor_pid, SUPERVISOR_STABLE_S)  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.kill(b.old_supervisor_pid, signal.SIGKILL)


def start_supervisor(b: Broker) -> None:
    """Starts the supervisor as supervisor-user, unless one runs or we shut down."""
    if b.shutting_down or b.supervisor is not None or b.supervisor_pid is not None:
        return
    b.supervisor_leaving = False
    # Its stderr is a pipe we relay into our own log (broker/logrelay.py): it may
    # not open master.log itself, and our handlers know rotation and syslog.
    relay_r, relay_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid, sock = spawn_supervisor(
            b.options.supervisor_account,
            b.options.master_path,
            b.options.supervisor_args,
            relay_w,
            b.options.supervisor_env,
        )
    except BaseException:
        os.close(relay_r)
        raise
    finally:
        os.close(relay_w)
    _add_relay(b, LogRelay(relay_r, pid))
    channel = Channel(sock)
    channel.setblocking(False)
    b.supervisor_pid = pid
    b.supervisor_started = time.monotonic()
    b.supervisor = Peer(channel, Role.SUPERVISOR, b.options.supervisor_account.uid)
    b._add_peer(b.supervisor)
    log.info("supervisor started (pid %d, user %s)", pid, b.options.supervisor_account.name)


def _add_relay(b: Broker, relay: LogRelay) -> None:
    fd = relay.fd
    b.relays[fd] = relay

    def readable() -> None:
        if not relay.on_readable():  # EOF: that supervisor is gone
            b.loop.remove_reader(fd)
            b.relays.pop(fd, None)
            relay.close()

    b.loop.add_reader(fd, readable)


def reaped(b: Broker, pid: int, exit_code: int | None, signum: int | None) -> bool:
    """True if `pid` was a supervisor (this one or the one before a re-exec)."""
    if pid == b.old_supervisor_pid:
        log.info("previous supervisor (pid %d) exited", pid)
        b.old_supervisor_pid = None
        start_supervisor(b)
        return True
    if pid == b.supervisor_pid:
        what = f"exited with code {exit_code}" if signum is None else \
            f"killed by signal {signal.Signals(signum).name}"  # fmt: skip
        _supervisor_exited(b, what)
        return True
    return False


def _supervisor_exited(b: Broker, status: str) -> None:
    lived = time.monotonic() - b.supervisor_started
    b.supervisor_pid = None
    if b.supervisor is not None:
        # What it sent before it died was decided (and counted) by it: carry it out.
        b._on_readable(b.supervisor.channel.fileno())
    if b.supervisor is not None:
        b._drop_peer(b.supervisor.channel.fileno())
    if b.shutting_down:
        shutdown.maybe_finish(b)
        return
    if lived >= SUPERVISOR_STABLE_S:
        b.supervisor_failures = 0
    delay = SUPERVISOR_BACKOFF_S[min(b.supervisor_failures, len(SUPERVISOR_BACKOFF_S) - 1)]
    b.supervisor_failures += 1
    log.warning("supervisor %s after %.1fs; restarting in %.1fs", status, lived, delay)
    b.loop.call_later(delay, lambda: start_supervisor(b))


def reload(b: Broker) -> None:
    """Re-reads every config: a fresh supervisor does it and reconciles."""
    published.log_configs(b)
    if b.supervisor_pid is not None:
        log.info("reload: restarting the supervisor (pid %d)", b.supervisor_pid)
        b.supervisor_failures = 0
        # Exits from now on wait for the next one; it handles those already sent.
        b.supervisor_leaving = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(b.supervisor_pid, signal.SIGTERM)
    else:
        start_supervisor(b)
