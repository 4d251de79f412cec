"""Re-executing lithos_tree in place (T-1, E-17): same pid, children kept.

Owns the hand-over: what the old broker image must tell the new one that the
kernel does not keep for us. Children stay children across execve (same pid) and
are found again from their records (broker/children.py); listening sockets stay
open because their CLOEXEC flag is cleared just before exec; everything else
(which fd is which address, exits not yet delivered to a supervisor) travels in
a sealed memfd whose number is in LITHOS_RESUME_FD. Rules: nothing here decides
anything; a resume state that cannot be read is logged and ignored (the new
broker then recovers from /proc and the records alone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any, NoReturn

from protocol import failpoints

log = logging.getLogger(__name__)

RESUME_ENV = "LITHOS_RESUME_FD"
_MAX_STATE_BYTES = 64 * 1024 * 1024


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
