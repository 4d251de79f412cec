"""Enums, value checks and nested records shared by the wire messages.

Owns: the closed enums of the protocol (roles, refusal codes, child states...),
the records nested inside messages (ChildInfo, ResourceUsage, the status tree),
and the checks of names and numbers every message applies in `__post_init__`.
Rules: records are frozen, slotted dataclasses; a constructor raises ValueError
naming the field and the value when a value is out of its domain, so a decoded
record is valid by construction. Pure: no I/O; names follow protocol/names.py.
"""

from __future__ import annotations

import enum
import math
import re

from protocol.names import NAME_RULE, is_name, parse_instance_name
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NewType
else:  # typing stays out of the daemons (protocol/hints.py)
    from protocol.hints import NewType

Pid = NewType("Pid", int)

PID_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
MAX_TEXT_CHARS = 4096
MAX_FINGERPRINT_CHARS = 256

FINGERPRINT_RE = re.compile(rf"[!-~]{{1,{MAX_FINGERPRINT_CHARS}}}")  # printable, no space


class Role(enum.Enum):
    """Who opened a connection to the broker (said in Hello)."""

    SUPERVISOR = "supervisor"
    CONTROL = "control"


class DenyCode(enum.Enum):
    """Machine-readable kind of a RequestDenied; the reason text says the details."""

    VERSION_MISMATCH = "version-mismatch"  # Hello of another protocol version
    WRONG_PHASE = "wrong-phase"  # e.g. a request before Hello, a second Hello
    NOT_PERMITTED = "not-permitted"  # this peer (role, SO_PEERCRED uid) may not ask this
    UNKNOWN_SANDBOX = "unknown-sandbox"
    UNKNOWN_PROCESS = "unknown-process"
    UNKNOWN_INSTANCE = "unknown-instance"  # e.g. index >= instances
    UNKNOWN_COMMAND = "unknown-command"
    CONFIG_ERROR = "config-error"  # a config file fails to load or to validate
    POLICY = "policy"  # the sandbox policy forbids it (allow-users, allow-tcp-ports...)
    FINGERPRINT_MISMATCH = "fingerprint-mismatch"  # broker recomputed another fingerprint
    STALE_PID = "stale-pid"  # the pid is not the instance's current child
    ALREADY_RUNNING = "already-running"
    NOT_RUNNING = "not-running"
    RESOURCE = "resource"  # a kernel call failed (ports, cgroups, mounts, fork)


class ChildState(enum.Enum):
    """The broker's view of one instance: it only knows what it did and what it reaped."""

    RUNNING = "running"  # forked, not reaped, no signal sent by request
    SIGNALLED = "signalled"  # a SignalInstance was delivered, not reaped yet
    EXITED = "exited"  # reaped (only in StatusTree; a Snapshot lists it in pending_exits)


class ProcessChange(enum.Enum):
    """What a switch to a new process config would do to one process entry."""

    ADDED = "added"
    REMOVED = "removed"
    UPGRADED = "upgraded"  # the fingerprint changes: instances are replaced
    RESIZED = "resized"  # only `instances` changes
    UNCHANGED = "unchanged"


def check_name(field: str, value: str) -> None:
    """A sandbox, process or command name (protocol/names.py)."""
    if not is_name(value):
        raise ValueError(f"{field}: {value!r} is not a name of {NAME_RULE}")


def check_instance(field: str, value: str) -> None:
    """An instance name: `sandbox/process.N` (protocol/names.py)."""
    try:
        parse_instance_name(value)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


def check_pid(field: str, value: int) -> None:
    """A Linux pid: 1..PID_MAX."""
    if not 1 <= value <= PID_MAX:
        raise ValueError(f"{field}: {value} is not a pid (1..{PID_MAX})")


def check_range(field: str, value: int, low: int, high: int) -> None:
    """An int within low..high, both included."""
    if not low <= value <= high:
        raise ValueError(f"{field}: {value} is out of range {low}..{high}")


def check_seconds(field: str, value: float) -> None:
    """A time or a duration in seconds: finite and not negative."""
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{field}: {value!r} is not a finite number of seconds >= 0")


