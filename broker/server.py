"""The broker's loop: its peers, its signals, the requests and their handlers.

Owns the single choke point every request passes (STYLE P5, OpenSSH's
mon_table): look up the handler, check the peer's role and phase, run the
check (which raises Denied), act, reply; the control socket; the order of the
start-up. What an event sets off lives beside it, as functions of the Broker:
broker/exits.py (SIGCHLD -> InstanceExited, queued while no supervisor
listens), broker/supervision.py (the supervisor's own life: started as an
unprivileged user, restarted with a back-off, waited for after a re-exec),
broker/reexec.py (SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2), broker/shutdown.py
(SIGTERM, SIGINT), broker/recovery.py (children found again at start-up) and
broker/published.py (metric files, config log). Rules: nothing here decides
*when* to start or stop an instance; that is the supervisor's. A
ProtocolViolation closes that peer, never the broker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import field
from pathlib import Path

from broker import exits, published, recovery, starter, supervision
from broker.cgroups import CgroupLayout, instance_group
from broker.children import Child, Children, handed_over, new_child
from broker.configs import ConfigCache
from broker.daemon import Account
from broker.logrelay import LogRelay
from broker.notify import sd_notify
from broker.peers import Peer, Phase
from broker.policy import parse_instance, plan_start
from broker.ports import PortTable
from broker.reexec import HANDLED_SIGNALS, REEXEC_SIGNALS, reexec
from broker.sandboxlogs import SandboxLogs
from broker.shutdown import shutdown
from broker.status import History, status_tree
from protocol import failpoints
from protocol import messages as m
from protocol.channel import Channel
from protocol.errors import ChannelClosed, Denied, ProtocolViolation
from protocol.fingerprint import fingerprint
from protocol.loop import Loop
from protocol.records import (
    ChildInfo,
    ChildState,
    DenyCode,
    Pid,
    ResourceUsage,
    Role,
)
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

LITHOS_VERSION = "0.1.0"
MAX_PENDING_EXITS = 100_000
MAX_CONTROL_PEERS = 256
ACCEPT_PAUSE_S = 1.0
# Signals the supervisor may ask for (the wire type already restricts the set).
ALLOWED_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
     signal.SIGUSR1, signal.SIGUSR2}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Handler:
    """How one request kind is served: who may send it, and when."""

    roles: frozenset[Role]
    phases: frozenset[Phase]
    run: Callable[[Broker, Peer, Any], m.Message]
    root_only: bool = False


@dataclass(slots=True)
class Options:
    """The broker's settings: from its command line, and when it started."""

    master_path: Path
    supervisor_account: Account
    supervisor_args: list[str] = field(default_factory=list)
    log_stderr: bool = False
    log_level: str | None = None  # --log-level of lithos_tree, for the knots too (T-42)
    # X-M1: the cantal files' base (protocol/metricpaths.py, broker/startup.py);
    # None: <runtime-dir>/metrics. supervisor_env: added to the supervisor's environment.
    metrics_base: str | None = None
    supervisor_env: dict[str, str] = field(default_factory=dict)
    started_at_wall: float = field(default_factory=time.time)


