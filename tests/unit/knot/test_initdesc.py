"""The native pid 1's description (knot.initdesc) and its strict parsing by knot/init.c.

The same malformed inputs go to the Python decoder (DescriptionError) and to the
compiled init.c (exit 78, exactly one line on stderr), so both parse alike.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knot import initbin, initdesc, plan
from knot.exitcodes import EXIT_SETUP_FAILED
from knot.initdesc import DescriptionError
from knot.linux import MS_PRIVATE, MS_REC
from knot.plan import Op
from knot.spec import HostsFile, IdMap, Kind, KnotSpec, ResolvConf
from protocol.stdiolog import rust_quote

SPEC = KnotSpec(
    name="web/django.0", kind=Kind.DAEMON, container_config="/images/web/config/main.yaml",
    config_filename="/etc/lithos/processes/web.yaml", image_root="/images/web",
    mount_dir="/run/lithos/mnt", state_dir="/run/lithos/state/web/django.0",
    devfs_dir="/var/lib/lithos/dev", volumes=(),
    resolv_conf=ResolvConf(mount=None, copy_from_host=True, source="/etc/resolv.conf"),
    hosts_file=HostsFile(mount=None, copy_from_host=True, localhost=False,
                         public_hostname=False, source="/etc/hosts"),
    uid=1000, gid=1001, uid_map=(IdMap(0, 200000, 65536),), gid_map=(), fileno_limit=1024,
    executable="/usr/bin/python3", argv=("python", "app.py", 'say "hi"\n'), environ=(),
    pid_env_vars=("LISTEN_PID",), workdir="/app", secrets=None, tcp_fds=(3, 7),
    interactive=False, stdout_stderr_file=None, kill_timeout_s=0.3, restart_timeout_s=1,
    restart_process_only=True, normal_exit_codes=(0, 200))


def test_from_spec_decides_everything_in_python() -> None:
    d = initdesc.from_spec(SPEC, {"TERM": "dumb", "A": "b=c"}, log_fd=9)
    assert d.quoted_name == '"web/django.0"'
    # The executable, then argv[1:]: how the start line names the command (K-41).
    assert d.command_text == '"/usr/bin/python3" "app.py" "say \\"hi\\"\\n"'
    assert (d.kill_timeout_ns, d.kill_timeout_text) == (300_000_000, "0.3")
    assert d.restart_timeout_ns == 10**9 and d.normal_exit_codes == (0, 200)
    assert (d.output, d.output_file, d.log_fd, d.status_fd) == ("log", "", 9, -1)
    assert initdesc.from_spec(SPEC, {}, 9, 12).status_fd == 12
    assert (d.uid_map, d.gid_map) == ("0 200000 65536\n", "")
    assert d.environ == ("TERM=dumb", "A=b=c") and d.argv == SPEC.argv
    file_spec = dataclasses.replace(SPEC, stdout_stderr_file="/log/app.log")
    assert initdesc.from_spec(file_spec, {}, None).output == "file"
    assert initdesc.from_spec(file_spec, {}, None).log_fd == -1
    assert initdesc.from_spec(dataclasses.replace(SPEC, interactive=True), {}, 3).output \
        == "inherit"


def test_encoding_is_nul_terminated_fields_in_order() -> None:
    data = initdesc.encode(initdesc.from_spec(SPEC, {"TERM": "dumb"}, 9))
    fields = data.split(b"\0")
    assert fields[0] == b"lithos-init/3" and fields[1] == b"web/django.0"
    assert fields[-2:] == [b"end", b""]


text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=20)


@settings(max_examples=60, deadline=None)
@given(name=text, argv=st.lists(text, min_size=1, max_size=4),
       env=st.dictionaries(text.filter(lambda k: "=" not in k), text, max_size=4),
       codes=st.lists(st.integers(0, 255), max_size=4), log_fd=st.integers(-1, 1000),
       kt=st.integers(0, 86400 * 10**9))
def test_round_trip(name: str, argv: list[str], env: dict[str, str], codes: list[int],
                    log_fd: int, kt: int) -> None:
    d = dataclasses.replace(
        initdesc.from_spec(SPEC, env, None), name=name, quoted_name=rust_quote(name),
        argv=tuple(argv), normal_exit_codes=tuple(codes), log_fd=log_fd, kill_timeout_ns=kt)
    assert initdesc.decode(initdesc.encode(d)) == d


def test_sandbox_log_settings_travel_to_init_c() -> None:
    """protocol.sandboxlog: the fd, the level, and for syslog the tag with the host pid."""
    from protocol.sandboxlog import SandboxLog, Writer

    plain = initdesc.from_spec(SPEC, {}, 9)
    assert (plain.sandbox_log_fd, plain.sandbox_log_facility, plain.sandbox_log_tag) == \
        (-1, -1, "")
    d = initdesc.from_spec(SPEC, {}, 9, None, Writer(11, SandboxLog(20, 19, "lithos-web",
                                                                    3600), 4121))
    assert (d.sandbox_log_fd, d.sandbox_log_level, d.sandbox_log_facility) == (11, 20, 19)
    assert (d.sandbox_log_tag, d.sandbox_log_gmtoff) == ("lithos-web[4121]", 3600)
    assert initdesc.decode(initdesc.encode(d)) == d
    f = initdesc.from_spec(SPEC, {}, 9, None, Writer(11, SandboxLog(30), 4121))
    assert (f.sandbox_log_facility, f.sandbox_log_tag) == (-1, "")


def test_nul_inside_a_string_is_refused_at_encoding() -> None:
    d = initdesc.from_spec(SPEC, {}, None)
    with pytest.raises(DescriptionError, match="contains NUL"):
        initdesc.encode(dataclasses.replace(d, workdir="/a\0b"))


def _good() -> bytes:
    return initdesc.encode(initdesc.from_spec(SPEC, {"TERM": "dumb"}, 9))


def _replace_field(index: int, value: bytes) -> bytes:
    fields = _good().split(b"\0")
    fields[index] = value
    return b"\0".join(fields)


MALFORMED = {
    "empty": b"",
    "wrong magic": b"lithos-init/1\0" + _good().split(b"\0", 1)[1],
    "unterminated": _good()[:-1],
    "truncated": _good()[: len(_good()) // 2],
    "trailing bytes": _good() + b"x\0",
    "trailing unterminated": _good() + b"x",
    "bad kind": _replace_field(5, b"Cron"),
    "flag not 0/1": _replace_field(6, b"2"),
    "leading zero": _replace_field(7, b"0300000000"),
    "negative timeout": _replace_field(7, b"-1"),
    "timeout too long": _replace_field(7, str(86400 * 10**9 + 1).encode()),
    "not a number": _replace_field(7, b"3e8"),
    "huge number": _replace_field(7, b"9" * 40),
    "exit code > 255": _replace_field(11, b"256"),
    "bad status fd": _replace_field(14, b"-2"),
    "bad output": _replace_field(15, b"syslog"),
    "file without path": _replace_field(15, b"file"),
    "list too long": _replace_field(10, b"70000"),
    # From the end: "", end, the ops count (0), unshare, netns, pidfd, pdeathsig, then
    # the sandbox log's gmtoff, tag, facility.
    "bad sandbox log facility": _replace_field(-10, b"24"),
    "bad sandbox log offset": _replace_field(-8, b"90000"),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_rejected_by_python(data: bytes) -> None:
    with pytest.raises(DescriptionError, match=r"^init description: field \d+ \("):
        initdesc.decode(data)


@pytest.fixture(scope="module", params=["musl-gcc", "cc"])
def init_binary(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """init.c built by each compiler knot.initbin may use (musl-gcc first, cc the
    fallback): the lines must not depend on the libc."""
    compiler = shutil.which(request.param)
    if compiler is None:
        pytest.skip(f"no {request.param} here")
    only = tmp_path_factory.mktemp("bin")
    (only / request.param).symlink_to(compiler)
    path, why = initbin.build(tmp_path_factory.mktemp("init-cache"), path_env=str(only))
    if path is None:
        pytest.skip(f"native pid 1 cannot be built here: {why}")
    return path


def run_init(binary: Path, data: bytes, name: str = "web/django.0",
             timeout_s: float = 10) -> subprocess.CompletedProcess[str]:
    fd = os.memfd_create("desc")
    try:
        os.write(fd, data)
        return subprocess.run([str(binary), "--name", name, "--init-fd", str(fd)],
                              pass_fds=(fd,), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    finally:
        os.close(fd)


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_rejected_by_init_c(init_binary: Path, data: bytes) -> None:
    done = run_init(init_binary, data)
    assert done.returncode == EXIT_SETUP_FAILED
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("knot[web/django.0]: init description: field ")


def test_init_c_usage_and_name_mismatch(init_binary: Path) -> None:
    done = subprocess.run([str(init_binary), "--name", "x"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == EXIT_SETUP_FAILED and done.stderr.count("\n") == 1
    done = run_init(init_binary, _good(), name="web/other.0")
    assert done.returncode == EXIT_SETUP_FAILED
    assert "does not match --name" in done.stderr and done.stderr.count("\n") == 1


def test_python_and_c_agree_on_every_field_number(init_binary: Path) -> None:
    """The same error names the same field on both sides."""
    for data in MALFORMED.values():
        with pytest.raises(DescriptionError) as err:
            initdesc.decode(data)
        c_line = run_init(init_binary, data).stderr.strip()
        assert c_line.split(": ", 2)[2].split(":")[0] == str(err.value).split(":")[1].strip(), \
            (c_line, str(err.value))



def test_net_bind_service_travels_to_init() -> None:
    """K-30: a bridged spec's CAP_NET_BIND_SERVICE flag follows the tcp fds."""
    for flag in (False, True):
        d = initdesc.from_spec(dataclasses.replace(SPEC, net_bind_service=flag), {}, 9)
        assert d.net_bind_service is flag
        data = initdesc.encode(d)
        assert f"\0{int(flag)}\0-1\0".encode() in data  # then the (absent) sandbox log
        assert initdesc.decode(data) == d


