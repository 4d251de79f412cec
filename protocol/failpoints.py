"""Failpoints: named places in the broker and the supervisor where a test can crash them.

Owns the table of every point (POINTS: `<process>.<operation>.<moment>` -> what
has been done and what not yet when it fires), the parsing of LITHOS_FAILPOINTS and
`hit(name)`, which daemon code calls at each point. docs/reliability.md lists the
points and what the test of each shows (tests/chaos/test_failpoints.py).

    LITHOS_FAILPOINTS="broker.start.after_spawn=kill,supervisor.start.after_reply=exit@2"

An action is `kill` (SIGKILL to this process: nothing after it runs, no finally,
no flush) or `exit` (os._exit(EXIT_CODE)), optionally `@N`: fire on the N-th hit
(default the first). Rules:
- `hit` is a no-op costing one truth test of an empty dict unless something is armed.
- The variable is read once, by `arm_from_environ()` at the start of a process,
  and removed from os.environ: nothing a process starts inherits it by accident.
- A point fires at most once per arming, so nothing crash-loops: lithos_tree hands
  the `supervisor.*` points to the first supervisor it starts only (a restarted one
  is not armed), and a re-exec passes on only the `broker.*` points that have not
  fired yet, with their remaining count (`pending("broker.")`).
- An unknown point or action is a FailpointError naming the variable, the item
  and what would be accepted; the process refuses to start (STYLE P8).
"""

from __future__ import annotations

import os
import signal
from collections.abc import MutableMapping

from protocol.structs import dataclass

ENV = "LITHOS_FAILPOINTS"
EXIT_CODE = 86
ACTIONS = ("kill", "exit")

POINTS: dict[str, str] = {
    "broker.start.after_sockets": "listening sockets bound; no cgroup, state dir or knot yet",
    "broker.start.after_cgroup": "cgroup parents made (a reused group limited); no knot yet",
    "broker.start.before_go": "native init spawned, waiting on its go pipe; no description, "
                              "no go byte",
    "broker.start.after_spawn": "knot forked and in its cgroup; its child record not written",
    "broker.start.after_record": "child record written; StartInstanceOk not sent",
    "broker.reap.after_wait": "knot reaped (waitpid or pidfd); record, cgroup, state dir kept",
    "broker.reap.after_cleanup": "sockets released, cgroup and state dir removed; record kept",
    "broker.reap.before_report": "record removed; InstanceExited not sent nor queued",
    "broker.reexec.before_exec": "peers closed, sockets made inheritable; execve not called",
    "broker.reexec.after_exec": "new image running; resume state read, children not recovered",
    "supervisor.start.after_request": "StartInstance sent; its reply not read",
    "supervisor.start.after_reply": "StartInstanceOk read; instance state not updated",
    "supervisor.exit.before_restart": "InstanceExited read; state not updated, no restart asked",
    "supervisor.metrics.during_publish": "metrics.meta written; metrics.values and .prom not",
}


class FailpointError(ValueError):
    """LITHOS_FAILPOINTS names an unknown point or action."""


@dataclass(slots=True)
class _Armed:
    """One armed failpoint: its action and hits left before it fires."""

    action: str
    count: int  # fires when this reaches 1 at a hit


_armed: dict[str, _Armed] = {}


def parse(text: str) -> dict[str, tuple[str, int]]:
    """`name=action[@N],...` -> {name: (action, N)}. Raises: FailpointError."""
    out: dict[str, tuple[str, int]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, spec = item.partition("=")
        action, at, count_text = spec.partition("@")
        if not sep or name not in POINTS:
            raise FailpointError(f"{ENV}: {item!r}: expected <point>=<action>[@N] with a point "
                                 f"among {', '.join(POINTS)}")  # fmt: skip
        if action not in ACTIONS:
            raise FailpointError(f"{ENV}: {item!r}: action {action!r} is not one of "
                                 f"{', '.join(ACTIONS)}")  # fmt: skip
        count = 1
        if at:
            if not count_text.isdigit() or int(count_text) < 1:
                raise FailpointError(f"{ENV}: {item!r}: @{count_text} must be a positive "
                                     "hit number, e.g. kill@3")  # fmt: skip
            count = int(count_text)
        out[name] = (action, count)
    return out


def arm(text: str) -> None:
    """Replaces what is armed with `text` (LITHOS_FAILPOINTS syntax). Raises: FailpointError."""
    parsed = parse(text)
    _armed.clear()
    _armed.update((name, _Armed(action, count)) for name, (action, count) in parsed.items())


def arm_from_environ(environ: MutableMapping[str, str] | None = None) -> None:
    """Reads (and removes) LITHOS_FAILPOINTS once, at start. Raises: FailpointError."""
    env = os.environ if environ is None else environ
    arm(env.pop(ENV, ""))


def pending(prefix: str) -> str:
    """The armed points under `prefix` that have not fired, as a LITHOS_FAILPOINTS value."""
    return ",".join(f"{name}={a.action}@{a.count}" for name, a in _armed.items()
                    if name.startswith(prefix))  # fmt: skip


def hand_over(prefix: str) -> str:
    """Like `pending`, and disarms them here: they go to one other process only."""
    text = pending(prefix)
    for name in [n for n in _armed if n.startswith(prefix)]:
        del _armed[name]
    return text


def hit(name: str) -> None:
    """Point `name` is reached: fire if armed and this is its hit (see the module doc)."""
    if _armed:
        _fire(name)


def _fire(name: str) -> None:
    armed = _armed.get(name)
    if armed is None:
        return
    if armed.count > 1:
        armed.count -= 1
        return
    del _armed[name]
    os.write(2, f"failpoint {name}: {armed.action}\n".encode())
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_CODE)
