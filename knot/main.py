"""lithos_knot: pid 1 of one container. Builds it in a straight line, then waits.

Usage (made by knot.spawn, never by hand):
    lithos_knot --name SANDBOX/PROCESS.N --spec-fd N [--log-fd N] [--status-fd N] [--init PATH]
                [--sandbox-log-fd N --sandbox-log SETTINGS]
The spec (knot.spec.KnotSpec as JSON) is read from --spec-fd; the stdio log, if
any, is --log-fd; --status-fd (lithos_cmd) gets the service's wait status
at each death (knot.service.report_status). --sandbox-log-fd is the sandbox log
(a file or a syslog socket the spawner opened) and --sandbox-log its settings
(protocol.sandboxlog.SandboxLog.to_arg): the knot's own lines (K-4, K-12, K-41).
The inherited tcp fds already sit at their numbers.
With --init, the native pid 1 (knot/init.c, built by knot.initbin) is opened before
pivot_root and exec'd by fd after setup instead of running knot.service's loop
in Python (the same duties, ~0.1 MB instead of ~9 MB per container).

Rules (STYLE P7): the setup is knot.plan's ops (built and run here, in the
knot that stays Python or was forked); a failing step is ONE line on stderr naming
the step, the path and the config key (plan.error_line), then exit EXIT_SETUP_FAILED.
No classes with state, no threads, no retries, no logging
framework (the sandbox log is one os.write per line, like fd 2; see
service.SANDBOX_LOG). The order is the original's (K-5..K-23, K-50..K-53), except that
pivot_root happens once, here, before the service is forked (so that
restart-process-only can fork again: K-45). Everything imported after
pivot_root must already be loaded: the host's Python library is gone then.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from collections.abc import Callable

from knot import initdesc, plan, service, setup
from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import KnotSpec, SpecError
from protocol import sandboxlog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, TypeVar
    T = TypeVar("T")


def fail(name: str, text: str) -> NoReturn:
    """One line on stderr (and an error in the sandbox log), then exit EXIT_SETUP_FAILED."""
    os.write(2, f"knot[{name}]: {text}\n".encode(errors="replace"))
    for writer in service.SANDBOX_LOG:
        writer.write(sandboxlog.ERROR, service.fatal_message(name, text))
    os._exit(EXIT_SETUP_FAILED)


def warn(name: str, text: str) -> None:
    """One line on stderr and an error in the sandbox log; the setup goes on."""
    os.write(2, f"knot[{name}]: {text}\n".encode(errors="replace"))
    for writer in service.SANDBOX_LOG:
        writer.write(sandboxlog.ERROR, f"[{name}] {text}")


def step(spec: KnotSpec, label: str, key: str, fn: Callable[..., T], *args: object) -> T:
    """Runs one setup step; an error becomes one line naming step, path and key."""
    try:
        return fn(*args)
    except OSError as e:
        path = f"{e.filename}: " if e.filename else ""
        code = errno.errorcode.get(e.errno or 0, str(e.errno))
        detail = f"{path}{code} ({e.strerror})"
    except setup.SetupError as e:
        detail = str(e)
    where = f" ({key} in {spec.container_config})" if key else ""
    fail(spec.name, f"{label}: {detail}{where}")


USAGE = ("lithos_knot --name NAME --spec-fd N [--log-fd N] [--status-fd N] [--init PATH] "
         "[--sandbox-log-fd N --sandbox-log SETTINGS]")
_FLAGS = ("--name", "--spec-fd", "--log-fd", "--status-fd", "--init", "--sandbox-log-fd",
          "--sandbox-log")


def parse_args(argv: list[str]) -> tuple[str, int, int | None, int | None, str | None]:
    """--name NAME --spec-fd N [--log-fd N] [--status-fd N] [--init PATH]; anything else
    is a usage error. Returns name, spec fd, log fd, status fd, native init path.

    --sandbox-log-fd/--sandbox-log are taken here too: they set service.SANDBOX_LOG.
    """
    values: dict[str, str] = {}
    it = iter(argv)
    for flag in it:
        if flag not in _FLAGS or flag in values:
            fail("?", f"usage: unexpected argument {flag!r} ({USAGE})")
        value = next(it, None)
        if value is None:
            fail("?", f"usage: {flag} needs a value")
        values[flag] = value
    if "--name" not in values or "--spec-fd" not in values:
        fail("?", f"usage: {USAGE}")
    try:
        spec_fd = int(values["--spec-fd"])
        log_fd = int(values["--log-fd"]) if "--log-fd" in values else None
        status_fd = int(values["--status-fd"]) if "--status-fd" in values else None
    except ValueError:
        fail(values["--name"], "usage: --spec-fd, --log-fd and --status-fd take fd numbers")
    use_sandbox_log(values["--name"], values.get("--sandbox-log-fd"),
                      values.get("--sandbox-log"))
    return values["--name"], spec_fd, log_fd, status_fd, values.get("--init")


def use_sandbox_log(name: str, fd_text: str | None, settings: str | None) -> None:
    """--sandbox-log-fd/--sandbox-log: the knot's own lines go there (service.SANDBOX_LOG).

    Also called by knot.spawn in a knot forked without exec, with the same values.
    """
    if (fd_text is None) != (settings is None):
        fail(name, "usage: --sandbox-log-fd and --sandbox-log go together")
    if fd_text is None or settings is None:
        return
    try:
        log = sandboxlog.SandboxLog.from_arg(settings)
        fd = int(fd_text)
    except ValueError as e:
        fail(name, f"usage: {e}")
    try:  # our pid as the host sees it (for syslog): /proc is still the host's here
        pid = int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        pid = os.getpid()
    service.SANDBOX_LOG.append(sandboxlog.Writer(fd, log, pid))


def read_spec(name: str, spec_fd: int) -> KnotSpec:
    """Reads the whole spec from its fd (a memfd or a pipe), then closes it."""
    chunks = []
    try:
        offset = 0
        while chunk := os.pread(spec_fd, 65536, offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as e:
        if e.errno != errno.ESPIPE:
            fail(name, f"read spec: fd {spec_fd}: {errno.errorcode.get(e.errno or 0)}")
        while chunk := os.read(spec_fd, 65536):  # a pipe
            chunks.append(chunk)
    os.close(spec_fd)
    try:
        spec = KnotSpec.from_json(b"".join(chunks))
    except SpecError as e:
        fail(name, str(e))
    if spec.name != name:
        fail(name, f"knot spec: name {spec.name!r} does not match --name {name!r}")
    return spec


def exec_native_init(spec: KnotSpec, environ: dict[str, str], log_fd: int | None,
                     status_fd: int | None, init_fd: int,
                     slog: sandboxlog.Writer | None = None) -> str:
    """Hands pid 1 to knot/init.c: the description on a memfd, then fexecve.

    Returns only if the exec failed: why (the caller says what happens next).
    """
    data = initdesc.encode(initdesc.from_spec(spec, environ, log_fd, status_fd, slog))
    desc_fd = os.memfd_create("lithos-init", 0)  # inherited by init.c, which closes it
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(desc_fd, view):]
        # `lithos_knot --name NAME` in the cmdline, for pgrep -f (and broker.children).
        os.execve(init_fd, ["lithos_knot", "--name", spec.name, "--init-fd", str(desc_fd)],
                  {"TERM": os.environ.get("TERM", "dumb")})  # the knot's (T-50)
    except OSError as e:
        why = f"{errno.errorcode.get(e.errno or 0, str(e.errno))} ({e.strerror})"
    os.close(desc_fd)
    os.close(init_fd)
    return why


def main(argv: list[str] | None = None) -> int:
    """The exec'd knot (`python3 -m knot.lithos_knot ...`): parse, read the spec, run()."""
    # K-40: the spawner blocked these before exec; block again for a knot run by hand.
    signal.pthread_sigmask(signal.SIG_BLOCK, service.WAITED_SIGNALS)
    import sys

    name, spec_fd, log_fd, status_fd, init_path = parse_args(
        sys.argv[1:] if argv is None else argv)
    return run(read_spec(name, spec_fd), log_fd, status_fd, init_path)