# --- the setup part (knot.plan's ops, lithos-init/3) ------------------------------

SETUP_OPS = (
    Op("mount", "make / private", "", ("", "/", "", str(MS_REC | MS_PRIVATE), "")),
    Op("check", "mount /etc/hosts", "hosts-file", ("/etc", "dir", "", "1")),
    Op("stat", "mount /etc/hosts", "hosts-file", ("/etc/hosts",)),
    Op("rlimit", "set limits", "fileno-limit", ("1024",)),
    Op("chdir", "pivot_root", "image", ("/run/lithos/mnt",)),
    Op("pivot_root", "pivot_root", "image", ("/run/lithos/mnt", "/run/lithos/mnt/tmp")),
    Op("umount2", "pivot_root", "image", ("/tmp", "2")),
    Op("fail", "decrypt secrets", "secret-environ", ("Error decoding secrets: x",)),
)


def _with_setup(ops: tuple[Op, ...] = SETUP_OPS, **kw: object) -> initdesc.InitDescription:
    args: dict = {"pdeathsig": True, "parent_pidfd": 12, "netns_fd": 13, "unshare": True}
    args.update(kw)
    return initdesc.from_spec(SPEC, {"TERM": "dumb"}, 9, None, None, ops=ops, **args)


def test_setup_round_trip() -> None:
    d = _with_setup()
    assert initdesc.decode(initdesc.encode(d)) == d
    assert initdesc.decode(_good()).ops == ()  # a knot that set up in Python: no setup


