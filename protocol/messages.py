"""The message catalogue: one frozen dataclass per request, reply and event.

Owns: every message that crosses the broker's sockets, who sends it, who
receives it, what the receiver checks, and how many fds it carries (`FDS`).
Rules: requests are imperative, replies name their request, events are in the
past tense (STYLE P2). A constructor checks each value's domain and raises
ValueError naming the field, so a decoded message is valid by construction;
whether the *policy* allows it is the broker's business (broker/policy.py).
The supervisor names what it wants (an instance); it never sends a uid, a path,
a port or a limit. Pure: imports only protocol.records; no I/O.
"""

from __future__ import annotations

import enum
from signal import Signals

from protocol.records import (
    MAX_TEXT_CHARS,
    ChildInfo,
    DenyCode,
    Pid,
    ResourceUsage,
    Role,
    SandboxStatus,
    SwitchPlanEntry,
    check_exit,
    check_fingerprint,
    check_instance,
    check_name,
    check_pid,
    check_range,
    check_seconds,
    check_text,
    check_unique,
)
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

PROTOCOL_VERSION = 1


class Kind(enum.Enum):
    REQUEST = "request"  # carries a request id >= 1, chosen by the sender
    REPLY = "reply"  # echoes the id of the request it answers
    EVENT = "event"  # unsolicited, from the broker: request id 0


class Message:
    """Base of every message. FDS: fds carried by SCM_RIGHTS; LARGE: may exceed 64 KiB."""

    __slots__ = ()
    KIND: ClassVar[Kind]
    FDS: ClassVar[int] = 0
    LARGE: ClassVar[bool] = False


class Request(Message):
    __slots__ = ()
    KIND = Kind.REQUEST


class Reply(Message):
    __slots__ = ()
    KIND = Kind.REPLY


class Event(Message):
    __slots__ = ()
    KIND = Kind.EVENT


# --- handshake (both sockets) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Request):
    """Supervisor or control client -> broker, first message on every connection.

    The broker checks: it is the first message; protocol_version == PROTOCOL_VERSION
    (else RequestDenied VERSION_MISMATCH); role SUPERVISOR only on the supervisor's
    socketpair, CONTROL only on the control socket. The shape of Hello, HelloOk and
    RequestDenied never changes, so peers of any version can refuse each other clearly.
    """

    protocol_version: int
    role: Role

    def __post_init__(self) -> None:
        check_range("protocol_version", self.protocol_version, 0, 2**31 - 1)


@dataclass(frozen=True, slots=True)
class HelloOk(Reply):
    """Broker -> the Hello sender. The receiver checks protocol_version is its own."""

    protocol_version: int
    broker_pid: Pid
    broker_started_at_wall: float
    lithos_version: str

    def __post_init__(self) -> None:
        check_range("protocol_version", self.protocol_version, 0, 2**31 - 1)
        check_pid("broker_pid", self.broker_pid)
        check_seconds("broker_started_at_wall", self.broker_started_at_wall)
        check_text("lithos_version", self.lithos_version, 64)


@dataclass(frozen=True, slots=True)
class RequestDenied(Reply):
    """Broker -> any requester: the one refusal of every request (STYLE P3 `Denied`).

    reason names the file, the key and the value at fault (STYLE P8). The receiver
    logs it and carries on; the channel stays open.
    """

    code: DenyCode
    reason: str

    def __post_init__(self) -> None:
        check_text("reason", self.reason)


# --- supervisor -> broker ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartInstance(Request):
    """Supervisor -> broker: start the knot of one instance.

    The broker re-reads the sandbox, process and container configs itself, checks
    N < instances, that the instance is not running, recomputes the fingerprint
    (FINGERPRINT_MISMATCH when the supervisor's differs: it read other configs),
    checks the container config against the sandbox policy, then forks.
    """

    instance: str  # "sandbox/process.N"
    fingerprint: str  # opaque, computed by the supervisor from the configs

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_fingerprint("fingerprint", self.fingerprint)