def run(spec: KnotSpec, log_fd: int | None, status_fd: int | None, init_path: str | None,
        *, python_pid1: bool = True) -> int:
    """Builds the container of `spec` in this process, then becomes its pid 1.

    Called by main() in an exec'd knot, and by knot.spawn in a knot forked without
    exec from its spawner (python_pid1=False): that one must exec the native init
    (init_path), since a Python pid 1 would keep the spawner's heap for the
    container's life; if that exec fails, the setup fails (one line, exit 78).
    """
    for writer in service.SANDBOX_LOG:
        writer.write(sandboxlog.INFO, f"[{spec.name}] Starting container")  # K-12
    init_fd = None  # opened now: after pivot_root the host's paths are gone
    if init_path is not None:
        init_fd = step(spec, "open native init", "", os.open, init_path,
                       os.O_RDONLY | os.O_CLOEXEC)
    elif not python_pid1:
        fail(spec.name, "a forked knot needs the native init")
    ops, environ = plan.build(spec)  # the host-side steps run here
    plan.execute(ops, spec.container_config, functools.partial(fail, spec.name),
                 functools.partial(warn, spec.name))
    if init_fd is not None:
        slog = service.SANDBOX_LOG[0] if service.SANDBOX_LOG else None
        why = exec_native_init(spec, environ, log_fd, status_fd, init_fd, slog)
        if not python_pid1:  # LITHOS_KNOT_SPAWN=exec in the spawner avoids this
            fail(spec.name, f"exec native init: {why}; a forked knot has no Python "
                            "pid 1 to fall back on")
        os.write(2, f"knot[{spec.name}]: exec native init: {why}; "
                    "the Python pid 1 runs instead\n".encode(errors="replace"))
    return service.supervise(spec, environ, log_fd, status_fd)
