"""The broker's loop: its peers, its children, its signals.

Owns the single choke point every request passes (STYLE P5, OpenSSH's
mon_table): look up the handler, check the peer's role and phase, run the
check (which raises Denied), act, reply. Also reaping (SIGCHLD -> InstanceExited,
queued while no supervisor listens), the supervisor's own life (started as an
unprivileged user, restarted with a back-off), re-exec (SIGQUIT, SIGHUP, SIGUSR1,
SIGUSR2) and shutdown (SIGTERM, SIGINT). Rules: nothing here decides *when* to
start or stop an instance; that is the supervisor's. A ProtocolViolation closes
that peer, never the broker.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import errno
import logging
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from broker import starter
from broker.cgroups import CgroupError, CgroupLayout, instance_group
from broker.children import Child, Children, handed_over, new_child
from broker.configs import ConfigCache
from broker.daemon import Account, spawn_supervisor
from broker.logrelay import LogRelay
from broker.notify import sd_notify
from broker.policy import parse_instance, plan_start
from broker.ports import PortTable
from broker.reclaim import reclaim
from broker.reexec import exec_self
from broker.sandboxlogs import SandboxLogs
from broker.status import History, status_tree
from protocol import failpoints
from protocol import messages as m
from protocol.channel import Channel
from protocol.config import ConfigError, process_config_log_json
from protocol.configlog import append_config_log
from protocol.errors import ChannelClosed, Denied, ProtocolViolation
from protocol.fingerprint import fingerprint
from protocol.loop import Loop
from protocol.records import (
    ChildInfo,
    ChildState,
    DenyCode,
    LastExit,
    Pid,
    ResourceUsage,
    Role,
)

log = logging.getLogger(__name__)

LITHOS_VERSION = "0.1.0"
MAX_PENDING_EXITS = 100_000
REEXEC_SIGNALS = (signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Every signal the loop handles; blocked across a re-exec (see reexec()).
HANDLED_SIGNALS = (*REEXEC_SIGNALS, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
MAX_CONTROL_PEERS = 256
METRIC_SUFFIXES = (".meta", ".values", ".prom")  # supervisor/metrics_file.py writes them
ACCEPT_PAUSE_S = 1.0
# The first restart is immediate (a supervisor that lived SUPERVISOR_STABLE_S had
# no crash loop; containers go unsupervised until its successor is ready).
SUPERVISOR_BACKOFF_S = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
SUPERVISOR_STABLE_S = 10.0  # a supervisor that lived this long resets the back-off
REEXEC_DRAIN_S = 5.0  # at most this long a re-exec waits for the supervisor's last requests
# Signals the supervisor may ask for (the wire type already restricts the set).
ALLOWED_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
     signal.SIGUSR1, signal.SIGUSR2}
)  # fmt: skip


class Phase(enum.Enum):
    NEW = "new"  # connected, no Hello yet
    HELLO = "hello"  # Hello accepted
    SNAPSHOT = "snapshot"  # supervisor has its snapshot, reconciling
    READY = "ready"  # supervisor reconciled: exits go out as events


@dataclass(slots=True)
class Peer:
    """One connection: the supervisor's socketpair or a control client."""

    channel: Channel
    role: Role
    uid: int
    phase: Phase = Phase.NEW
    handed: int = 0  # pending exits given in its snapshot, dropped at its Ready


@dataclass(frozen=True, slots=True)
class Handler:
    roles: frozenset[Role]
    phases: frozenset[Phase]
    run: Callable[[Broker, Peer, Any], m.Message]
    root_only: bool = False


