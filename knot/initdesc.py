"""The description the spawner (or the Python knot) hands to the native pid 1 (knot/init.c).

Owns its format: NUL-terminated fields in a fixed order (encode() below), integers
in decimal, each list as its length then its items, starting with the magic
`lithos-init/3` and ending with `end`. After the service's fields come the setup's:
pdeathsig, the spawner's pidfd, the netns fd, unshare, then knot.plan's ops, each
`name label key args...` (plan.ARGS gives the count); all off and no ops when a
Python knot did the setup and execs init.c afterwards. Everything is decided here, in Python: the
quoted name and command for the stdio-log lines (protocol.stdiolog's quoting, so
that both pid 1s write byte-identical lines), the environment, the id maps as the
text written to /proc/PID/uid_map, the sandbox log's settings and syslog tag
(protocol.sandboxlog). init.c only parses and executes it.

Rules: pure (no I/O). decode() is as strict as init.c (any difference is a bug;
tests/unit/knot/test_initdesc.py feeds both the same malformed input) and raises
DescriptionError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping

from knot.plan import ARGS, CHECKS, Op
from knot.spec import IdMap, Kind, KnotSpec
from protocol.sandboxlog import Writer
from protocol.stdiolog import command_text, rust_quote, seconds_text
from protocol.structs import dataclass

MAGIC = "lithos-init/3"
MAX_LIST = 65536
MAX_NS = 86400 * 10**9


class DescriptionError(ValueError):
    """Malformed description; the message names the field."""


@dataclass(frozen=True, slots=True)
class InitDescription:
    """What the native pid 1 (init.c) is told about its one service."""

    name: str
    quoted_name: str          # rust_quote(name)
    command_text: str         # command_text([executable, *argv[1:]])
    container_config: str
    kind: Kind
    restart_process_only: bool
    kill_timeout_ns: int
    kill_timeout_text: str    # seconds_text(kill-timeout)
    restart_timeout_ns: int
    normal_exit_codes: tuple[int, ...]
    log_fd: int               # -1: no stdio log
    status_fd: int            # -1: none; else lithos_cmd's, one wait status line per death
    output: str               # "log", "inherit" (interactive) or "file"
    output_file: str          # the stdout-stderr-file path when output is "file", else ""
    uid: int
    gid: int
    uid_map: str              # "0 200000 65536\n"...; both "" when no user namespace
    gid_map: str
    workdir: str
    executable: str
    argv: tuple[str, ...]
    environ: tuple[str, ...]  # "NAME=value"
    pid_env_vars: tuple[str, ...]
    tcp_fds: tuple[int, ...]
    net_bind_service: bool = False  # keep CAP_NET_BIND_SERVICE across setuid (K-30)
    # The sandbox log (protocol.sandboxlog): fd -1 when there is none.
    sandbox_log_fd: int = -1
    sandbox_log_level: int = 0    # lines below are not written
    sandbox_log_facility: int = -1  # -1: the file format; else syslog datagrams
    sandbox_log_tag: str = ""     # syslog: "<ident>[<host pid>]"
    sandbox_log_gmtoff: int = 0   # syslog: seconds east of UTC for the time stamp
    # The setup, for a knot spawned straight into init.c (knot.spawn); all off when
    # a Python knot did the setup and execs init.c afterwards.
    pdeathsig: bool = False       # PR_SET_PDEATHSIG=SIGKILL, then is the parent alive?
    parent_pidfd: int = -1        # the spawner's pidfd, polled after the prctl
    netns_fd: int = -1            # bridged (K-30): setns to it first
    unshare: bool = False         # unshare mount, uts and ipc namespaces
    ops: tuple[Op, ...] = ()      # knot.plan's ops, run before the service starts


def _map_text(entries: tuple[IdMap, ...]) -> str:
    return "".join(f"{m.inside} {m.outside} {m.count}\n" for m in entries)


def from_spec(spec: KnotSpec, environ: Mapping[str, str], log_fd: int | None,
              status_fd: int | None = None, slog: Writer | None = None, *,
              pdeathsig: bool = False, parent_pidfd: int = -1, netns_fd: int = -1,
              unshare: bool = False, ops: tuple[Op, ...] = ()) -> InitDescription:
    """What supervise(spec, environ, log_fd, status_fd, slog) would do, as data for init.c;
    with the setup (the keyword arguments) when init.c is to do it too."""
    if spec.interactive:
        output, output_file = "inherit", ""
    elif spec.stdout_stderr_file is not None:
        output, output_file = "file", spec.stdout_stderr_file
    else:
        output, output_file = "log", ""
    return InitDescription(
        name=spec.name, quoted_name=rust_quote(spec.name),
        command_text=command_text([spec.executable, *spec.argv[1:]]),
        container_config=spec.container_config, kind=spec.kind,
        restart_process_only=spec.restart_process_only,
        kill_timeout_ns=round(spec.kill_timeout_s * 1e9),
        kill_timeout_text=seconds_text(spec.kill_timeout_s),
        restart_timeout_ns=round(spec.restart_timeout_s * 1e9),
        normal_exit_codes=spec.normal_exit_codes,
        log_fd=-1 if log_fd is None else log_fd,
        status_fd=-1 if status_fd is None else status_fd, output=output, output_file=output_file,
        uid=spec.uid, gid=spec.gid,
        uid_map=_map_text(spec.uid_map), gid_map=_map_text(spec.gid_map),
        workdir=spec.workdir, executable=spec.executable, argv=spec.argv,
        environ=tuple(f"{k}={v}" for k, v in environ.items()),
        pid_env_vars=spec.pid_env_vars, tcp_fds=spec.tcp_fds,
        net_bind_service=spec.net_bind_service,
        sandbox_log_fd=-1 if slog is None else slog.fd,
        sandbox_log_level=0 if slog is None else slog.log.level,
        sandbox_log_facility=-1 if slog is None or slog.log.facility is None
        else slog.log.facility,
        sandbox_log_tag=f"{slog.log.ident}[{slog.pid}]" if slog and slog.log.syslog else "",
        sandbox_log_gmtoff=0 if slog is None else slog.log.gmtoff_s,
        pdeathsig=pdeathsig, parent_pidfd=parent_pidfd, netns_fd=netns_fd, unshare=unshare,
        ops=ops)


def encode(desc: InitDescription) -> bytes:
    """The bytes init.c reads. Raises DescriptionError for a NUL inside a string."""
    out: list[str] = [MAGIC]
    d = desc
    out += [d.name, d.quoted_name, d.command_text, d.container_config, d.kind.value,
            str(int(d.restart_process_only)), str(d.kill_timeout_ns), d.kill_timeout_text,
            str(d.restart_timeout_ns)]
    out += [str(len(d.normal_exit_codes)), *map(str, d.normal_exit_codes)]
    out += [str(d.log_fd), str(d.status_fd), d.output, d.output_file, str(d.uid), str(d.gid),
            d.uid_map, d.gid_map, d.workdir, d.executable]
    for items in (d.argv, d.environ, d.pid_env_vars):
        out += [str(len(items)), *items]
    out += [str(len(d.tcp_fds)), *map(str, d.tcp_fds), str(int(d.net_bind_service))]
    out += [str(d.sandbox_log_fd), str(d.sandbox_log_level), str(d.sandbox_log_facility),
            d.sandbox_log_tag, str(d.sandbox_log_gmtoff)]
    out += [str(int(d.pdeathsig)), str(d.parent_pidfd), str(d.netns_fd), str(int(d.unshare)),
            str(len(d.ops))]
    for op in d.ops:
        out += [op.op, op.label, op.key, *op.args]
    out.append("end")
    # One join and one encode (a start's hot path: per-field work was ~3 times slower);
    # a NUL inside a field shows as one separator too many.
    text = "\0".join(out)
    if text.count("\0") != len(out) - 1:
        i = next(i for i, field in enumerate(out) if "\0" in field)
        raise DescriptionError(f"init description: field {i + 1}: {out[i]!r} contains NUL")
    return text.encode("utf-8", "surrogateescape") + b"\0"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.fields = data.split(b"\0")
        self.tail = self.fields.pop()  # bytes after the last NUL: b"" when well-formed
        self.pos = 0

    def text(self, field: str) -> str:
        self.pos += 1
        if self.pos > len(self.fields):
            raise self.fail(field, "missing or not NUL-terminated")
        return self.fields[self.pos - 1].decode("utf-8", "surrogateescape")

    def number(self, field: str, lo: int, hi: int) -> int:
        text = self.text(field)
        digits = text.removeprefix("-")
        if not digits.isascii() or not digits.isdigit() or (digits[0] == "0" and digits != "0"):
            raise DescriptionError(f"init description: field {self.pos} ({field}): "
                                   "not a decimal integer")
        value = int(text)
        if not lo <= value <= hi:
            raise DescriptionError(f"init description: field {self.pos} ({field}): out of range")
        return value

    def texts(self, field: str) -> tuple[str, ...]:
        return tuple(self.text(field) for _ in range(self.number(field, 0, MAX_LIST)))

    def numbers(self, field: str, lo: int, hi: int) -> tuple[int, ...]:
        return tuple(self.number(field, lo, hi) for _ in range(self.number(field, 0, MAX_LIST)))

    def fail(self, field: str, what: str) -> DescriptionError:
        return DescriptionError(f"init description: field {self.pos} ({field}): {what}")


def decode(data: bytes) -> InitDescription:
    """The inverse of encode, with init.c's checks. Raises DescriptionError."""
    r = _Reader(data)
    if r.text("magic") != MAGIC:
        raise r.fail("magic", f"not {MAGIC}")
    name, quoted, command, config = (r.text(f) for f in (
        "name", "quoted-name", "command-text", "container-config"))
    kind_text = r.text("kind")
    if kind_text not in ("Daemon", "Command"):
        raise r.fail("kind", "not Daemon or Command")
    restart_only = bool(r.number("restart-process-only", 0, 1))
    kill_ns = r.number("kill-timeout-ns", 0, MAX_NS)
    kill_text = r.text("kill-timeout-text")
    restart_ns = r.number("restart-timeout-ns", 0, MAX_NS)
    codes = r.numbers("normal-exit-codes", 0, 255)
    log_fd = r.number("log-fd", -1, 2**31 - 1)
    status_fd = r.number("status-fd", -1, 2**31 - 1)
    output = r.text("output")
    if output not in ("log", "inherit", "file"):
        raise r.fail("output", "not log, inherit or file")
    output_file = r.text("output-file")
    if (output == "file") != output_file.startswith("/"):
        raise r.fail("output-file", "absolute path iff file")
    uid, gid = r.number("uid", 0, 2**32 - 2), r.number("gid", 0, 2**32 - 2)
    uid_map, gid_map, workdir, executable = (r.text(f) for f in (
        "uid-map", "gid-map", "workdir", "executable"))
    argv = r.texts("argv")
    environ = r.texts("environ")
    if any("=" not in e for e in environ):
        raise r.fail("environ", "an entry without '='")
    pid_vars = r.texts("pid-env-vars")
    tcp_fds = r.numbers("tcp-fds", 0, 2**31 - 1)
    net_bind_service = bool(r.number("net-bind-service", 0, 1))
    slog_fd = r.number("sandbox-log-fd", -1, 2**31 - 1)
    slog_level = r.number("sandbox-log-level", 0, 100)
    slog_facility = r.number("sandbox-log-facility", -1, 23)
    slog_tag = r.text("sandbox-log-tag")
    slog_gmtoff = r.number("sandbox-log-gmtoff", -86400, 86400)
    pdeathsig = bool(r.number("pdeathsig", 0, 1))
    parent_pidfd = r.number("parent-pidfd", -1, 2**31 - 1)
    netns_fd = r.number("netns-fd", -1, 2**31 - 1)
    unshare = bool(r.number("unshare", 0, 1))
    ops = _ops(r)
    if r.text("end") != "end":
        raise r.fail("end", "not end")
    if r.pos != len(r.fields) or r.tail:
        raise r.fail("end", "trailing bytes")
    if not argv:
        raise r.fail("argv", "empty")
    return InitDescription(
        name=name, quoted_name=quoted, command_text=command, container_config=config,
        kind=Kind(kind_text), restart_process_only=restart_only, kill_timeout_ns=kill_ns,
        kill_timeout_text=kill_text, restart_timeout_ns=restart_ns, normal_exit_codes=codes,
        log_fd=log_fd, status_fd=status_fd, output=output, output_file=output_file, uid=uid,
        gid=gid,
        uid_map=uid_map, gid_map=gid_map, workdir=workdir, executable=executable, argv=argv,
        environ=environ, pid_env_vars=pid_vars, tcp_fds=tcp_fds,
        net_bind_service=net_bind_service, sandbox_log_fd=slog_fd,
        sandbox_log_level=slog_level, sandbox_log_facility=slog_facility,
        sandbox_log_tag=slog_tag, sandbox_log_gmtoff=slog_gmtoff, pdeathsig=pdeathsig,
        parent_pidfd=parent_pidfd, netns_fd=netns_fd, unshare=unshare, ops=ops)


