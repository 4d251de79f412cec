"""lithos_cmd: run one `kind: Command` entry of a sandbox in a container, in the foreground.

Usage: lithos_cmd [-C/--config/--master MASTER] [--log-stderr] [--log-level L]
                  SANDBOX NAME [ARG...]

Owns the command's whole life (inventory 2.3): read the master, sandbox, process
and container configs itself (CMD-3: no lithos_tree needed), create the master
dirs (M-1), plan (broker/cmd_plan.py), create the cgroup, state dir and stdio
log, spawn the knot (knot/spawn.py) as our child, wait, clean up.

Rules:
- Exit code: the command's own (decision 3); killed by signal N -> 128+N; a
  setup failure -> 1 with one line on stderr (`Fatal error: ...`, or the knot's
  `knot[NAME]: ...`); usage errors -> 2. The knot reports the service's wait
  status on a status pipe (knot --status-fd), since its own exit code only says
  normal/abnormal (K-42).
- stdin is always inherited; stdout/stderr are the terminal's with
  `interactive: true`, else the service's go to `<stdio-log-dir>/<sandbox>.log`
  (the knot's own errors still come to our stderr).
- SIGTERM, SIGINT and SIGHUP are taken through signal.set_wakeup_fd and become
  one SIGTERM to the knot (it forwards SIGTERM to the command and enforces
  kill-timeout; it does not forward SIGINT, K-41). We then wait for the knot and
  remove the state dir and cgroup as after a normal exit; the mounts live in the
  knot's mount namespace and go with it. Waiting is select() on the knot's pidfd
  and the wakeup pipe: no polling. If lithos_cmd itself is SIGKILLed, the knot
  dies by PR_SET_PDEATHSIG (T-52) and lithos_tree removes the leftovers at start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys

from broker import netstart
from broker.cgroups import CgroupError, CgroupHandle, CgroupLayout, detect
from broker.cmd_plan import CmdError, check_names, find_command, plan_command
from broker.configs import ConfigCache
from broker.daemon import StartupError, make_master_dirs
from broker.netstart import ContainerNet, NetworkError
from broker.policy import StartPlan
from broker.sandboxlogs import SandboxLogs
from broker.starter import remove_state_dir
from knot.exitcodes import EXIT_KILL_TIMEOUT, EXIT_SETUP_FAILED
from knot.spawn import spawn_knot
from protocol.config import (
    ConfigError,
    MasterConfig,
    SandboxConfig,
    load_master,
    process_config_path,
)
from protocol.config import sandbox_log_path as sandbox_log_file
from protocol.errors import Denied
from protocol.logs import resolve_level, setup_logging, syslog_ident
from protocol.stdiolog import StdioLogError, open_stdio_log

log = logging.getLogger("lithos_cmd")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lithos_cmd",
        description="Runs a `kind: Command` entry of a sandbox in a container and exits "
        "with its exit code (128+N if it was killed by signal N).",
        epilog="SIGTERM, SIGINT or SIGHUP stop the command (SIGTERM, then SIGKILL after its "
        "kill-timeout) and remove its state dir and cgroup.",
    )
    p.add_argument(
        "-C",
        "--config",
        "--master",
        dest="config",
        metavar="MASTER",
        default="/etc/lithos/master.yaml",
        help="master config",
    )
    p.add_argument("--log-stderr", action="store_true", help="also log to stderr")
    p.add_argument("--log-level", help="error, warn, info, debug or trace")
    p.add_argument("--version", action="version", version="lithos 0.1.0")
    p.add_argument("sandbox", metavar="SANDBOX", help="sandbox name")
    p.add_argument(
        "name", metavar="NAME", help="a kind: Command entry of the sandbox's process config"
    )
    p.add_argument(
        "args", metavar="ARG", nargs=argparse.REMAINDER, help="appended to the arguments"
    )
    return p.parse_args(argv)


def load_plan(args: argparse.Namespace,
              pid: int) -> tuple[StartPlan, MasterConfig, SandboxConfig]:
    """Steps 1-9: the configs, read by us; logging set up to the sandbox's log file.

    Raises: CmdError.
    """
    try:
        master = load_master(args.config)
    except ConfigError as e:
        raise CmdError(f"Error reading master config: {e}") from None
    try:
        make_master_dirs(master)
    except StartupError as e:
        raise CmdError(str(e)) from None
    check_names(args.sandbox, args.name)
    configs = ConfigCache(master)
    try:
        sandbox = configs.sandbox(args.sandbox)
    except Denied as e:
        raise CmdError(f"Error reading sandbox config: {e.reason}") from None
    setup_logging(
        log_file=sandbox_log_file(master, sandbox),
        level=resolve_level(
            args.log_level,
            sandbox.log_level.value if sandbox.log_level else None,
            master.log_level.value if master.log_level else None,
        ),
        log_stderr=args.log_stderr,
        syslog_facility=master.syslog_facility,
        syslog_ident=syslog_ident(master.syslog_app_name, sandbox.name),
    )
    try:
        processes = configs.processes(sandbox)
    except Denied as e:
        raise CmdError(f"Error reading children config: {e.reason}") from None
    process = find_command(args.name, sandbox, processes, str(process_config_path(master, sandbox)))
    try:
        container, _ = configs.container(sandbox, process)
    except Denied as e:
        raise CmdError(f"can't instantiate: {e.reason}") from None
    plan = plan_command(args.name, pid, args.args, master, sandbox, process, container)
    return plan, master, sandbox


class Signals:
    """SIGTERM/SIGINT/SIGHUP queued on a wakeup pipe; handlers restored by close()."""

    def __init__(self) -> None:
        self.read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._write_fd = write_fd
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._old = {sig: signal.signal(sig, _queue_only) for sig in FORWARDED}

    def take(self) -> list[int]:
        """The signals that came since the last call."""
        try:
            return list(os.read(self.read_fd, 4096))
        except BlockingIOError:
            return []

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self.read_fd, self._write_fd):
            os.close(fd)
        self.read_fd = self._write_fd = -1


def _queue_only(signo: int, frame: object) -> None:
    """The wakeup fd carries the signal number; the main loop acts on it."""


def wait_knot(pid: int, signals: Signals) -> int:
    """Waits for the knot (pidfd + wakeup fd); turns our signals into one SIGTERM each."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, signals.read_fd], [], [])
            if signals.read_fd in ready:
                for signo in signals.take():
                    if signo in FORWARDED:
                        log.info(
                            "%s: got %s, stopping the command", pid, signal.Signals(signo).name
                        )
                        with contextlib.suppress(ProcessLookupError):  # already gone
                            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if pidfd in ready:
                return os.waitpid(pid, 0)[1]
    finally:
        os.close(pidfd)


