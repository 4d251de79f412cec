"""The supervisor process: the clock, the channel, and the execution of actions.

Owns the only impure part of supervisor/: it reads time.monotonic(), talks to
the broker over the inherited socketpair, and turns wire messages into
lifecycle events and lifecycle actions into requests. Every decision is in
lifecycle.py and plan.py. Rules: runs as the unprivileged supervisor-user with
no capabilities; touches no kernel resource; on a broken channel it exits and
the broker starts a fresh one, which takes over from the broker's snapshot.
"""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import time
from collections.abc import Callable

from protocol import failpoints
from protocol import messages as m
from protocol.channel import Channel
from protocol.config import ConfigError, MasterConfig, load_master
from protocol.errors import ChannelClosed, ProtocolViolation
from protocol.logs import resolve_level, setup_logging
from protocol.loop import Loop
from protocol.records import Pid as RecordPid
from protocol.records import Role
from protocol.structs import dataclass
from supervisor import plan as pl
from supervisor.desired import load_desired
from supervisor.events import (
    Action,
    CleanUp,
    Event,
    Exited,
    ExitStatus,
    Pid,
    Signal,
    Spawn,
    Started,
    StartRefused,
    TimerFired,
    WakeAt,
)
from supervisor.lifecycle import Instance, State, step
from supervisor.metrics import Metrics
from supervisor.metrics_file import MetricsFiles
from supervisor.privileges import drop_privileges

log = logging.getLogger("supervisor")

@dataclass(slots=True)
class Pending:
    """A request in flight and what to do with its reply."""

    on_reply: Callable[[m.Message], None]


