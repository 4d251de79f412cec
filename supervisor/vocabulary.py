"""The supervisor's log vocabulary: every lifecycle line's wording lives here.

e2e tests assert on these lines (STYLE P12), so the wording is an interface:
change it only together with docs/supervisor.md. Lines are returned as data
(`LogLine`: a logging level, a %-style format and its args); main.py passes
them to `log.log(line.level, line.fmt, *line.args)`. Pure: no I/O.

Shapes:
  <instance>: <OLD> -> <NEW> (<detail>)          one per transition
  <instance>: <STATE>: <note>                    an event inside one state
"""

from __future__ import annotations

import logging

from protocol.structs import dataclass
from supervisor.events import ExitStatus, Outcome

TRANSITION = "%s: %s -> %s (%s)"
NOTE = "%s: %s: %s"

# details of transitions (the part in parentheses)
START_REQUESTED = "start requested"
RESTARTING = "restart-timeout passed"
STARTED = "pid %d"
ADOPTED = "adopted pid %d from the broker"
REFUSED = "start refused: %s; config problem"
LOST = "start request lost: %s"
RETIRE = "%s; SIGTERM to pid %d, kill-timeout %ss"
RETIRE_TERM_ALREADY_SENT = "%s; pid %d already got SIGTERM, kill-timeout %ss"
RETIRE_PENDING = "%s; SIGTERM once the broker reports the pid"
RETIRE_NO_PROCESS = "%s; no process"
UPGRADE = "%s; SIGTERM to pid %d, kill-timeout %ss"
UPGRADE_PENDING = "%s; SIGTERM once the broker reports the pid"
UNRETIRE = "wanted again; restart after the exit"
CANCEL_UPGRADE = "%s; no restart after the exit"
EXITED = "pid %d %s, %s"
RESTART_IN = "restart in %ss, restart-timeout %ss"
RESTART_NOW = "restart now, restart-timeout %ss"
STOPPED_DONE = "pid %d %s, %s; retired"

# notes (inside one state)
ESCALATE = "still alive %ss after SIGTERM (kill-timeout %ss + grace %ss), sending SIGKILL"
SIGTERM_ON_ACK = "pid %d started after SIGTERM was wanted, sending SIGTERM"
RETUNED = "%s"


OUTCOME_WORDS = {
    Outcome.NORMAL: "normal",
    Outcome.TERMINATED: "after SIGTERM",
    Outcome.CRASHED: "unexpected",
    Outcome.KILLED: "unexpected",
    Outcome.KILL_TIMEOUT: "kill-timeout expired",
    Outcome.SETUP_FAILED: "setup failed (config problem)",
    Outcome.VANISHED: "unexpected",
    Outcome.REFUSED: "start refused (config problem)",
    Outcome.LOST: "start request lost",
}


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log record as data: `log.log(level, fmt, *args)`."""

    level: int
    fmt: str
    args: tuple[object, ...]

    def __str__(self) -> str:
        return self.fmt % self.args


def seconds(value: float) -> str:
    """`1`, `0.8`, `2.5`: seconds as the configs spell them, to the millisecond."""
    return f"{round(value, 3):g}"


def transition(level: int, name: str, old: str, new: str, detail: str) -> LogLine:
    return LogLine(level, TRANSITION, (name, old, new, detail))


def note(level: int, name: str, state: str, text: str) -> LogLine:
    return LogLine(level, NOTE, (name, state, text))


def exit_detail(pid: int, status: ExitStatus, outcome: Outcome) -> str:
    """`pid 4121 exited with code 1, unexpected`."""
    return EXITED % (pid, status.describe(), OUTCOME_WORDS[outcome])


def restart_detail(delay_s: float, restart_timeout_s: float) -> str:
    """`restart in 0.8s, restart-timeout 1s`, or `restart now, ...` when due."""
    if delay_s <= 0:
        return RESTART_NOW % seconds(restart_timeout_s)
    return RESTART_IN % (seconds(delay_s), seconds(restart_timeout_s))


def exit_level(outcome: Outcome) -> int:
    """info for expected exits, warning for the rest (P12)."""
    if outcome in (Outcome.NORMAL, Outcome.TERMINATED, Outcome.LOST):
        return logging.INFO
    return logging.WARNING
