"""The vocabulary of the per-instance state machine: events in, actions out.

Owns the frozen event and action classes that `lifecycle.py` consumes and
produces, `ExitStatus`, and the rule that decides whether a knot's exit was a
failure (E-11, E-12, E-14, K-43, X-M8). These are the supervisor's own small
input types; main.py translates wire messages into them. Pure: imports none of
os, socket, time, subprocess. Times are `now: float` (monotonic seconds) and a
`deadline` is always an absolute monotonic time.

Rule: the knot already applied `normal-exit-codes` (K-42) and encodes its
verdict in its exit code, so the supervisor only reads the knot's code.
"""

from __future__ import annotations

import enum
import signal

from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NewType
else:  # typing stays out of the daemons (protocol/hints.py)
    from protocol.hints import NewType

Pid = NewType("Pid", int)

# Knot exit codes (K-43 and knot/exitcodes.py, which the lead wires in here).
EXIT_NORMAL = 0
EXIT_ABNORMAL = 2
EXIT_KILL_TIMEOUT = 3
EXIT_SETUP_FAILED = 78  # EX_CONFIG of sysexits.h: a setup step failed, the config is wrong


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What the configs want for one instance: the identity and its timings.

    `fingerprint` is compared for upgrades (T-30: the knot's identity JSON, P-2);
    the timeouts come from the container config (`restart-timeout`, `kill-timeout`).
    """

    fingerprint: str
    restart_timeout_s: float = 1.0
    kill_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.restart_timeout_s < 0:
            raise ValueError(f"restart-timeout: {self.restart_timeout_s} must be >= 0")
        if self.kill_timeout_s < 0:
            raise ValueError(f"kill-timeout: {self.kill_timeout_s} must be >= 0")


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a knot ended: an exit code, or a signal; both None means "vanished".

    `term_sent_by_us` is set by the caller when the broker's record says a SIGTERM
    was sent to this pid on our behalf (e.g. by a previous supervisor); the
    machine also remembers the SIGTERMs it sent itself.
    """

    code: int | None = None
    signal: int | None = None
    term_sent_by_us: bool = False

    def __post_init__(self) -> None:
        if self.code is not None and self.signal is not None:
            raise ValueError(f"exit status: both code {self.code} and signal {self.signal}")

    def describe(self) -> str:
        """`exited with code 1`, `killed by signal SIGKILL` (T-37 wording)."""
        if self.code is not None:
            return f"exited with code {self.code}"
        if self.signal is not None:
            return f"killed by signal {signal_name(self.signal)}"
        return "vanished (no exit status known)"


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15; `signal 64` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Outcome(enum.Enum):
    """Why an instance's process or start attempt ended; drives metrics and logs.

    vocabulary.OUTCOME_WORDS has the words each one is logged with.
    """

    NORMAL = "normal"  # knot exit 0 (K-42 said the death was normal)
    TERMINATED = "terminated"  # we sent SIGTERM: never a failure (E-12)
    CRASHED = "crashed"  # other non-zero knot code (2: abnormal death, 1: knot bug)
    KILLED = "killed"  # knot killed by a signal we did not send
    KILL_TIMEOUT = "kill-timeout"  # knot exit 3 (E-14), or our SIGKILL escalation
    SETUP_FAILED = "setup-failed"  # EXIT_SETUP_FAILED: a config problem
    VANISHED = "vanished"  # missing from the broker's snapshot with no exit record
    REFUSED = "refused"  # the broker refused the start: a config problem
    LOST = "lost"  # the start was never answered (reconnect)

    @property
    def is_failure(self) -> bool:
        """Counted in `failures` (X-M8, T-35); TERMINATED, NORMAL and LOST are not."""
        return self not in (Outcome.NORMAL, Outcome.TERMINATED, Outcome.LOST)

    @property
    def is_config_problem(self) -> bool:
        return self in (Outcome.SETUP_FAILED, Outcome.REFUSED)


def classify(
    status: ExitStatus,
    *,
    term_sent: bool,
    kill_sent: bool,
    setup_failed_code: int = EXIT_SETUP_FAILED,
) -> Outcome:
    """Decide what a knot's exit means (E-11, E-12, E-14, K-43, X-M8).

    After our SIGTERM any code is normal (E-12), except the knot's kill-timeout
    code 3 and our own SIGKILL escalation: the service hung, which E-14 counts.
    """
    we_terminated = term_sent or status.term_sent_by_us
    if status.code == EXIT_KILL_TIMEOUT:
        return Outcome.KILL_TIMEOUT
    if status.signal == signal.SIGKILL and kill_sent:
        return Outcome.KILL_TIMEOUT
    if we_terminated:
        return Outcome.TERMINATED
    if status.code == EXIT_NORMAL:
        return Outcome.NORMAL
    if status.code == setup_failed_code:
        return Outcome.SETUP_FAILED
    if status.code is not None:
        return Outcome.CRASHED
    if status.signal is not None:
        return Outcome.KILLED
    return Outcome.VANISHED


# ---- events: what happened to one instance -------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRequested:
    """The configs want this instance and it is not wanted now (plan -> machine)."""

    spec: InstanceSpec
    now: float


@dataclass(frozen=True, slots=True)
class Started:
    """The broker acknowledged our Spawn: the knot runs as `pid`."""

    pid: Pid
    now: float


@dataclass(frozen=True, slots=True)
class StartRefused:
    """The broker refused our Spawn (a config problem), or it was lost (`lost=True`)."""

    reason: str
    now: float
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Exited:
    """The broker reaped the knot `pid` (live, or replayed after a reconnect)."""

    pid: Pid
    status: ExitStatus
    now: float


@dataclass(frozen=True, slots=True)
class StopRequested:
    """The configs no longer want this instance: retire it (E-19)."""

    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Reconfigured:
    """The configs still want this instance, with a new spec.

    A different fingerprint means an upgrade (exactly one SIGTERM, E-18); the
    same fingerprint only updates the timeouts (T-30a: no restart).
    """

    spec: InstanceSpec
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A WakeAt deadline of this instance passed; stale timers are harmless."""

    now: float


@dataclass(frozen=True, slots=True)
class Adopted:
    """A broker snapshot after a reconnect lists a live knot for this instance."""

    pid: Pid
    fingerprint: str
    started_at: float
    term_sent: bool
    now: float


Event = (
    StartRequested | Started | StartRefused | Exited | StopRequested | Reconfigured
    | TimerFired | Adopted
)
EVENT_TYPES: tuple[type[Event], ...] = (
    StartRequested, Started, StartRefused, Exited, StopRequested, Reconfigured,
    TimerFired, Adopted,
)  # fmt: skip


# ---- actions: what main.py must do -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Ask the broker to start the knot of `instance` with this identity."""

    instance: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Signal:
    """Ask the broker to send `signum` to the knot `pid` of `instance`."""

    instance: str
    pid: Pid
    signum: int


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Feed `TimerFired` to `instance` once the monotonic clock reaches `deadline`."""

    instance: str
    deadline: float


@dataclass(frozen=True, slots=True)
class CleanUp:
    """Ask the broker to remove the state dir and cgroups of a retired instance (T-23)."""

    instance: str


Action = Spawn | Signal | WakeAt | CleanUp