class Supervisor:
    def __init__(self, master: MasterConfig, channel: Channel,
                 metrics_base: str | None = None) -> None:
        self.master = master
        self.channel = channel
        self.loop = Loop()
        self.instances: dict[str, Instance] = {}
        self.pending: dict[int, Pending] = {}
        self.ids = itertools.count(1)
        self.ready = False
        self.publish_due = False
        self.channel_closed = False
        self.send_broken = False
        self.metrics = Metrics()
        self.metric_files = MetricsFiles(master.runtime_dir, metrics_base)  # X-M1

    # -- requests --------------------------------------------------------

    def request(self, msg: m.Message, on_reply: Callable[[m.Message], None]) -> None:
        request_id = next(self.ids)
        self.pending[request_id] = Pending(on_reply)
        self.channel.send(msg, request_id)

    def call(self, msg: m.Message) -> m.Message:
        """A blocking request, used only before the loop runs (handshake)."""
        request_id = next(self.ids)
        self.channel.send(msg, request_id)
        while True:
            got = self.channel.recv()
            if got.request_id == request_id:
                return got.message
            if isinstance(got.message, m.InstanceExited):  # cannot happen before Ready
                log.warning("early event ignored: %s", got.message)

    # -- the machines --------------------------------------------------------

    def feed(self, name: str, event: Event) -> None:
        inst = self.instances.get(name)
        if inst is None:
            log.debug("%s: %s for an unknown instance ignored", name, type(event).__name__)
            return
        t = step(inst, event)
        self.instances[name] = t.instance
        if t.log is not None:
            log.log(t.log.level, t.log.fmt, *t.log.args)
        self.metrics.record(inst, t)
        try:
            self.execute(t.actions)
        finally:  # what was recorded happened, even if the channel broke meanwhile
            self.metrics_changed()

    def metrics_changed(self) -> None:
        """Publishes once at the end of this loop iteration, however many events it
        handled (the files are rendered and compared in full at each publish)."""
        if not self.publish_due:
            self.publish_due = True
            self.loop.call_later(0, self.publish_metrics)

    def publish_metrics(self) -> None:
        """Writes the metric files (levels are kept current by Metrics.record)."""
        self.publish_due = False
        self.metric_files.publish(self.metrics.samples())

    def execute(self, actions: tuple[Action, ...] | list[Action]) -> None:
        """Sends the requests. Once the broker closed the channel (its re-exec), the
        events already queued are still handled and counted, but nothing is sent: a
        Spawn that was not sent is not counted as started (X-M6)."""
        for action in actions:
            if not self.send_broken or isinstance(action, WakeAt):
                try:
                    self._execute_one(action)
                    continue
                except (ChannelClosed, BrokenPipeError, ConnectionResetError):
                    self.send_broken = True
            if isinstance(action, Spawn):
                self.metrics.unstart(action.instance)

    def _execute_one(self, action: Action) -> None:
        match action:
            case Spawn(instance=name, fingerprint=fp):
                self.request(m.StartInstance(name, fp), self._on_start_reply(name))
                failpoints.hit("supervisor.start.after_request")
            case Signal(instance=name, pid=pid, signum=signum):
                self.request(
                    m.SignalInstance(name, RecordPid(pid), signal.Signals(signum)),
                    self._on_signal_reply(name),
                )
            case WakeAt(instance=name, deadline=deadline):
                self.loop.call_at(deadline, self._waker(name))
            case CleanUp(instance=name):
                self.request(m.CleanUpInstance(name), self._on_cleanup_reply(name))

    def _waker(self, name: str) -> Callable[[], None]:
        return lambda: self.feed(name, TimerFired(time.monotonic()))

    def _on_start_reply(self, name: str) -> Callable[[m.Message], None]:
        def on_reply(reply: m.Message) -> None:
            failpoints.hit("supervisor.start.after_reply")
            now = time.monotonic()
            if isinstance(reply, m.StartInstanceOk):
                self.feed(name, Started(Pid(reply.pid), now))
            elif isinstance(reply, m.RequestDenied):
                self.feed(name, StartRefused(f"{reply.code.value}: {reply.reason}", now))

        return on_reply

    def _on_signal_reply(self, name: str) -> Callable[[m.Message], None]:
        def on_reply(reply: m.Message) -> None:
            if isinstance(reply, m.RequestDenied):
                log.info("%s: signal refused: %s", name, reply.reason)

        return on_reply

    def _on_cleanup_reply(self, name: str) -> Callable[[m.Message], None]:
        def on_reply(reply: m.Message) -> None:
            if isinstance(reply, m.RequestDenied):
                log.info("%s: clean-up refused: %s", name, reply.reason)

        return on_reply

    # -- start-up and loop ---------------------------------------------------

    def take_over(self) -> None:
        """Handshake, snapshot, first reconciliation, then Ready."""
        hello = self.call(m.Hello(m.PROTOCOL_VERSION, Role.SUPERVISOR))
        if not isinstance(hello, m.HelloOk):
            raise SystemExit(f"supervisor: broker refused hello: {hello}")
        snap = self.call(m.GetSnapshot())
        if not isinstance(snap, m.Snapshot):
            raise SystemExit(f"supervisor: no snapshot: {snap}")
        snapshot = pl.Snapshot(
            children=tuple(
                pl.Child(c.instance, Pid(c.pid), c.fingerprint, c.started_at_monotonic)
                for c in snap.children
            ),
            missed_exits=tuple(
                pl.MissedExit(e.instance, Pid(e.pid), ExitStatus(e.exit_code, e.signal))
                for e in snap.pending_exits
            ),
        )
        desired = load_desired(self.master)
        now = time.monotonic()
        result = pl.reconcile(desired.instances, desired.failures, {}, now, snapshot=snapshot)
        self.instances = dict(result.instances)
        entries = sorted(desired.entries | {(d.sandbox, d.process)
                                            for d in desired.instances.values()})  # fmt: skip
        self.metrics.configure(entries, sandboxes=desired.sandboxes,
                               containers=len(desired.instances))  # fmt: skip
        self.metrics.restore(self.metric_files.read_previous())
        self.metrics.master.restarts += 1
        for s in result.steps:
            self.metrics.record(s.before, s.transition)
            if s.transition.log is not None:
                line = s.transition.log
                log.log(line.level, line.fmt, *line.args)
        for change in result.changes:
            log.info("%s", change)
        self.channel.setblocking(False)
        self.loop.add_reader(self.channel.fileno(), self.on_readable)
        self.execute(result.actions)
        # Ready tells the broker the snapshot's exits are ours to count: it keeps
        # them for the next supervisor until then. Sent before the publish, so a
        # kill in between loses them instead of counting them twice.
        self.request(m.SupervisorReady(), lambda _r: self._ready(len(desired.instances)))
        self.metrics.set_levels(self.instances.values())
        self.publish_metrics()

    def _ready(self, wanted: int) -> None:
        self.ready = True
        running = sum(1 for i in self.instances.values() if i.state is State.RUNNING)
        log.info("supervisor ready: %d instances wanted, %d running", wanted, running)

    def on_readable(self) -> None:
        while True:
            try:
                got = self.channel.try_recv()
            except (ChannelClosed, ProtocolViolation) as e:
                log.warning("supervisor: broker channel closed (%s); exiting", e)
                self.channel_closed = True
                self.loop.stop()
                return
            if got is None:
                return
            for fd in got.fds:
                fd.close()
            msg = got.message
            if isinstance(msg, m.InstanceExited):
                failpoints.hit("supervisor.exit.before_restart")
                status = ExitStatus(msg.exit_code, msg.signal)
                self.feed(msg.instance, Exited(Pid(msg.pid), status, time.monotonic()))
                continue
            pending = self.pending.pop(got.request_id, None)
            if pending is not None:
                pending.on_reply(msg)

    def run(self) -> None:
        self.loop.on_signal(signal.SIGTERM, lambda _s: self.loop.stop())
        self.loop.on_signal(signal.SIGINT, lambda _s: self.loop.stop())
        self.take_over()
        self.loop.run()
        # Stopped by a signal (a reload): the broker sends no more exits, so those
        # already queued are handled, and counted, here, not lost (X-M6).
        if not self.channel_closed:
            self.on_readable()
        if self.publish_due:  # the loop stopped before its deferred publish ran
            self.publish_metrics()