def read_status(fd: int) -> int | None:
    """The last wait status the knot reported on its status pipe, if any."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    lines = data.split()
    return int(lines[-1]) if lines else None


def exit_code(name: str, knot_status: int, service_status: int | None) -> int:
    """Decision 3: the command's own code; 128+N for signal N; 1 for a failed setup."""
    if service_status is not None:
        code = os.waitstatus_to_exitcode(service_status)
        return code if code >= 0 else 128 - code
    knot_code = os.waitstatus_to_exitcode(knot_status)
    if knot_code == EXIT_KILL_TIMEOUT:  # the knot exited; the kernel SIGKILLed the command
        print(
            f"Fatal error: Command {name} did not stop within kill-timeout and was killed",
            file=sys.stderr,
        )
        return 128 + signal.SIGKILL
    if knot_code != EXIT_SETUP_FAILED:  # the knot already printed its one line otherwise
        how = (
            f"exited with code {knot_code}"
            if knot_code >= 0
            else (f"was killed by signal {signal.Signals(-knot_code).name}")
        )
        print(f"Fatal error: lithos_knot of {name} {how} before the command ended", file=sys.stderr)
    return 1


def run(plan: StartPlan, cgroups: CgroupLayout | None, signals: Signals,
        sandbox_log: tuple[int, str] | None = None) -> int:
    """Carries out `plan`, waits, cleans up; returns lithos_cmd's exit code.

    sandbox_log: (fd, settings) for the knot's own lines (broker.sandboxlogs); closed here.
    """
    group: CgroupHandle | None = None
    net: ContainerNet | None = None
    log_fd = status_r = status_w = -1
    slog_fd = -1 if sandbox_log is None else sandbox_log[0]
    try:
        try:
            if plan.network is not None:  # K-30: its own netns, made like lithos_tree's
                net = netstart.prepare(plan.network)
            if cgroups is not None and plan.cgroup is not None:
                group = cgroups.create(plan.cgroup)
                group.set_limits(plan.memory_limit, plan.cpu_shares)
            log_fd = open_stdio_log(plan.stdio_log.parent, plan.stdio_log.stem)
            plan.state_dir.mkdir(parents=True, exist_ok=True)
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            pid = spawn_knot(
                plan.spec,
                inherited_fds=net.fds if net is not None else {},
                stdin=0,
                stdout=1,
                stderr=2,
                stdio_log=log_fd,
                pdeathsig=True,
                status_fd=status_w,
                netns_fd=net.netns_fd if net is not None else None,
                sandbox_log=sandbox_log,
                # In its group before it forks anything; if that fails the knot
                # is killed (no limits: the command must not run).
                before_setup=None if group is None else group.add,
            )
        except (CgroupError, StdioLogError, OSError, ValueError, NetworkError) as e:
            raise CmdError(f"Can't run {plan.name}: {e}") from None
        os.close(status_w)
        status_w = -1
        if net is not None:
            net.close()  # the knot holds the netns and the sockets now
        os.set_blocking(status_r, False)  # read once the knot is gone: never wait on it
        log.info("%s: started, knot pid %d", plan.name, pid)
        knot_status = wait_knot(pid, signals)
        service_status = read_status(status_r)
        code = exit_code(plan.name, knot_status, service_status)
        log.info("%s: ended, exit code %d", plan.name, code)
        return code
    finally:
        for fd in (log_fd, status_r, status_w, slog_fd):
            if fd >= 0:
                os.close(fd)
        if group is not None:
            try:
                group.remove()
            except CgroupError as e:
                log.warning("%s: %s", plan.name, e)
        remove_state_dir(plan.state_dir)
        if net is not None:
            # The veth too, as lithos_tree does when a container ends.
            netstart.discard(net, f"{plan.name} ended")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signals = Signals()  # before anything is created: a Ctrl-C from now on cleans up
    try:
        plan, master, sandbox = load_plan(args, os.getpid())
        cgroups = None
        if master.cgroup_name is not None:
            try:
                cgroups = detect(master.cgroup_controllers)
            except CgroupError as e:
                raise CmdError(str(e)) from None
        if any(sig in FORWARDED for sig in signals.take()):
            return 128 + signal.SIGTERM  # stopped before the command started
        # The knot's own lines (K-4): lithos_cmd passes it no --log-level (2.3 step 10).
        return run(plan, cgroups, signals, SandboxLogs(master, None).open(sandbox))
    except CmdError as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        if logging.getLogger().handlers:  # the sandbox's log is set up (step 5)
            log.error("Fatal error: %s", e)
        return 1
    finally:
        signals.close()


if __name__ == "__main__":
    sys.exit(main())