class Broker:
    """lithos_tree's state and event handlers; `run()` until shut down."""

    def __init__(
        self, configs: ConfigCache, options: Options, resume: dict[str, Any] | None
    ) -> None:
        self.configs = configs
        self.master = configs.master
        self.options = options
        self.loop = Loop()
        self.sandbox_logs = SandboxLogs(self.master, options.log_level)
        self.relays: dict[int, LogRelay] = {}  # the supervisors' stderr pipes
        self.children = Children(self.master.runtime_dir / "children")
        self.cgroups: CgroupLayout | None = None
        self.history: dict[str, History] = {}
        self.pending: deque[m.InstanceExited] = deque(maxlen=MAX_PENDING_EXITS)
        self.peers: dict[int, Peer] = {}
        self.supervisor: Peer | None = None  # its peer; the rest is supervision.py's
        self.supervisor_pid: int | None = None
        self.old_supervisor_pid: int | None = None  # the one before a re-exec
        self.supervisor_started = 0.0
        self.supervisor_failures = 0
        self.supervisor_leaving = False  # told to stop (reload): exits wait in `pending`
        self.shutting_down = False
        self.started_mono = time.monotonic()
        self.control: socket.socket | None = None
        self.resumed = resume is not None
        self.handed_over: dict[str, Child] = {}
        if resume is not None:
            self.handed_over = handed_over(resume.get("children"))
            self.ports = PortTable.adopt(resume.get("ports", {}))
            for raw in resume.get("pending_exits", []):
                with contextlib.suppress(TypeError, ValueError):
                    raw["rusage"] = ResourceUsage(**raw["rusage"])
                    self.pending.append(m.InstanceExited(**raw))
            # It saw its channel close at the exec and exits on its own; a
            # fresh one is started once it did (its exit is not a failure).
            self.old_supervisor_pid = resume.get("supervisor_pid")
            self.options.started_at_wall = resume.get("started_at_wall", time.time())
        else:
            self.ports = PortTable()

    # -- start-up ----------------------------------------------------------

    def start(self, cgroups: CgroupLayout | None) -> None:
        """Starts the supervisor, recovers children, opens the control socket.

        The supervisor is started first: its interpreter start and imports (about
        0.2 s) overlap ours, and nothing it asks is answered before the loop runs,
        when recovery is done (its snapshot holds every child found here).
        """
        self.cgroups = cgroups
        if self.resumed:
            failpoints.hit("broker.reexec.after_exec")
        supervision.start_or_wait(self)
        recovery.recover(self, cgroups)
        self.loop.on_signal(signal.SIGCHLD, lambda _s: exits.reap(self))
        for signum in REEXEC_SIGNALS:
            self.loop.on_signal(signum, lambda _s: reexec(self))
        self.loop.on_signal(signal.SIGTERM, lambda _s: shutdown(self, signal_children=True))
        self.loop.on_signal(signal.SIGINT, lambda _s: shutdown(self, signal_children=False))
        # Handlers are in place: what arrived during a re-exec is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self._open_control_socket()
        published.prepare_metric_files(self)
        published.log_configs(self)
        exits.reap(self)  # exits that happened while we were exec'ing

    def _open_control_socket(self) -> None:
        path = self.master.runtime_dir / "control.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
        sock.bind(str(path))
        # Everyone may connect; what each uid may ask is decided per request
        # (SO_PEERCRED): status for anyone, changes for root only.
        os.chmod(path, 0o666)
        sock.listen(64)
        self.control = sock
        self.loop.add_reader(sock.fileno(), self._accept_control)

    def _accept_control(self) -> None:
        assert self.control is not None
        while True:
            try:
                conn, _ = self.control.accept()
            except BlockingIOError:
                return
            except OSError as e:
                # EMFILE/ENFILE (a connection flood, or a leak): stop accepting
                # for a moment instead of spinning on a listening socket that
                # stays readable; running containers are not affected.
                log.error("control socket: accept: %s; pausing accepts for %.0fs",
                          errno.errorcode.get(e.errno or 0, e), ACCEPT_PAUSE_S)  # fmt: skip
                self.loop.remove_reader(self.control.fileno())
                self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            controls = sum(1 for p in self.peers.values() if p.role is Role.CONTROL)
            if controls >= MAX_CONTROL_PEERS:
                log.warning("control socket: %d connections open; refusing another",
                            controls)  # fmt: skip
                conn.close()
                continue
            channel = Channel(conn)
            channel.setblocking(False)
            creds = channel.peer_credentials()
            self._add_peer(Peer(channel, Role.CONTROL, creds.uid))

    def _resume_accepting(self) -> None:
        if self.control is not None and self.control.fileno() >= 0:
            self.loop.add_reader(self.control.fileno(), self._accept_control)

    def _add_peer(self, peer: Peer) -> None:
        fd = peer.channel.fileno()
        self.peers[fd] = peer
        self.loop.add_reader(fd, lambda: self._on_readable(fd))

    def _drop_peer(self, fd: int) -> None:
        peer = self.peers.pop(fd, None)
        if peer is None:
            return
        self.loop.remove_reader(fd)
        peer.channel.close()
        if peer is self.supervisor:
            self.supervisor = None

    # -- requests ------------------------------------------------------------

    def _on_readable(self, fd: int) -> None:
        peer = self.peers.get(fd)
        if peer is None:
            return
        while True:
            try:
                received = peer.channel.try_recv()
            except ChannelClosed as e:  # closed, or reset with our replies unread
                level = logging.INFO if "reset" in str(e) else logging.DEBUG
                log.log(level, "%s peer (uid %d): %s; closing", peer.role.value, peer.uid, e)
                self._drop_peer(fd)
                return
            except OSError as e:
                log.info("%s peer (uid %d): %s; closing", peer.role.value, peer.uid, e)
                self._drop_peer(fd)
                return
            except ProtocolViolation as e:
                log.error("%s peer (uid %d): protocol violation: %s; closing",
                          peer.role.value, peer.uid, e)  # fmt: skip
                self._drop_peer(fd)
                return
            if received is None:
                return
            if not isinstance(received.message, m.Request):
                # Replies and events flow from the broker only: a peer sending
                # one is broken (and a reply to it would have no request id).
                log.error("%s peer (uid %d): protocol violation: sent a %s, not a request; "
                          "closing", peer.role.value, peer.uid,
                          type(received.message).__name__)  # fmt: skip
                received.close_fds()
                self._drop_peer(fd)
                return
            self._dispatch(peer, received.message, received.request_id, received.fds)
            if fd not in self.peers:
                return

    def _dispatch(self, peer: Peer, msg: m.Message, request_id: int, fds: tuple[Any, ...]) -> None:
        handler = HANDLERS.get(type(msg))
        log.debug("%s from %s (uid %d)", type(msg).__name__, peer.role.value, peer.uid)
        try:
            try:
                if handler is None or peer.role not in handler.roles:
                    raise Denied(DenyCode.NOT_PERMITTED, f"{type(msg).__name__} is not for "
                                 f"a {peer.role.value} connection")  # fmt: skip
                if peer.phase not in handler.phases:
                    raise Denied(DenyCode.WRONG_PHASE, f"{type(msg).__name__} in phase "
                                 f"{peer.phase.value}")  # fmt: skip
                if handler.root_only and peer.uid != 0:
                    raise Denied(DenyCode.NOT_PERMITTED, f"{type(msg).__name__}: uid "
                                 f"{peer.uid} is not root")  # fmt: skip
                reply = handler.run(self, peer, msg)
            except Denied as e:
                # The instance is named at the end: some reasons name only the config.
                instance = getattr(msg, "instance", None)
                log.warning("denied %s from %s (uid %d): %s%s", type(msg).__name__,
                            peer.role.value, peer.uid, e.reason,
                            f" (instance {instance})" if instance else "")  # fmt: skip
                reply = m.RequestDenied(e.code, e.reason[:4000])
            except Exception as e:  # a bug of ours: refuse this request, keep serving
                log.exception("%s from %s (uid %d) failed", type(msg).__name__,
                              peer.role.value, peer.uid)  # fmt: skip
                reply = m.RequestDenied(DenyCode.RESOURCE, f"{type(msg).__name__}: internal "
                                        f"error: {type(e).__name__}: {e}"[:4000])  # fmt: skip
            finally:
                for fd in fds:
                    fd.close()
            self._send(peer, reply, request_id)
        except (OSError, ChannelClosed, ValueError, TypeError) as e:
            if peer is self.supervisor and isinstance(e, BrokenPipeError | ConnectionResetError):
                # A dead supervisor's queued requests were decided (and counted) by it:
                # they are carried out; the end of its channel drops it.
                log.info("supervisor peer: reply not sent (%s)", e)
                return
            log.warning("%s peer (uid %d): reply not sent (%s); closing",
                        peer.role.value, peer.uid, e)  # fmt: skip
            self._drop_peer(peer.channel.fileno())

    def _send(self, peer: Peer, msg: m.Message, request_id: int) -> None:
        peer.channel.send(msg, request_id)

    # handlers (each checks, then acts; Denied on refusal) -------------------

    def h_hello(self, peer: Peer, msg: m.Hello) -> m.Message:
        if msg.protocol_version != m.PROTOCOL_VERSION:
            raise Denied(DenyCode.VERSION_MISMATCH, f"protocol version {msg.protocol_version}; "
                         f"this broker speaks {m.PROTOCOL_VERSION}")  # fmt: skip
        if msg.role is not peer.role:
            raise Denied(DenyCode.NOT_PERMITTED, f"role {msg.role.value} on a "
                         f"{peer.role.value} connection")  # fmt: skip
        peer.phase = Phase.HELLO
        return m.HelloOk(m.PROTOCOL_VERSION, Pid(os.getpid()), self.options.started_at_wall,
                         LITHOS_VERSION)  # fmt: skip

    def h_snapshot(self, peer: Peer, msg: m.GetSnapshot) -> m.Message:
        children = tuple(
            ChildInfo(
                c.instance,
                Pid(c.pid),
                c.fingerprint,
                c.started_at,
                c.started_mono,
                ChildState.RUNNING,
            )  # fmt: skip
            for c in self.children
        )
        # Kept until its SupervisorReady, which it sends once it has counted them:
        # a supervisor killed during its take-over leaves them to the next one.
        pending = tuple(self.pending)
        peer.handed = len(pending)
        peer.phase = Phase.SNAPSHOT
        return m.Snapshot(children, pending)

    def h_ready(self, peer: Peer, msg: m.SupervisorReady) -> m.Message:
        peer.phase = Phase.READY
        for _ in range(min(peer.handed, len(self.pending))):
            self.pending.popleft()
        self.loop.call_later(0, lambda: exits.flush_pending(self))
        log.info("supervisor ready (%d children)", len(self.children))
        sd_notify("READY=1")  # systemd Type=notify: every container started or adopted
        return m.SupervisorReadyOk()

    def h_start(self, peer: Peer, msg: m.StartInstance) -> m.Message:
        if self.shutting_down:
            raise Denied(DenyCode.WRONG_PHASE, "lithos_tree is shutting down")
        name = parse_instance(msg.instance)
        if self.children.by_name(msg.instance) is not None:
            raise Denied(DenyCode.ALREADY_RUNNING, f"{msg.instance}: already running")
        sandbox = self.configs.sandbox(name.sandbox)
        processes = self.configs.processes(sandbox)
        process = processes.get(name.process)
        if process is None:
            raise Denied(DenyCode.UNKNOWN_PROCESS, f"{msg.instance}: no process "
                         f"{name.process!r} in sandbox {name.sandbox!r}")  # fmt: skip
        container, data = self.configs.container(sandbox, process)
        plan = plan_start(msg.instance, self.master, sandbox, processes, container)
        expected = fingerprint(process, name.index, data)
        if expected != msg.fingerprint:
            raise Denied(DenyCode.FINGERPRINT_MISMATCH, f"{msg.instance}: the configs on disk "
                         f"give fingerprint {expected}, not {msg.fingerprint}")  # fmt: skip
        addresses = [(req.host, req.port) for req in plan.ports]
        intent = new_child(msg.instance, -1, expected, plan.cgroup, addresses)
        intent.state_dir, intent.kill_timeout_s = str(plan.state_dir), plan.spec.kill_timeout_s
        self.children.intend(intent)  # a crash before add() leaves the knot findable
        try:
            child = starter.start(plan, expected, self.ports, self.cgroups,
                                  sandbox_log=self.sandbox_logs.open(sandbox),
                                  stdio_log_fd=self.sandbox_logs.open_stdio(plan.stdio_log))
        except BaseException:
            self.children.abandon(msg.instance)
            raise
        failpoints.hit("broker.start.after_spawn")
        self.children.add(child)
        failpoints.hit("broker.start.after_record")
        self.history.setdefault(msg.instance, History()).starts += 1
        log.info("Forked %s (pid: %d)", msg.instance, child.pid)
        return m.StartInstanceOk(msg.instance, Pid(child.pid), child.started_at,
                                 child.started_mono)  # fmt: skip

    def h_signal(self, peer: Peer, msg: m.SignalInstance) -> m.Message:
        child = self.children.by_name(msg.instance)
        if child is None or child.pid != msg.pid:
            raise Denied(DenyCode.STALE_PID, f"{msg.instance}: pid {msg.pid} is not its "
                         "running knot")  # fmt: skip
        signum = signal.Signals(msg.signal)
        if signum not in ALLOWED_SIGNALS:
            raise Denied(DenyCode.POLICY, f"signal {signum.name} may not be sent")
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            raise Denied(DenyCode.NOT_RUNNING, f"{msg.instance}: pid {msg.pid} is gone") from None
        return m.SignalInstanceOk(msg.instance, msg.pid)

    def h_cleanup(self, peer: Peer, msg: m.CleanUpInstance) -> m.Message:
        name = parse_instance(msg.instance)
        if self.children.by_name(msg.instance) is not None:
            raise Denied(DenyCode.ALREADY_RUNNING, f"{msg.instance}: still running")
        starter.remove_state_dir(
            self.master.state_dir / name.sandbox / f"{name.process}.{name.index}"
        )
        if self.cgroups is not None and self.master.cgroup_name is not None:
            group = instance_group(self.master.cgroup_name, str(name))
            with contextlib.suppress(Exception):
                self.cgroups.handle(group).remove()
        return m.CleanUpInstanceOk(msg.instance)

    def h_status(self, peer: Peer, msg: m.GetStatus) -> m.Message:
        now = time.monotonic()
        return m.StatusTree(Pid(os.getpid()), now - self.started_mono,
                            status_tree(self.configs, self.children, self.history, now))

    def h_reload(self, peer: Peer, msg: m.Reload) -> m.Message:
        errors = []
        for name in self.configs.sandbox_names():
            try:
                self.configs.processes(self.configs.sandbox(name))
            except Denied as e:
                errors.append(e.reason[:4000])
        supervision.reload(self)
        return m.ReloadOk(tuple(errors))

    def run(self) -> None:
        self.loop.run()

    def close(self) -> None:
        for relay in self.relays.values():
            relay.drain()
            relay.close()
        self.relays.clear()
        for fd in list(self.peers):
            self._drop_peer(fd)
        if self.control is not None:
            self.control.close()
            with contextlib.suppress(OSError):
                (self.master.runtime_dir / "control.sock").unlink()
        self.ports.close()
        self.loop.close()
        if self.shutting_down:  # X-M7: a clean exit removes the metric files
            published.remove_metric_files(self)


