"""spawn_knot: namespaces, fds, PR_SET_PDEATHSIG (T-50, T-52), and lithos_mkdev (2.9)."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from knot import mkdev
from knot.spawn import spawn_knot

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

WORKTREE = Path(__file__).resolve().parents[3]

# A stand-in for the broker: spawns one knot, prints its pid, then either execs
# (as `lithos_tree` does on SIGQUIT) or just waits; it dies when its stdin closes.
PARENT = """
import os, sys
sys.path.insert(0, sys.argv[2])
from knot.spawn import spawn_knot
from knot.spec import KnotSpec
spec = KnotSpec.from_json(open(sys.argv[3]).read())
events, go = int(sys.argv[4]), int(sys.argv[5])
pid = spawn_knot(spec, inherited_fds={3: events}, stdin=go, stdout=2, stderr=2,
                 native_init=sys.argv[6] or None)
os.close(events); os.close(go)
print(pid, flush=True)
if sys.argv[1] == "exec":
    os.execv("/bin/busybox", ["busybox", "sh", "-c", "echo execd; exec cat"])
sys.stdin.read()
"""


@pytest.mark.parametrize("mode", ["exec", "exit"])
def test_pdeathsig_kills_the_knot_when_its_parent_dies_but_not_when_it_execs(env, mode):
    spec = env.spec("read go; echo alive-$go >&3; exec sleep 1000", tcp_fds=(3,))
    spec_file = env.tmp / "spec.json"
    spec_file.write_text(spec.to_json())
    events_r, events_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    try:  # events_w and go_r become the knot's fd 3 and stdin
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, mode, str(WORKTREE), str(spec_file),
             str(events_w), str(go_r), str(env.native_init or "")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(events_w, go_r),
            text=True)
    finally:
        for fd in (events_w, go_r):
            os.close(fd)
    knot_pidfd = -1
    try:
        knot_pid = int(parent.stdout.readline())
        knot_pidfd = os.pidfd_open(knot_pid)
        if mode == "exec":
            assert parent.stdout.readline() == "execd\n"
        # The knot and its service are alive after the parent's exec: they answer.
        os.write(go_w, b"now\n")
        ready, _, _ = select.select([events_r], [], [], 20)
        assert ready and os.read(events_r, 100) == b"alive-now\n"
        parent.stdin.close()    # the parent (or the program it exec'd) exits
        assert parent.wait(timeout=20) == 0
        ready, _, _ = select.select([knot_pidfd], [], [], 20)
        assert ready, "the knot survived its parent"                    # T-52
        assert os.read(events_r, 100) == b""    # the whole container is gone
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if knot_pidfd >= 0:
            signal.pidfd_send_signal(knot_pidfd, signal.SIGKILL)
            select.select([knot_pidfd], [], [], 20)
            os.close(knot_pidfd)
        os.close(events_r)
        os.close(go_w)
        parent.stdout.close()


def test_knot_is_pid_1_in_new_namespaces_and_the_caller_keeps_its_own(env):
    own = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "mnt", "uts", "ipc", "net")}
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    theirs = {ns: os.readlink(f"/proc/{knot.pid}/ns/{ns}") for ns in own}
    assert theirs["net"] == own["net"]                                  # T-50: no netns
    assert all(theirs[ns] != own[ns] for ns in ("pid", "mnt", "uts", "ipc"))
    status = Path(f"/proc/{knot.pid}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[1:] == [str(knot.pid), "1"]
    # Our own pid namespace for children is restored: a plain child is in ours.
    child = subprocess.run(["readlink", "/proc/self/ns/pid"], capture_output=True, text=True)
    assert child.stdout.strip() == own["pid"]
    assert os.readlink("/proc/self/ns/pid_for_children") == own["pid"]
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == 0


def test_tcp_fd_0_replaces_stdin(env):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        spec = env.spec("ls -l /proc/$$/fd/0", tcp_fds=(0,))
        knot = env.start(spec, inherited_fds={0: sock.fileno()})
        knot.wait()
    finally:
        sock.close()
    assert "socket:[" in knot.log_text()


def test_inherited_fds_must_match_the_spec(env):
    with pytest.raises(ValueError, match="do not match tcp fds"):
        spawn_knot(env.spec("", tcp_fds=(3,)), inherited_fds={}, stdin=0, stdout=1, stderr=2)


def test_mkdev_is_idempotent(tmp_path):
    root = tmp_path / "dev"
    assert mkdev.main([str(root)]) == 0
    assert mkdev.main([str(root)]) == 0                                 # unlike the original
    null = os.stat(root / "null")
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert os.readlink(root / "ptmx") == "pts/ptmx" and (root / "pts").is_dir()
    assert os.readlink(root / "stderr") == "/proc/self/fd/2" and (root / "shm").is_dir()


def test_mkdev_refuses_something_in_the_way(tmp_path, capsys):
    root = tmp_path / "dev"
    root.mkdir()
    (root / "null").write_text("not a device")
    assert mkdev.main([str(root)]) == 1
    assert "null: exists and is not the char device 1:3" in capsys.readouterr().err
    assert mkdev.main([]) == 1
