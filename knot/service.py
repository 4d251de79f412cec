"""The knot's pid-1 duties once the container is built: run the service and wait.

Owns the service's process (pid 2): its fork, the last steps before its exec
(user namespace, stdio, fds, ids, workdir, environment), and the wait loop that
reaps every zombie, forwards SIGTERM once, enforces kill-timeout, restarts the
service in place for restart-process-only, and picks the knot's exit code.

Rules: event-driven only. SIGTERM, SIGINT and SIGCHLD stay blocked for the
knot's whole life (the spawner blocked them before exec, so none is lost during
setup, K-40) and are taken with sigwaitinfo/sigtimedwait; the only timeouts are
the kill-timeout deadline and the restart-timeout wait. Runs after pivot_root:
everything it needs must be imported before (this module imports only builtin
or already-loaded modules). It never logs through `logging`: the start and death
lines go to the stdio log fd, worded by protocol.stdiolog, and the same messages
to the sandbox log (protocol.sandboxlog, at warn and error as the original), both
byte-identical to the native pid 1's (knot/init.c).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from knot import caps, linux
from knot.exitcodes import EXIT_ABNORMAL, EXIT_KILL_TIMEOUT, EXIT_NORMAL, EXIT_SETUP_FAILED
from knot.spec import IdMap, Kind, KnotSpec
from protocol import sandboxlog, stdiolog

WAITED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})


def is_normal(spec: KnotSpec, status: int, got_sigterm: bool) -> bool:
    """K-42. Unlike the original, exit codes are unsigned (E-46): [200] matches 200."""
    if got_sigterm:
        return True
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGTERM
    code = os.WEXITSTATUS(status)
    if spec.normal_exit_codes:
        return code in spec.normal_exit_codes
    return spec.kind is not Kind.DAEMON and code == 0


def _log(log_fd: int | None, line: bytes) -> None:
    if log_fd is not None:
        os.write(log_fd, line)


def _now() -> datetime:
    # UTC: after pivot_root the host's /etc/localtime is gone.
    return datetime.now(UTC)


# The sandbox log, once knot.main has read its arguments: like fd 2, one per process,
# set once before the first setup step and only written to (os.write) after that.
SANDBOX_LOG: list[sandboxlog.Writer] = []


def _slog(levelno: int, message: str) -> None:
    for writer in SANDBOX_LOG:
        writer.write(levelno, message)


def fatal_message(name: str, text: str) -> str:
    """K-43: `Fatal error running "<name>": <e>`, the sandbox log's line for a knot failure."""
    return f"Fatal error running {stdiolog.rust_quote(name)}: {text}"


def _fail(spec: KnotSpec, text: str) -> None:
    os.write(2, f"knot[{spec.name}]: {text}\n".encode())
    _slog(sandboxlog.ERROR, fatal_message(spec.name, text))
    os._exit(EXIT_SETUP_FAILED)


