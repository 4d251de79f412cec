"""Shutting lithos_tree down: SIGTERM (stop every container) and SIGINT.

Owns the shutdown sequence (T-38, T-39): the supervisor gets SIGTERM; on
SIGTERM the knots get it too (on SIGINT the terminal already signalled them),
and stragglers get SIGKILL after the longest kill-timeout plus a margin; the
loop stops once no child and no supervisor is left. Rules: knots enforce
kill-timeout themselves (K-41), the SIGKILL here is only the backstop;
shutting_down, once set, is never cleared (no start is accepted and no
supervisor started after it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)


def shutdown(b: Broker, *, signal_children: bool) -> None:
    """T-38 (SIGTERM: stop every container) and T-39 (SIGINT: the terminal did)."""
    if not b.shutting_down:
        log.warning("shutting down (%d containers)", len(b.children))
    b.shutting_down = True
    if b.supervisor_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(b.supervisor_pid, signal.SIGTERM)
    if signal_children:
        longest = 0.0
        for child in b.children:
            longest = max(longest, child.kill_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        # Knots enforce kill-timeout themselves (K-41); this is the backstop.
        b.loop.call_later(longest + 5.0, lambda: _kill_stragglers(b))
    maybe_finish(b)


def _kill_stragglers(b: Broker) -> None:
    for child in b.children:
        log.warning("%s: still alive after kill-timeout; SIGKILL", child.instance)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)


def maybe_finish(b: Broker) -> None:
    """Stops the loop when shutting down and no child nor supervisor is left."""
    if b.shutting_down and len(b.children) == 0 and b.supervisor_pid is None:
        b.loop.stop()
