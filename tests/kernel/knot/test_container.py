"""What the service sees from inside its container (K-7, K-13..K-18, K-22, K-50..K-53, E-21..E-30).

Each service is a busybox sh script that prints what it sees to its stdout (the
stdio log) or to the events pipe (fd 3); the assertions are made on that.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from knot.spec import HostsFile, IdMap, Kind, ResolvConf, Volume, VolumeKind

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root


def mounts(log: str) -> dict[str, tuple[set[str], str]]:
    """mountinfo lines in the log: mount point -> (mount options, fs type)."""
    found = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) > 8 and "-" in parts[6:]:
            sep = parts.index("-", 6)
            found[parts[4]] = (set(parts[5].split(",")), parts[sep + 1])
    return found


def test_root_dev_proc_sys_and_volumes_have_their_flags(env):
    rosrc = env.tmp / "rosrc"
    rosrc.mkdir()
    (rosrc / "file").write_text("ro-content")
    persist = env.tmp / "persist"
    spec = env.spec(
        "cat /proc/self/mountinfo; cat /ro/file; echo; "
        "touch /ro/x 2>/dev/null || echo ro-write-refused; "
        "echo hi > /data/written && echo persist-ok; echo s > /state/s && echo state-ok; "
        "ls -ld /scratch; ls /dev/null /dev/pts/ptmx; ls /proc/1/cmdline",
        volumes=(
            Volume(VolumeKind.READONLY, "/ro", str(rosrc)),
            Volume(VolumeKind.PERSISTENT, "/data", str(persist), mode=0o700, mkdir=True,
                   user=1, group=2),
            Volume(VolumeKind.STATEDIR, "/state", str(env.state_root / "test/svc.0"),
                   mode=0o755),
            Volume(VolumeKind.TMPFS, "/scratch", None, size_bytes=1 << 20, mode=0o1777),
        ))
    code, knot = env.run(spec)
    log = knot.log_text()
    assert code == 2, (log, knot.stderr_text())  # a daemon exiting 0 is abnormal (K-42)
    m = mounts(log)
    assert {"ro"} <= m["/"][0]                                          # K-7
    assert {"ro"} <= m["/dev"][0] and m["/dev/pts"][1] == "devpts"      # K-16
    assert {"ro", "nosuid", "nodev", "noexec"} <= m["/sys"][0]
    assert m["/proc"][1] == "proc" and {"nosuid", "nodev", "noexec"} <= m["/proc"][0]
    assert {"ro", "nosuid", "nodev"} <= m["/ro"][0]                     # E-27 (+nosuid,nodev)
    assert {"rw", "nosuid", "nodev"} <= m["/data"][0]
    assert {"rw", "nosuid", "nodev"} <= m["/state"][0]
    assert {"rw", "nosuid", "nodev"} <= m["/scratch"][0] and m["/scratch"][1] == "tmpfs"
    assert "ro-content" in log and "ro-write-refused" in log
    assert "persist-ok" in log and "state-ok" in log
    assert "drwxrwxrwt" in log                                          # tmpfs mode 01777
    assert "/dev/pts/ptmx" in log and "/proc/1/cmdline" in log
    st = os.stat(persist)                                               # E-28
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 1, 2)
    assert (persist / "written").read_text() == "hi\n"
    # pivot_root detached the old root: no host path is mounted in the container
    assert not any(p.startswith("/tmp/") for p in m), m


def test_persistent_existing_dir_is_never_chowned_or_chmodded(env):
    persist = env.tmp / "persist"
    persist.mkdir(mode=0o755)
    os.chmod(persist, 0o755)
    spec = env.spec("exit 0", volumes=(
        Volume(VolumeKind.PERSISTENT, "/data", str(persist), mode=0o700, mkdir=True, user=1),))
    env.run(spec)
    st = os.stat(persist)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)          # E-28


def test_tmpfs_is_empty_at_every_start_and_default_size(env):
    spec = env.spec("echo n=$(ls -A /scratch | wc -l); touch /scratch/left; "
                    "grep ' /scratch ' /proc/self/mountinfo",
                    volumes=(Volume(VolumeKind.TMPFS, "/scratch", None,
                                    size_bytes=104857600, mode=0o777),))
    _, first = env.run(spec)
    _, second = env.run(spec)
    for knot in (first, second):
        assert "n=0" in knot.log_text()                                 # E-29
        assert "size=102400k" in knot.log_text()


def test_ids_groups_limits_pid_and_fds(env):
    sock = socket.socket()
    try:
        spec = env.spec(
            "grep -E '^(Uid|Gid|Groups):' /proc/self/status; echo nofile=$(ulimit -n); "
            # no pipeline here: the shell would hold the pipe's fds while ls runs
            "echo pid=$$; echo cwd=$(pwd); echo fds:; ls /proc/$$/fd; echo :fds",
            uid=1000, gid=1001, fileno_limit=777, workdir="/tmp", tcp_fds=(5,))
        knot = env.start(spec, inherited_fds={5: sock.fileno()})
        code = knot.wait()
    finally:
        sock.close()
    log = knot.log_text()
    assert code == 2, knot.stderr_text()
    assert "Uid:\t1000\t1000\t1000\t1000" in log
    assert "Gid:\t1001\t1001\t1001\t1001" in log
    groups = next(line for line in log.splitlines() if line.startswith("Groups:"))
    assert groups.split(":", 1)[1].strip() == ""                        # supplementary cleared
    assert "nofile=777" in log                                          # K-22
    assert "pid=2" in log and "cwd=/tmp" in log
    fds = log.split("fds:\n")[1].split(":fds")[0].split()
    assert fds == ["0", "1", "2", "5"]                                  # only the declared fds


def test_environment_is_exactly_e21(env):
    spec = env.spec("cat /proc/$$/environ | tr '\\0' '\\n'; echo END",
                    environ=(("A", "1"), ("TERM", "xterm"), ("LITHOS_NAME", "spoofed")),
                    pid_env_vars=("MY_PID", "LISTEN_PID"))
    _, knot = env.run(spec)
    lines = knot.log_text().split("-----\n")[1].split("END")[0].split()
    assert dict(line.split("=", 1) for line in lines) == {
        "A": "1", "TERM": "xterm", "LITHOS_NAME": "test/svc.0",
        "LITHOS_CONFIG": "/etc/lithos/processes/test.yaml", "MY_PID": "2", "LISTEN_PID": "2",
    }


def test_term_defaults_to_dumb(env):
    _, knot = env.run(env.spec("echo term=$TERM; env | grep -c PATH || true"))
    assert "term=dumb" in knot.log_text() or "term=" + os.environ.get("TERM", "") in \
        knot.log_text()


def read_etc(env, **overrides):
    spec = env.spec("echo ==hosts; cat /etc/hosts; echo ==resolv; cat /etc/resolv.conf; "
                    "echo ==end", **overrides)
    code, knot = env.run(spec)
    assert code == 2, knot.stderr_text()
    text = knot.log_text().split("==hosts\n", 1)[1]
    hosts, rest = text.split("==resolv\n", 1)
    return hosts, rest.split("==end", 1)[0]


def test_hosts_and_resolv_by_default_are_copies_from_host(env):
    hosts, resolv = read_etc(env)                                       # E-25
    assert hosts == "192.0.2.1 host-one\n"          # the host file plus one "\n"
    assert resolv == "nameserver 192.0.2.53\n"


def test_hosts_localhost_and_additional_hosts_sorted(env):
    hosts, resolv = read_etc(env, hosts_file=HostsFile(
        mount=None, copy_from_host=False, localhost=True, public_hostname=False,
        source=str(env.host_hosts),
        additional_hosts=(("b.example", "10.0.0.2"), ("a.example", "10.0.0.1"))))
    assert hosts == ("127.0.0.1 localhost.localdomain localhost\n"
                     "10.0.0.1 a.example\n10.0.0.2 b.example\n")       # K-15


def test_hosts_public_hostname(env):
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this host's name does not resolve")
    hosts, _ = read_etc(env, hosts_file=HostsFile(
        mount=None, copy_from_host=False, localhost=False, public_hostname=True,
        source=str(env.host_hosts)))
    assert hosts == f"{ip} {socket.gethostname()}\n"


def test_mount_false_keeps_the_image_files(env):
    hosts, resolv = read_etc(
        env, hosts_file=dataclasses.replace(env.spec("").hosts_file, mount=False),
        resolv_conf=ResolvConf(mount=False, copy_from_host=True, source=str(env.host_resolv)))
    assert hosts == "10.9.9.9 image-hosts\n" and resolv == "nameserver 10.9.9.8\n"


def test_resolv_copy_false_is_not_mounted(env):
    _, resolv = read_etc(env, resolv_conf=ResolvConf(
        mount=None, copy_from_host=False, source=str(env.host_resolv)))
    assert resolv == "nameserver 10.9.9.8\n"                            # K-18


def test_symlinked_etc_hosts_with_mount_null_is_left_alone(env):
    (env.image / "etc" / "hosts").unlink()
    (env.image / "etc" / "hosts").symlink_to("/state/hosts")
    spec = env.spec("cat /etc/hosts", volumes=(
        Volume(VolumeKind.STATEDIR, "/state", str(env.state_root / "test/svc.0")),))
    code, knot = env.run(spec)
    assert code == 2, knot.stderr_text()
    assert "192.0.2.1 host-one" in knot.log_text()     # read through the symlink, /state


def test_pgrep_finds_pid_1_and_sigterm_is_forwarded(env):
    # A name of its own: other suites may run knots named test/svc.0 meanwhile.
    name = f"test/pgrep-{os.getpid()}.0"
    spec = env.spec("trap 'echo got-term; exit 0' TERM; echo ready >&3; "
                    "while :; do sleep 1 & wait $!; done", name=name)
    knot = env.start(spec, events=True)
    assert knot.read_event() == "ready"
    found = subprocess.run(["pgrep", "-f", f"lithos_knot --name {name}\\b"],
                           capture_output=True, text=True).stdout.split()
    assert str(knot.pid) in found, found
    others = [p for p in found if p != str(knot.pid)]
    assert not others, [Path(f"/proc/{p}/cmdline").read_bytes() for p in others]
    cmdline = Path(f"/proc/{knot.pid}/cmdline").read_bytes().split(b"\0")
    # `python3 -m knot.lithos_knot --name N ...`, or the native pid 1's `lithos_knot --name N`
    assert cmdline[cmdline.index(b"--name") - 1].endswith(b"lithos_knot")
    with open(f"/proc/{knot.pid}/environ", "rb") as f:
        assert [v.split(b"=")[0] for v in f.read().split(b"\0") if v] == [b"TERM"]  # T-50
    os.kill(knot.pid, 15)
    assert knot.wait() == 0                                             # K-42 rule 1
    assert "got-term" in knot.log_text()
    assert f'Process "{name}" exited with code 0' in knot.log_text()


def test_stdout_stderr_file_is_opened_inside_the_container(env):
    persist = env.tmp / "logs"
    persist.mkdir()
    spec = env.spec("echo out; echo err >&2", stdout_stderr_file="/data/app.log",
                    volumes=(Volume(VolumeKind.PERSISTENT, "/data", str(persist)),))
    code, knot = env.run(spec)
    assert code == 2, knot.stderr_text()
    assert (persist / "app.log").read_text() == "out\nerr\n"
    assert all(" ----- " in line for line in knot.log_text().splitlines())  # only our lines


def test_user_namespace_maps(env):
    spec = env.spec("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g",
                    uid=0, gid=0, uid_map=(IdMap(0, 200000, 65536),),
                    gid_map=(IdMap(0, 300000, 65536),))
    code, knot = env.run(spec)
    log = knot.log_text()
    assert code == 2, knot.stderr_text()
    assert [line.split() for line in log.splitlines()[1:3]] == [
        ["0", "200000", "65536"], ["0", "300000", "65536"]]            # K-51
    assert log.splitlines()[3:5] == ["0", "0"]


def test_command_kind_exit_0_is_normal(env):
    code, _ = env.run(env.spec("exit 0", kind=Kind.COMMAND))
    assert code == 0                                                    # K-42 rule 4


def test_interactive_keeps_the_knots_stdout_and_stderr(env):
    code, knot = env.run(env.spec("echo to-out; echo to-err >&2", interactive=True))
    assert code == 2
    assert knot.stderr_text() == "to-out\nto-err\n"  # the knot's stdout/stderr (one file here)
    assert "to-out" not in knot.log_text().split("-----\n", 1)[1]


def test_fds_above_the_fileno_limit_are_closed_too(env):
    # The stdio log and spec fds sit above the tcp fds: with fd 40 and a limit of 32,
    # they are above the limit inside the knot and must still not reach the service.
    sock = socket.socket()
    try:
        spec = env.spec("echo fds:; ls /proc/$$/fd; echo :fds", fileno_limit=32, tcp_fds=(40,))
        knot = env.start(spec, inherited_fds={40: sock.fileno()})
        code = knot.wait()
    finally:
        sock.close()
    assert code == 2, knot.stderr_text()
    assert knot.log_text().split("fds:\n")[1].split(":fds")[0].split() == ["0", "1", "2", "40"]


def test_nested_volume_on_a_mount_point_inside_an_earlier_volume(env):
    persist = env.tmp / "persist"
    (persist / "cache").mkdir(parents=True)          # V-2: the mount point is in the volume
    spec = env.spec("grep -E ' /data(/cache)? ' /proc/self/mountinfo", volumes=(
        Volume(VolumeKind.PERSISTENT, "/data", str(persist)),           # V-1: shorter first
        Volume(VolumeKind.TMPFS, "/data/cache", None, size_bytes=1 << 20)))
    code, knot = env.run(spec)
    assert code == 2, knot.stderr_text()
    m = mounts(knot.log_text())
    assert m["/data/cache"][1] == "tmpfs" and "/data" in m