def _setup_field(op_index: int, offset: int, value: bytes, ops_data: bytes = b"") -> bytes:
    """The description with field `offset` of op `op_index` (0: its name) replaced;
    op_index -1: the fields before the ops (offset from the ops count, backwards)."""
    fields = (ops_data or initdesc.encode(_with_setup())).split(b"\0")
    count_at = len(fields) - 3 - sum(3 + len(op.args) for op in SETUP_OPS)
    if op_index < 0:
        fields[count_at + offset] = value
    else:
        at = count_at + 1 + sum(3 + len(op.args) for op in SETUP_OPS[:op_index])
        fields[at + offset] = value
    return b"\0".join(fields)


SETUP_MALFORMED = {
    "pdeathsig not 0/1": _setup_field(-1, -4, b"2"),
    "bad parent pidfd": _setup_field(-1, -3, b"-2"),
    "unshare not 0/1": _setup_field(-1, -1, b"yes"),
    "too many ops": _setup_field(-1, 0, str(len(SETUP_OPS) + 1).encode()),
    "too few ops": _setup_field(-1, 0, str(len(SETUP_OPS) - 1).encode()),
    "op count too long": _setup_field(-1, 0, b"65537"),
    "unknown op": _setup_field(2, 0, b"rmdir"),
    "mount flags too big": _setup_field(0, 6, str(2**32).encode()),
    "mount flags negative": _setup_field(0, 6, b"-1"),
    "bad check": _setup_field(1, 4, b"symlink"),
    "skip past the end": _setup_field(1, 6, str(len(SETUP_OPS) - 1).encode()),
    "rlimit not a number": _setup_field(3, 3, b"unlimited"),
    "umount2 flags": _setup_field(6, 4, b"02"),
}
MALFORMED.update(SETUP_MALFORMED)


@pytest.mark.parametrize("data", SETUP_MALFORMED.values(), ids=SETUP_MALFORMED.keys())
def test_malformed_setup_is_rejected_by_both(init_binary: Path, data: bytes) -> None:
    with pytest.raises(DescriptionError) as err:
        initdesc.decode(data)
    done = run_init(init_binary, data)
    assert done.returncode == EXIT_SETUP_FAILED
    assert done.stderr == f"knot[web/django.0]: {err.value}\n"