@dataclass(frozen=True, slots=True)
class StartInstanceOk(Reply):
    """Broker -> supervisor: the knot is forked.

    The supervisor checks instance is the one it asked for, then records pid and times.
    """

    instance: str
    pid: Pid
    started_at_wall: float
    started_at_monotonic: float

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_pid("pid", self.pid)
        check_seconds("started_at_wall", self.started_at_wall)
        check_seconds("started_at_monotonic", self.started_at_monotonic)


@dataclass(frozen=True, slots=True)
class SignalInstance(Request):
    """Supervisor -> broker: send a signal to an instance's knot.

    The broker checks pid is the instance's current, unreaped child (STALE_PID
    otherwise: never a signal to a pid it does not own) and that the signal is one
    the supervisor may send (TERM, KILL, INT, HUP, QUIT, USR1, USR2).
    """

    instance: str
    pid: Pid
    signal: Signals

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_pid("pid", self.pid)


@dataclass(frozen=True, slots=True)
class SignalInstanceOk(Reply):
    """Broker -> supervisor: the signal was delivered (the exit comes as InstanceExited)."""

    instance: str
    pid: Pid

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_pid("pid", self.pid)


@dataclass(frozen=True, slots=True)
class GetSnapshot(Request):
    """Supervisor -> broker, after Hello: every live child and every exit not yet reported.

    The broker checks the role is SUPERVISOR. Exits listed in the reply are not sent
    again as InstanceExited events.
    """


@dataclass(frozen=True, slots=True)
class Snapshot(Reply):
    """Broker -> supervisor: what it needs to reconcile (no child lost, none twice).

    The supervisor adopts each child (instance, pid, fingerprint, start times) and
    handles each pending exit as if it had just arrived. Checked here: no instance
    and no pid is listed twice among the children.
    """

    LARGE = True
    children: tuple[ChildInfo, ...]
    pending_exits: tuple[InstanceExited, ...]

    def __post_init__(self) -> None:
        check_unique("children: instance", [child.instance for child in self.children])
        check_unique("children: pid", [child.pid for child in self.children])


@dataclass(frozen=True, slots=True)
class CleanUpInstance(Request):
    """Supervisor -> broker: remove a stopped instance's state dir and cgroup.

    The broker checks the instance name against its configs' naming and that no child
    of that name is running (ALREADY_RUNNING otherwise).
    """

    instance: str

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)


@dataclass(frozen=True, slots=True)
class CleanUpInstanceOk(Reply):
    """Broker -> supervisor: the instance's leftovers are gone."""

    instance: str

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)


@dataclass(frozen=True, slots=True)
class SupervisorReady(Request):
    """Supervisor -> broker: reconciled; from now on exits come as InstanceExited events.

    The broker checks a Snapshot was sent on this connection before.
    """


@dataclass(frozen=True, slots=True)
class SupervisorReadyOk(Reply):
    """Broker -> supervisor: acknowledged; queued exits follow as events."""


# --- broker -> supervisor events ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceExited(Event):
    """Broker -> supervisor (an event, or listed in a Snapshot): a knot was reaped.

    The supervisor checks pid is the one it started and decides whether it failed
    (normal-exit-codes, a SIGTERM it asked for). Exactly one of exit_code, signal is set.
    """

    instance: str
    pid: Pid
    exit_code: int | None
    signal: int | None
    core_dumped: bool
    rusage: ResourceUsage
    run_time_s: float

    def __post_init__(self) -> None:
        check_instance("instance", self.instance)
        check_pid("pid", self.pid)
        check_exit(self.exit_code, self.signal)
        check_seconds("run_time_s", self.run_time_s)


# --- control client (lithos_ps, lithos_switch, lithos_cmd) -> broker ---------------


@dataclass(frozen=True, slots=True)
class GetStatus(Request):
    """Control client -> broker. The broker checks SO_PEERCRED allows reading status."""