def _write_maps(pid: int, uid_map: tuple[IdMap, ...], gid_map: tuple[IdMap, ...]) -> None:
    # K-51: the knot (root outside) writes the maps of the service's new user ns.
    for kind, entries in (("uid_map", uid_map), ("gid_map", gid_map)):
        lines = "".join(f"{m.inside} {m.outside} {m.count}\n" for m in entries)
        fd = os.open(f"/proc/{pid}/{kind}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)


def _close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    # Up to the highest open fd, not just the limit: fds opened before a lower
    # RLIMIT_NOFILE was set may sit above it.
    high = max([int(fd) for fd in os.listdir("/proc/self/fd")] + [os.sysconf("SC_OPEN_MAX")])
    os.closerange(low, high + 1)


def _exec_service(spec: KnotSpec, environ: Mapping[str, str], out_fd: int | None,
                  report_fd: int) -> None:
    """In the forked child: the last steps, then exec. On failure, report and _exit."""
    # `what` is "<action>\t<config key>" for the one line the knot prints on failure.
    what = "prepare the service\t"
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # K-50: a dead knot kills us
        if spec.uid_map or spec.gid_map:
            what = "unshare user namespace\tuid-map"
            linux.unshare(linux.CLONE_NEWUSER)
            os.kill(os.getpid(), signal.SIGSTOP)  # the knot writes the maps, then SIGCONTs
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python, default for the app
            signal.signal(sig, signal.SIG_DFL)
        if out_fd is not None:
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
        _close_all_but({0, 1, 2, report_fd, *spec.tcp_fds})
        for fd in spec.tcp_fds:
            os.set_inheritable(fd, True)
        env = dict(environ)
        for var in spec.pid_env_vars:  # V-15, V-17: the service's pid in its namespace
            env[var] = str(os.getpid())
        if spec.net_bind_service:
            what = "keep CAP_NET_BIND_SERVICE\tbridged-network"
            caps.keep_caps_across_setuid()
        what = f"setgroups/setgid {spec.gid}/setuid {spec.uid}\tuser-id"
        os.setgroups([])  # supplementary groups cleared (the original kept root's)
        os.setgid(spec.gid)
        os.setuid(spec.uid)
        if spec.net_bind_service:  # K-30: only this capability is left, also ambient
            what = "keep CAP_NET_BIND_SERVICE\tbridged-network"
            caps.raise_net_bind_service()
        what = f"chdir {spec.workdir}\tworkdir"
        os.chdir(spec.workdir)
        what = f"exec {spec.executable}\texecutable"
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(spec.executable, list(spec.argv), env)
    except OSError as e:
        os.write(report_fd, f"{what}\t{e.errno or 0}".encode())
    except BaseException as e:  # noqa: BLE001 - must never return into the knot's code
        os.write(report_fd, f"{what}\t{e!r}".encode())
    os._exit(127)


def start_service(spec: KnotSpec, environ: Mapping[str, str], out_fd: int | None) -> int:
    """Forks the service (pid 2 at the first start); exits the knot if its exec fails."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _exec_service(spec, environ, out_fd, report_w)
    os.close(report_w)
    if spec.uid_map or spec.gid_map:
        # The child stops itself after unshare(CLONE_NEWUSER); waitpid(WUNTRACED) sees it.
        _, status = os.waitpid(pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            try:
                _write_maps(pid, spec.uid_map, spec.gid_map)
            except OSError as e:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = e.errno or 0
                _fail(spec, f"start service: write {e.filename}: {errno.errorcode.get(code)} "
                            f"({os.strerror(code)}) (uid-map in {spec.container_config})")
            os.kill(pid, signal.SIGCONT)
        else:
            os.close(report_r)
            _fail(spec, f"start service: {stdiolog.status_text_of(status)} before exec "
                        f"(uid-map in {spec.container_config})")
    chunks = []
    while chunk := os.read(report_r, 4096):  # EOF at exec: the pipe is CLOEXEC
        chunks.append(chunk)
    os.close(report_r)
    if chunks:
        os.waitpid(pid, 0)
        action, key, err = b"".join(chunks).decode(errors="replace").split("\t", 2)
        if err.isdigit():
            code = int(err)
            err = f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
        _fail(spec, f"start service: {action}: {err} ({key} in {spec.container_config})")
    return pid


def _reap() -> list[tuple[int, int]]:
    """Every zombie, as pid 1 must (orphans of the container are ours)."""
    dead: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return dead
        if pid == 0:
            return dead
        dead.append((pid, status))


def _wait(timeout_s: float | None) -> int | None:
    """The next waited signal, or None when timeout_s passed."""
    if timeout_s is None:
        return signal.sigwaitinfo(WAITED_SIGNALS).si_signo
    info = signal.sigtimedwait(WAITED_SIGNALS, max(timeout_s, 0.0))
    return None if info is None else info.si_signo


def _open_output(spec: KnotSpec, log_fd: int | None) -> tuple[int | None, bool]:
    """K-53: the fd for the service's stdout/stderr and whether we must close it."""
    if spec.interactive:
        return None, False
    if spec.stdout_stderr_file is not None:
        # Opened inside the container, at each start (decision 3, K-60).
        path = spec.stdout_stderr_file
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o644), True
        except OSError as e:
            code = e.errno or 0
            _fail(spec, f"open stdout-stderr-file: {path}: {errno.errorcode.get(code)} "
                        f"({os.strerror(code)}) (stdout-stderr-file in {spec.container_config})")
    return log_fd, False


