"""Re-executing lithos_tree in place (T-1, E-17): same pid, children kept.

Owns the hand-over: what the old broker image must tell the new one that the
kernel does not keep for us, and its order (`reexec`: the supervisor's last
requests are carried out, its stderr drained, every peer closed, the handled
signals blocked across the exec). Children stay children across execve (same
pid) and are found again from their records (broker/children.py); listening
sockets stay open because their CLOEXEC flag is cleared just before exec;
everything else (which fd is which address, exits not yet delivered to a
supervisor) travels in a sealed memfd whose number is in LITHOS_RESUME_FD.
Rules: nothing here decides when to re-exec (a signal does); a resume state
that cannot be read is logged and ignored (the new broker then recovers from
/proc and the records alone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict

from broker import supervision
from protocol import failpoints

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from broker.server import Broker

log = logging.getLogger(__name__)

REEXEC_SIGNALS = (signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Every signal the broker's loop handles; blocked across a re-exec (see reexec()).
HANDLED_SIGNALS = (*REEXEC_SIGNALS, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)

RESUME_ENV = "LITHOS_RESUME_FD"
_MAX_STATE_BYTES = 64 * 1024 * 1024


def reexec(b: Broker) -> None:
    """T-1, E-17: exec ourselves in place; children and sockets are kept."""
    log.warning("re-executing lithos_tree (pid %d stays)", os.getpid())
    sup_pid = b.supervisor_pid
    if b.supervisor is not None:
        supervision.last_requests(b, b.supervisor.channel.fileno())
    for relay in b.relays.values():
        relay.drain()  # what the supervisor said up to now (its pipe closes at exec)
    for fd in list(b.peers):
        b._drop_peer(fd)  # the supervisor sees EOF and exits; a new one comes
    if b.control is not None:
        b.control.close()
    b.ports.prepare_for_exec()
    state = {
        "ports": b.ports.export(),
        "pending_exits": [asdict(e) for e in b.pending],
        "supervisor_pid": sup_pid,
        # Our own children only (not the orphans of a killed broker, watched
        # through pidfds): they stay ours across the exec (children.py).
        "children": [c.to_json() for c in b.children if c.orphan_pidfd < 0],
        "started_at_wall": b.options.started_at_wall,
    }
    # The mask survives execve: a signal that comes before the new image has
    # its handlers stays pending instead of killing us by its default action
    # (SIGQUIT's is to dump core). Broker.start() unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    b.loop.close()
    failpoints.hit("broker.reexec.before_exec")
    try:
        exec_self(state, keep_fds=[])
    except OSError as e:  # pragma: no cover - exec of our own interpreter failed
        log.error("re-exec failed: %s; carrying on", e)
        b.ports.exec_failed()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def exec_self(state: dict[str, Any], keep_fds: list[int]) -> NoReturn:
    """Replaces this process image with a fresh lithos_tree carrying `state`."""
    fd = os.memfd_create("lithos-resume", os.MFD_ALLOW_SEALING)
    data = json.dumps(state).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    for kept in [fd, *keep_fds]:
        os.set_inheritable(kept, True)
    env = dict(os.environ)
    env[RESUME_ENV] = str(fd)
    if armed := failpoints.pending("broker."):  # fired ones are not armed again
        env[failpoints.ENV] = armed
    # sys.orig_argv is the interpreter's own argv: [python, script-or--m, args...]
    argv = [sys.executable, *sys.orig_argv[1:]]
    os.execve(sys.executable, argv, env)


def take_resume_state() -> dict[str, Any] | None:
    """Reads and closes the state left by `exec_self`, if this is a re-exec."""
    value = os.environ.pop(RESUME_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
    except ValueError:
        log.warning("%s=%r is not an fd number; ignoring resume state", RESUME_ENV, value)
        return None
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > _MAX_STATE_BYTES:
                raise ValueError("resume state too large")
            chunks.append(chunk)
        state = json.loads(b"".join(chunks))
        if not isinstance(state, dict):
            raise ValueError("resume state is not a mapping")
        return state
    except (OSError, ValueError) as e:
        log.warning("resume state fd %d unreadable (%s); recovering from /proc", fd, e)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