@dataclass(frozen=True, slots=True)
class StatusTree(Reply):
    """Broker -> control client (lithos_ps): sandboxes -> processes -> instances.

    The client only displays it; sandboxes with a config_error are shown as failing.
    """

    LARGE = True
    broker_pid: Pid
    broker_uptime_s: float
    sandboxes: tuple[SandboxStatus, ...]

    def __post_init__(self) -> None:
        check_pid("broker_pid", self.broker_pid)
        check_seconds("broker_uptime_s", self.broker_uptime_s)


@dataclass(frozen=True, slots=True)
class Reload(Request):
    """Control client -> broker: re-read every config. The broker checks the peer is root."""


@dataclass(frozen=True, slots=True)
class ReloadOk(Reply):
    """Broker -> control client: configs re-read; config_errors lists files that failed.

    A sandbox whose config fails keeps running from its last good config (inventory rule 4).
    """

    config_errors: tuple[str, ...]

    def __post_init__(self) -> None:
        for error in self.config_errors:
            check_text("config_errors", error)


@dataclass(frozen=True, slots=True)
class PlanSwitch(Request):
    """Control client (lithos_switch) -> broker: what would this process config change?

    Nothing changes. The broker checks the peer is root, that the sandbox exists, and
    validates config_yaml against the sandbox policy as a process config
    (CONFIG_ERROR or POLICY naming the key and value otherwise).
    """

    LARGE = True
    sandbox: str
    config_yaml: bytes

    def __post_init__(self) -> None:
        check_name("sandbox", self.sandbox)


@dataclass(frozen=True, slots=True)
class SwitchPlan(Reply):
    """Broker -> lithos_switch: one entry per process entry, old or new; sandbox as asked."""

    LARGE = True
    sandbox: str
    entries: tuple[SwitchPlanEntry, ...]

    def __post_init__(self) -> None:
        check_name("sandbox", self.sandbox)


@dataclass(frozen=True, slots=True)
class RunCommand(Request):
    """Control client (lithos_cmd) -> broker, with exactly 3 fds: stdin, stdout, stderr.

    The broker checks the peer is root, the sandbox exists and `name` is a process entry
    of kind Command, then checks it against the policy like a StartInstance, runs it
    with those fds as its stdio, closes its copies, and replies when it exits.
    """

    FDS = 3
    sandbox: str
    name: str
    args: tuple[str, ...]

    def __post_init__(self) -> None:
        check_name("sandbox", self.sandbox)
        check_name("name", self.name)
        for arg in self.args:
            check_text("args", arg, MAX_TEXT_CHARS)


@dataclass(frozen=True, slots=True)
class CommandExited(Reply):
    """Broker -> lithos_cmd: the command ended; lithos_cmd exits with its code."""

    exit_code: int | None
    signal: int | None

    def __post_init__(self) -> None:
        check_exit(self.exit_code, self.signal)


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello, HelloOk, RequestDenied,
    StartInstance, StartInstanceOk, SignalInstance, SignalInstanceOk,
    GetSnapshot, Snapshot, CleanUpInstance, CleanUpInstanceOk,
    SupervisorReady, SupervisorReadyOk, InstanceExited,
    GetStatus, StatusTree, Reload, ReloadOk, PlanSwitch, SwitchPlan,
    RunCommand, CommandExited,
)  # fmt: skip

# The reply that answers each request (RequestDenied may answer any of them).
REPLY_TO: dict[type[Request], type[Reply]] = {
    Hello: HelloOk,
    StartInstance: StartInstanceOk,
    SignalInstance: SignalInstanceOk,
    GetSnapshot: Snapshot,
    CleanUpInstance: CleanUpInstanceOk,
    SupervisorReady: SupervisorReadyOk,
    GetStatus: StatusTree,
    Reload: ReloadOk,
    PlanSwitch: SwitchPlan,
    RunCommand: CommandExited,
}

SupervisorRequest = (
    Hello | StartInstance | SignalInstance | GetSnapshot | CleanUpInstance | SupervisorReady
)
ControlRequest = Hello | GetStatus | Reload | PlanSwitch | RunCommand