_ANY = frozenset(Phase)
_AFTER_SNAPSHOT = frozenset({Phase.SNAPSHOT, Phase.READY})
_SUP = frozenset({Role.SUPERVISOR})
_CTL = frozenset({Role.CONTROL})
HANDLERS: dict[type[m.Message], Handler] = {
    m.Hello: Handler(frozenset({Role.SUPERVISOR, Role.CONTROL}), frozenset({Phase.NEW}),
                     Broker.h_hello),
    m.GetSnapshot: Handler(_SUP, frozenset({Phase.HELLO}), Broker.h_snapshot),
    m.SupervisorReady: Handler(_SUP, frozenset({Phase.SNAPSHOT}), Broker.h_ready),
    m.StartInstance: Handler(_SUP, _AFTER_SNAPSHOT, Broker.h_start),
    m.SignalInstance: Handler(_SUP, _AFTER_SNAPSHOT, Broker.h_signal),
    m.CleanUpInstance: Handler(_SUP, _AFTER_SNAPSHOT, Broker.h_cleanup),
    m.GetStatus: Handler(_CTL, frozenset({Phase.HELLO}), Broker.h_status),
    m.Reload: Handler(_CTL, frozenset({Phase.HELLO}), Broker.h_reload, root_only=True),
}  # fmt: skip