def check_text(field: str, value: str, max_chars: int = MAX_TEXT_CHARS) -> None:
    """Human text or an argument: at most max_chars, no NUL."""
    if len(value) > max_chars or "\0" in value:
        raise ValueError(f"{field}: {value[:40]!r}... is longer than {max_chars} or has NUL")


def check_exit(exit_code: int | None, signal: int | None) -> None:
    """Exactly one of exit_code (0..255) and signal (1..64) is set."""
    if (exit_code is None) == (signal is None):
        raise ValueError(f"exit_code: {exit_code!r}, signal: {signal!r}: exactly one must be set")
    if exit_code is not None:
        check_range("exit_code", exit_code, 0, 255)
    if signal is not None:
        check_range("signal", signal, 1, 64)


def check_unique(field: str, values: list[str] | list[Pid]) -> None:
    """No value listed twice."""
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} {value} listed twice")
        seen.add(value)


def check_fingerprint(field: str, value: str) -> None:
    """An opaque fingerprint: 1-256 printable ASCII characters without spaces."""
    if FINGERPRINT_RE.fullmatch(value) is None:
        raise ValueError(
            f"{field}: {value[:40]!r} is not 1-{MAX_FINGERPRINT_CHARS} printable "
            f"ASCII characters without spaces"
        )


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """getrusage-style totals of a reaped child (the knot and its descendants)."""

    utime_s: float
    stime_s: float
    maxrss_kb: int

    def __post_init__(self) -> None:
        check_seconds("utime_s", self.utime_s)
        check_seconds("stime_s", self.stime_s)
        check_range("maxrss_kb", self.maxrss_kb, 0, 2**53)


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One live child of the broker, as listed in a Snapshot."""

    instance: str
    pid: Pid
    fingerprint: str  # the one the broker computed when it started the child
    started_at_wall: float  # time.time() at fork: for display only
    started_at_monotonic: float  # time.monotonic() at fork: system-wide clock
    state: ChildState

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_pid("pid", self.pid)
        check_fingerprint("fingerprint", self.fingerprint)
        check_seconds("started_at_wall", self.started_at_wall)
        check_seconds("started_at_monotonic", self.started_at_monotonic)
        if self.state is ChildState.EXITED:
            raise ValueError("state: EXITED: a reaped child is in pending_exits, not children")


@dataclass(frozen=True, slots=True)
class LastExit:
    """How an instance last ended (StatusTree)."""

    exit_code: int | None
    signal: int | None
    core_dumped: bool
    exited_at_wall: float

    def __post_init__(self) -> None:
        check_exit(self.exit_code, self.signal)
        check_seconds("exited_at_wall", self.exited_at_wall)


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One instance in a StatusTree; pid and uptime_s are None unless it runs."""

    instance: str
    state: ChildState
    pid: Pid | None
    uptime_s: float | None
    restarts: int
    last_exit: LastExit | None

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        running = self.state is not ChildState.EXITED
        if running != (self.pid is not None) or running != (self.uptime_s is not None):
            raise ValueError(
                f"state: {self.state.name} with pid: {self.pid!r}, uptime_s: "
                f"{self.uptime_s!r}: pid and uptime_s are set exactly when not EXITED"
            )
        if self.pid is not None:
            check_pid("pid", self.pid)
        if self.uptime_s is not None:
            check_seconds("uptime_s", self.uptime_s)
        check_range("restarts", self.restarts, 0, 2**53)


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One process entry of a sandbox in a StatusTree."""

    name: str
    instances_wanted: int
    instances: tuple[InstanceStatus, ...]

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_range("instances_wanted", self.instances_wanted, 0, 999_999)


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """One sandbox in a StatusTree; config_error says why its last reload failed."""

    name: str
    config_error: str | None
    processes: tuple[ProcessStatus, ...]

    def __post_init__(self) -> None:
        check_name("name", self.name)
        if self.config_error is not None:
            check_text("config_error", self.config_error)


@dataclass(frozen=True, slots=True)
class SwitchPlanEntry:
    """What switching a sandbox to a new process config would do to one entry."""

    process: str
    change: ProcessChange
    instances_before: int
    instances_after: int

    def __post_init__(self) -> None:
        check_name("process", self.process)
        check_range("instances_before", self.instances_before, 0, 999_999)
        check_range("instances_after", self.instances_after, 0, 999_999)