MAX_FLAGS = 2**32 - 1
MAX_RLIMIT = 2**62


def _ops(r: _Reader) -> tuple[Op, ...]:
    """The setup ops, each `name label key args...` (knot.plan.ARGS gives the count)."""
    count = r.number("ops", 0, MAX_LIST)
    ops = []
    for i in range(count):
        name = r.text("op")
        if name not in ARGS:
            raise r.fail("op", "unknown op")
        label, key = r.text("op-label"), r.text("op-key")
        args: tuple[str, ...]
        match name:
            case "mount":
                args = (r.text("mount-source"), r.text("mount-target"), r.text("mount-fstype"),
                        str(r.number("mount-flags", 0, MAX_FLAGS)), r.text("mount-data"))
            case "check":
                path, how = r.text("check-path"), r.text("check-how")
                if how not in CHECKS:
                    raise r.fail("check-how", "not dir, reg or isdir")
                args = (path, how, r.text("check-detail"),
                        str(r.number("check-skip", 0, count - i - 1)))
            case "umount2":
                args = (r.text("umount2-target"), str(r.number("umount2-flags", 0, MAX_FLAGS)))
            case "rlimit":
                args = (str(r.number("rlimit", 0, MAX_RLIMIT)),)
            case _:
                args = tuple(r.text(f"{name}-arg") for _ in range(ARGS[name]))
        ops.append(Op(name, label, key, args))
    return tuple(ops)