def report_status(status_fd: int | None, status: int) -> None:
    """lithos_cmd's --status-fd: the service's raw wait status, one decimal line."""
    if status_fd is not None:
        try:  # noqa: SIM105 - contextlib is not loaded after pivot_root
            os.write(status_fd, f"{status}\n".encode())
        except OSError:
            pass  # lithos_cmd is gone (EPIPE): the exit code still tells normal/abnormal


def supervise(spec: KnotSpec, environ: Mapping[str, str], log_fd: int | None,
              status_fd: int | None = None) -> int:
    """K-41: start the service, wait, restart in place if asked; returns the exit code."""
    should_exit = not (spec.kind is Kind.DAEMON and spec.restart_process_only)
    got_sigterm = False
    exit_code = EXIT_ABNORMAL
    cmd = [spec.executable, *spec.argv[1:]]
    while True:
        out_fd, owned = _open_output(spec, log_fd)
        _slog(sandboxlog.WARN, stdiolog.starting_message(spec.name, cmd))
        _log(log_fd, stdiolog.start_line(spec.name, cmd, _now()))
        started = time.monotonic()
        pid = start_service(spec, environ, out_fd)
        if owned and out_fd is not None:
            os.close(out_fd)
        status: int | None = None
        deadline: float | None = None
        while status is None:
            signo = _wait(None if deadline is None else deadline - time.monotonic())
            if signo is None:  # STOPPING: kill-timeout passed with the service alive
                uptime = time.monotonic() - started
                _slog(sandboxlog.ERROR,
                      stdiolog.kill_timeout_message(spec.name, spec.kill_timeout_s, uptime))
                _log(log_fd, stdiolog.kill_timeout_line(spec.name, spec.kill_timeout_s, uptime,
                                                        _now()))
                os._exit(EXIT_KILL_TIMEOUT)  # pid 1 exits: the kernel kills the rest
            if signo == signal.SIGINT:
                should_exit = True  # not forwarded (K-41)
            elif signo == signal.SIGTERM:
                should_exit = True
                if not got_sigterm:  # one SIGTERM per start, to the service only
                    got_sigterm = True
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + spec.kill_timeout_s
            else:
                for dead, dead_status in _reap():
                    if dead == pid:
                        status = dead_status
        uptime = time.monotonic() - started
        normal = is_normal(spec, status, got_sigterm)
        exit_code = EXIT_NORMAL if normal else EXIT_ABNORMAL
        _slog(sandboxlog.ERROR,
              stdiolog.death_message(spec.name, stdiolog.status_text_of(status), uptime))
        _log(log_fd, stdiolog.death_line(spec.name, stdiolog.status_text_of(status), uptime,
                                         _now()))
        report_status(status_fd, status)
        if should_exit:
            return exit_code
        # Daemon with restart-process-only: same container, new service process,
        # restart-timeout measured from the previous start (E-13).
        remaining = spec.restart_timeout_s - uptime
        while remaining > 0:
            signo = _wait(remaining)
            if signo is None:
                break
            if signo == signal.SIGTERM:
                return EXIT_NORMAL
            if signo == signal.SIGINT:
                return exit_code
            _reap()
            remaining = spec.restart_timeout_s - (time.monotonic() - started)