FAILING_OPS = {
    "stat": (Op("stat", "mount Readonly volume", 'volumes: "/x"', ("/nonexistent/x",)),),
    "isdir": (Op("check", "pivot_root", "image", ("/nonexistent", "isdir", "no /tmp", "0")),),
    "lstat regular": (Op("check", "mount /etc/hosts", "hosts-file",
                         ("/proc/self", "reg", "not a valid mount point", "0")),),
    "skipped": (Op("check", "l", "", ("/nonexistent", "dir", "", "1")),
                Op("fail", "skipped", "", ("never",)), Op("fail", "last", "k", ("reached",))),
    "not skipped": (Op("check", "l", "", ("/", "dir", "", "1")),
                    Op("fail", "first", "", ("reached",))),
    "chdir": (Op("chdir", "pivot_root", "image", ("/nonexistent",)),),
    "rlimit": (Op("rlimit", "set limits", "fileno-limit", (str(2**40),)),),
    "mount": (Op("mount", "mount Tmpfs volume", 'volumes: "/x"',
                 ("tmpfs", "/nonexistent/x", "tmpfs", "0", "size=1")),),
    "umount2": (Op("umount2", "pivot_root", "image", ("/nonexistent", "2")),),
    "mkdir": (Op("mkdir", plan.MKDIR_LABEL, "", ("/nonexistent/x.scope",)),),
    "mkdir existing": (Op("mkdir", plan.MKDIR_LABEL, "", ("/",)),
                       Op("fail", "after", "", ("reached",))),
}


class _Failed(Exception):
    """What a recording `fail` raises: the executor must stop there."""


def _recording(lines: list[str]) -> Callable[[str], NoReturn]:
    """A plan.execute `fail` that records its line in `lines`, then stops the executor."""

    def fail(line: str) -> NoReturn:
        lines.append(line)
        raise _Failed

    return fail


@pytest.mark.parametrize("ops", FAILING_OPS.values(), ids=FAILING_OPS.keys())
def test_python_and_c_executors_write_the_same_line(init_binary: Path,
                                                    ops: tuple[Op, ...]) -> None:
    """knot.plan.execute and init.c's run_ops, the same ops: the same line, exit 78."""
    lines: list[str] = []
    fail = _recording(lines)

    with pytest.raises(_Failed):
        plan.execute(ops, SPEC.container_config, fail, fail)
    desc = _with_setup(ops, pdeathsig=False, parent_pidfd=-1, netns_fd=-1, unshare=False)
    done = run_init(init_binary, initdesc.encode(desc))
    assert done.returncode == EXIT_SETUP_FAILED
    assert done.stderr == f"knot[web/django.0]: {lines[0]}\n"


def test_python_and_c_executors_warn_alike_on_a_failed_write(init_binary: Path) -> None:
    """K-20: a limit that cannot be written is a warning line; the setup goes on."""
    ops = (Op("write", plan.WRITE_LABEL, "cpu-shares", ("/nonexistent/cpu.shares", "512")),
           Op("write", plan.WRITE_LABEL, "", ("/proc/self/nonexistent", "0-1")),
           Op("fail", "after", "", ("reached",)))
    lines: list[str] = []
    fail = _recording(lines)

    with pytest.raises(_Failed):
        plan.execute(ops, SPEC.container_config, fail, lines.append)
    assert lines[0] == (f"setting cgroup limit: /nonexistent/cpu.shares = 512: ENOENT (No such "
                        f"file or directory) (cpu-shares in {SPEC.container_config})")
    desc = _with_setup(ops, pdeathsig=False, parent_pidfd=-1, netns_fd=-1, unshare=False)
    done = run_init(init_binary, initdesc.encode(desc))
    assert done.returncode == EXIT_SETUP_FAILED
    assert done.stderr == "".join(f"knot[web/django.0]: {line}\n" for line in lines)


@st.composite
def _ops(draw: st.DrawFn) -> tuple[Op, ...]:
    names = draw(st.lists(st.sampled_from(sorted(plan.ARGS)), max_size=6))
    ops = []
    for i, name in enumerate(names):
        args = [draw(text) for _ in range(plan.ARGS[name])]
        if name in ("mount", "umount2"):
            args[3 if name == "mount" else 1] = str(draw(st.integers(0, 2**32 - 1)))
        elif name == "check":
            args[1] = draw(st.sampled_from(plan.CHECKS))
            args[3] = str(draw(st.integers(0, len(names) - i - 1)))
        elif name == "rlimit":
            args[0] = str(draw(st.integers(0, 2**62)))
        ops.append(Op(name, draw(text), draw(text), tuple(args)))
    return tuple(ops)


@settings(max_examples=60, deadline=None)
@given(ops=_ops(), pdeathsig=st.booleans(), pidfd=st.integers(-1, 1000))
def test_setup_round_trip_of_any_plan(ops: tuple[Op, ...], pdeathsig: bool,
                                      pidfd: int) -> None:
    d = _with_setup(ops, pdeathsig=pdeathsig, parent_pidfd=pidfd)
    assert initdesc.decode(initdesc.encode(d)) == d