@dataclass(slots=True)
class Options:
    master_path: Path
    supervisor_account: Account
    supervisor_args: list[str] = field(default_factory=list)
    log_stderr: bool = False
    log_level: str | None = None  # --log-level of lithos_tree, for the knots too (T-42)
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
        self.supervisor: Peer | None = None
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
        """Recovers children, opens the control socket, starts the supervisor."""
        self.cgroups = cgroups
        if self.resumed:
            failpoints.hit("broker.reexec.after_exec")
        for child in self.children.recover(self.handed_over):
            log.info("%s: recovered (pid %d)", child.instance, child.pid)
            self._watch_orphan(child)
        self.handed_over = {}
        for child in self.children.found:
            if cgroups is not None and child.cgroup is not None:
                try:
                    cgroups.handle(child.cgroup).add(child.pid)
                except CgroupError as e:
                    log.error("%s: joining cgroup %s: %s", child.instance, child.cgroup, e)
        # Knots that died while no broker ran (it was SIGKILLed): their exit
        # status is lost for good, but their cgroup and state dir are not left.
        for child in self.children.gone:
            if self.children.by_name(child.instance) is None:
                if child.pid > 0:  # (-1: a start cut short, logged by recover())
                    log.warning("%s: pid %d exited while lithos_tree was down; cleaning up",
                                child.instance, child.pid)  # fmt: skip
                starter.clean_up(child, self.ports, cgroups)
        self.children.gone.clear()
        if not self.resumed:
            # After a SIGKILL of the previous broker: its sockets live on in the
            # containers it left; take them back so siblings share them again.
            orphans = [c for c in self.children if c.orphan_pidfd >= 0 and c.ports]
            if orphans:
                self.ports.close()
                self.ports = PortTable.adopt(reclaim(orphans))
        # Sockets whose instances did not survive are closed (T-12).
        for addr in self.ports.retain(c.instance for c in self.children):
            log.info("Closing socket %s: no live instance uses it", addr)
        self.loop.on_signal(signal.SIGCHLD, lambda _s: self.reap())
        for signum in REEXEC_SIGNALS:
            self.loop.on_signal(signum, lambda _s: self.reexec())
        self.loop.on_signal(signal.SIGTERM, lambda _s: self.shutdown(signal_children=True))
        self.loop.on_signal(signal.SIGINT, lambda _s: self.shutdown(signal_children=False))
        # Handlers are in place: what arrived during a re-exec is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self._open_control_socket()
        self.prepare_metric_files()
        self.log_configs()
        self.reap()  # exits that happened while we were exec'ing
        if self.old_supervisor_pid is None:
            self.start_supervisor()
        else:
            # It saw its channel close at the exec; it handles what it had read,
            # publishes its metrics and exits. A new one started meanwhile would read
            # the metric files before that last publish and overwrite it (X-M6).
            log.info("waiting for the previous supervisor (pid %d) to exit",
                     self.old_supervisor_pid)  # fmt: skip
            self.loop.call_later(SUPERVISOR_STABLE_S, self._previous_supervisor_late)

    def prepare_metric_files(self) -> None:
        """Creates <runtime-dir>/metrics.{meta,values,prom} for the supervisor to write.

        The supervisor may not create files in runtime-dir (root's); it only
        writes these in place (supervisor/metrics_file.py), so cantal's mmap and
        the counters of a previous supervisor survive (X-M1, X-M6).
        """
        account = self.options.supervisor_account
        for suffix in METRIC_SUFFIXES:
            path = self.master.runtime_dir / f"metrics{suffix}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
                try:
                    os.fchown(fd, account.uid, account.gid)
                    os.fchmod(fd, 0o644)
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("%s: %s (metrics will not be published there)", path, e.strerror)

    def log_configs(self) -> None:
        """T-27: one line per sandbox with its process config, at start and reload."""
        if self.master.config_log_dir is None:
            return
        now = datetime.datetime.now(datetime.UTC)
        try:
            names = self.configs.sandbox_names()
        except ConfigError as e:
            log.error("config log: %s", e)
            return
        for name in names:
            try:
                processes = self.configs.processes(self.configs.sandbox(name))
            except Denied:
                continue  # reported by the supervisor; nothing good to log
            error = append_config_log(self.master.config_log_dir, name,
                                      process_config_log_json(processes), now)  # fmt: skip
            if error is not None:
                log.error("%s", error)

    def _watch_orphan(self, child: Child) -> None:
        if child.orphan_pidfd < 0:
            return
        fd = child.orphan_pidfd
        self.loop.add_reader(fd, lambda: self._orphan_exited(child.pid, fd))

    def _orphan_exited(self, pid: int, fd: int) -> None:
        self.loop.remove_reader(fd)
        # Not our child: the status went to whoever adopted it; record an
        # abnormal exit (the knot's own death line is in the stdio log).
        log.warning("pid %d exited while not our child; exit status unknown", pid)
        self._child_exited(pid, exit_code=2, signum=None, core=False, rusage=None)

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

    # -- the supervisor process ---------------------------------------------

    def _last_requests(self, fd: int) -> None:
        """Before a re-exec: the supervisor's last requests are carried out, not dropped.

        Our side of its channel is shut for writing: it sees the end, handles the
        events it had read (their Spawns are counted as started, X-M6) and exits; its
        requests are read until then. Bounded by REEXEC_DRAIN_S (a stuck supervisor
        must not stop the re-exec).
        """
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REEXEC_DRAIN_S
        while fd in self.peers and (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                log.warning("re-exec: the supervisor did not finish in %.0fs", REEXEC_DRAIN_S)
                return
            self._on_readable(fd)

    def _previous_supervisor_late(self) -> None:
        if self.old_supervisor_pid is not None:
            log.warning("previous supervisor (pid %d) still runs after %.0fs; killing it",
                        self.old_supervisor_pid, SUPERVISOR_STABLE_S)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.old_supervisor_pid, signal.SIGKILL)

    def start_supervisor(self) -> None:
        if self.shutting_down or self.supervisor is not None or self.supervisor_pid is not None:
            return
        self.supervisor_leaving = False
        # Its stderr is a pipe we relay into our own log (broker/logrelay.py): it may
        # not open master.log itself, and our handlers know rotation and syslog.
        relay_r, relay_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid, sock = spawn_supervisor(
                self.options.supervisor_account,
                self.options.master_path,
                self.options.supervisor_args,
                relay_w,
            )
        except BaseException:
            os.close(relay_r)
            raise
        finally:
            os.close(relay_w)
        self._add_relay(LogRelay(relay_r, pid))
        channel = Channel(sock)
        channel.setblocking(False)
        self.supervisor_pid = pid
        self.supervisor_started = time.monotonic()
        self.supervisor = Peer(channel, Role.SUPERVISOR, self.options.supervisor_account.uid)
        self._add_peer(self.supervisor)
        log.info("supervisor started (pid %d, user %s)", pid, self.options.supervisor_account.name)

    def _add_relay(self, relay: LogRelay) -> None:
        fd = relay.fd
        self.relays[fd] = relay

        def readable() -> None:
            if not relay.on_readable():  # EOF: that supervisor is gone
                self.loop.remove_reader(fd)
                self.relays.pop(fd, None)
                relay.close()

        self.loop.add_reader(fd, readable)

    def _supervisor_exited(self, status: str) -> None:
        lived = time.monotonic() - self.supervisor_started
        self.supervisor_pid = None
        if self.supervisor is not None:
            # What it sent before it died was decided (and counted) by it: carry it out.
            self._on_readable(self.supervisor.channel.fileno())
        if self.supervisor is not None:
            self._drop_peer(self.supervisor.channel.fileno())
        if self.shutting_down:
            self._maybe_finish_shutdown()
            return
        if lived >= SUPERVISOR_STABLE_S:
            self.supervisor_failures = 0
        delay = SUPERVISOR_BACKOFF_S[min(self.supervisor_failures, len(SUPERVISOR_BACKOFF_S) - 1)]
        self.supervisor_failures += 1
        log.warning("supervisor %s after %.1fs; restarting in %.1fs", status, lived, delay)
        self.loop.call_later(delay, self.start_supervisor)

    def reload(self) -> None:
        """Re-reads every config: a fresh supervisor does it and reconciles."""
        self.log_configs()
        if self.supervisor_pid is not None:
            log.info("reload: restarting the supervisor (pid %d)", self.supervisor_pid)
            self.supervisor_failures = 0
            # Exits from now on wait for the next one; it handles those already sent.
            self.supervisor_leaving = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor_pid, signal.SIGTERM)
        else:
            self.start_supervisor()

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
        self.loop.call_later(0, self._flush_pending)
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
        self.reload()
        return m.ReloadOk(tuple(errors))

    # -- children ------------------------------------------------------------

    def reap(self) -> None:
        """Reaps every exited child (SIGCHLD); a textbook waitpid loop."""
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            exit_code, signum = (code, None) if code >= 0 else (None, -code)
            core = os.WIFSIGNALED(status) and os.WCOREDUMP(status)
            if pid == self.old_supervisor_pid:
                log.info("previous supervisor (pid %d) exited", pid)
                self.old_supervisor_pid = None
                self.start_supervisor()
                continue
            if pid == self.supervisor_pid:
                what = f"exited with code {exit_code}" if signum is None else \
                    f"killed by signal {signal.Signals(signum).name}"  # fmt: skip
                self._supervisor_exited(what)
                continue
            usage = ResourceUsage(rusage.ru_utime, rusage.ru_stime, max(0, rusage.ru_maxrss))
            if self.children.by_pid(pid) is None:
                log.debug("Unknown process %d exited (%s)", pid, code)
                continue
            self._child_exited(pid, exit_code, signum, core, usage)

    def _child_exited(
        self,
        pid: int,
        exit_code: int | None,
        signum: int | None,
        core: bool,
        rusage: ResourceUsage | None,
    ) -> None:
        child = self.children.by_pid(pid)
        if child is None:
            return
        failpoints.hit("broker.reap.after_wait")
        # What it leaves goes before its record: a crash in between finds the
        # record again, and the next broker cleans up (E-30: no stale state dir).
        starter.clean_up(child, self.ports, self.cgroups)
        failpoints.hit("broker.reap.after_cleanup")
        self.children.remove(pid)
        run_time = max(0.0, time.monotonic() - child.started_mono)
        status = f"exited with code {exit_code}" if signum is None else \
            f"killed by signal {signal.Signals(signum).name}"  # fmt: skip
        log.info("Container %s (pid: %d) %s after %.1fs", child.instance, pid, status, run_time)
        self.history.setdefault(child.instance, History()).last_exit = LastExit(
            exit_code, signum, core, time.time()
        )
        event = m.InstanceExited(child.instance, Pid(pid), exit_code, signum, core,
                                 rusage or ResourceUsage(0.0, 0.0, 0), run_time)  # fmt: skip
        failpoints.hit("broker.reap.before_report")
        sup = self.supervisor
        if sup is not None and sup.phase is Phase.READY and not self.pending and \
                not self.supervisor_leaving:  # fmt: skip
            try:
                self._send(sup, event, 0)
            except (OSError, ChannelClosed):
                self.pending.append(event)
        else:
            self.pending.append(event)
        if self.shutting_down:
            self._maybe_finish_shutdown()

    def _flush_pending(self) -> None:
        sup = self.supervisor
        while self.pending and sup is not None and sup.phase is Phase.READY and \
                not self.supervisor_leaving:  # fmt: skip
            try:
                self._send(sup, self.pending[0], 0)
            except (OSError, ChannelClosed):
                return
            self.pending.popleft()

    # -- re-exec and shutdown --------------------------------------------------

    def reexec(self) -> None:
        """T-1, E-17: exec ourselves in place; children and sockets are kept."""
        log.warning("re-executing lithos_tree (pid %d stays)", os.getpid())
        sup_pid = self.supervisor_pid
        if self.supervisor is not None:
            self._last_requests(self.supervisor.channel.fileno())
        for relay in self.relays.values():
            relay.drain()  # what the supervisor said up to now (its pipe closes at exec)
        for fd in list(self.peers):
            self._drop_peer(fd)  # the supervisor sees EOF and exits; a new one comes
        if self.control is not None:
            self.control.close()
        self.ports.prepare_for_exec()
        state = {
            "ports": self.ports.export(),
            "pending_exits": [asdict(e) for e in self.pending],
            "supervisor_pid": sup_pid,
            # Our own children only (not the orphans of a killed broker, watched
            # through pidfds): they stay ours across the exec (children.py).
            "children": [c.to_json() for c in self.children if c.orphan_pidfd < 0],
            "started_at_wall": self.options.started_at_wall,
        }
        # The mask survives execve: a signal that comes before the new image has
        # its handlers stays pending instead of killing us by its default action
        # (SIGQUIT's is to dump core). start() unblocks them.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self.loop.close()
        failpoints.hit("broker.reexec.before_exec")
        try:
            exec_self(state, keep_fds=[])
        except OSError as e:  # pragma: no cover - exec of our own interpreter failed
            log.error("re-exec failed: %s; carrying on", e)
            self.ports.exec_failed()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def shutdown(self, *, signal_children: bool) -> None:
        """T-38 (SIGTERM: stop every container) and T-39 (SIGINT: the terminal did)."""
        if not self.shutting_down:
            log.warning("shutting down (%d containers)", len(self.children))
        self.shutting_down = True
        if self.supervisor_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor_pid, signal.SIGTERM)
        if signal_children:
            longest = 0.0
            for child in self.children:
                longest = max(longest, child.kill_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
            # Knots enforce kill-timeout themselves (K-41); this is the backstop.
            self.loop.call_later(longest + 5.0, self._kill_stragglers)
        self._maybe_finish_shutdown()

    def _kill_stragglers(self) -> None:
        for child in self.children:
            log.warning("%s: still alive after kill-timeout; SIGKILL", child.instance)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _maybe_finish_shutdown(self) -> None:
        if self.shutting_down and len(self.children) == 0 and self.supervisor_pid is None:
            self.loop.stop()

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
            for suffix in METRIC_SUFFIXES:
                with contextlib.suppress(OSError):
                    (self.master.runtime_dir / f"metrics{suffix}").unlink()


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