USAGE = ("usage: lithos-supervisor --config MASTER --fd N (the broker's socketpair end) "
         "[--user UID:GID (dropped to before reading anything)] [--log-level LEVEL] "
         "[--log-stderr] [--metrics-base PATH (the cantal files' base, X-M1: "
         "<runtime-dir>/metrics by default)]")
_VALUED = ("--config", "--fd", "--user", "--log-level", "--metrics-base")


class UsageError(Exception):
    """The command line is not the one broker/daemon.py builds; the message says why."""


@dataclass(slots=True)
class Args:
    """The supervisor's command line, as broker/daemon.py builds it."""

    config: str
    fd: int
    user: str | None = None
    log_level: str | None = None
    log_stderr: bool = False
    metrics_base: str | None = None  # the broker's protocol.metricpaths.metrics_base


def parse_args(argv: list[str]) -> Args:
    """The command line broker/daemon.py builds (`--name value` or `--name=value`).

    Not argparse: only the broker starts us, and argparse with gettext would stay
    in every supervisor's memory (about 0.4 MB) for these six options.
    """
    values: dict[str, str] = {}
    log_stderr = False
    rest = iter(argv)
    for arg in rest:
        name, eq, value = arg.partition("=")
        if name == "--log-stderr" and not eq:
            log_stderr = True
        elif name in _VALUED:
            following = value if eq else next(rest, None)
            if following is None:
                raise UsageError(f"{name} needs a value")
            values[name] = following
        else:
            raise UsageError(f"unknown argument {arg!r}")
    for name in ("--config", "--fd"):
        if name not in values:
            raise UsageError(f"{name} is required")
    try:
        fd = int(values["--fd"])
    except ValueError:
        raise UsageError(f"--fd: {values['--fd']!r} is not a number") from None
    return Args(values["--config"], fd, values.get("--user"), values.get("--log-level"),
                log_stderr, values.get("--metrics-base"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"{USAGE}\nlithos-supervisor: error: {e}", file=sys.stderr)
        return 2
    try:
        failpoints.arm_from_environ()
    except failpoints.FailpointError as e:
        print(f"supervisor: Fatal error: {e}", file=sys.stderr)
        return 1
    if args.user:
        uid, gid = (int(x) for x in args.user.split(":"))
        drop_privileges(uid, gid)
    try:
        master = load_master(args.config)
    except ConfigError as e:
        print(f"supervisor: Fatal error: {e}", file=sys.stderr)
        return 1
    level = resolve_level(args.log_level, None, master.log_level.value)
    # Our stderr is a pipe the broker relays into its own log (broker/logrelay.py):
    # we may not open root's files, and its handlers know rotation and syslog.
    setup_logging(log_file=None, level=level, log_stderr=True, syslog_facility=None,
                  syslog_ident=master.syslog_app_name)  # fmt: skip
    channel = Channel.from_fileno(args.fd)
    sup = Supervisor(master, channel, args.metrics_base)
    try:
        sup.run()
    except (ChannelClosed, OSError) as e:
        log.warning("supervisor: %s; exiting", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
