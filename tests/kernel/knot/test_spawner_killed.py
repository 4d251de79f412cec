"""A spawner killed -9 while its knot waits for the go byte: the knot ends by itself.

broker.start.* failpoints (tests/chaos/test_failpoints.py) kill lithos_tree before
the spawn or after it; this is the moment in between, which no failpoint reaches:
the knot exists (posix_spawned, knot.nativespawn; or forked, knot.spawn) and the
broker runs before_setup (its cgroup join, T-51), but the go byte (the native
init's `--go-fd`, the forked knot's pipe) was never written. The next broker finds
the intent record (broker/children.py `_find_forked`); the knot must not wait for
it: on EOF of its pipe it exits without running any of its setup or the service
(no state dir, no mount, nothing on the service's fd 3).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

WORKTREE = Path(__file__).resolve().parents[3]

# The spawner: spawn_knot with a before_setup that reports the knot's pid, waits
# for the test's word, then SIGKILLs the spawner itself (lithos_tree killed -9).
SPAWNER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from knot.spawn import spawn_knot
from knot.spec import KnotSpec
spec = KnotSpec.from_json(open(sys.argv[2]).read())
events, report, hold = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def before_setup(pid):
    os.write(report, b"%d\\n" % pid)
    os.read(hold, 1)
    os.kill(os.getpid(), signal.SIGKILL)

spawn_knot(spec, inherited_fds={3: events}, stdin=0, stdout=2, stderr=2, pdeathsig=False,
           native_init=sys.argv[6], fork=sys.argv[7] == "fork" or None,
           before_setup=before_setup)
print("spawn_knot returned", flush=True)
"""


@pytest.mark.parametrize("mode", ["spawn", "fork"])
def test_a_knot_whose_spawner_died_before_the_go_byte_exits_by_itself(env, init_mode, mode):
    if init_mode != "native":
        pytest.skip("the go byte is the native init's (spawned or forked)")
    spec = env.spec("echo ran >&3; exec sleep 1000", tcp_fds=(3,))
    spec_file = env.tmp / "spec.json"
    spec_file.write_text(spec.to_json())
    events_r, events_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    ours = [events_r, report_r, hold_w]
    knot_pidfd = -1
    spawner: subprocess.Popen[str] | None = None
    try:
        try:
            spawner = subprocess.Popen(
                [sys.executable, "-c", SPAWNER, str(WORKTREE), str(spec_file), str(events_w),
                 str(report_w), str(hold_r), str(env.native_init), mode],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                pass_fds=(events_w, report_w, hold_r),
                env={**os.environ, "LITHOS_KNOT_SPAWN": mode})
        finally:
            for fd in (events_w, report_w, hold_r):
                os.close(fd)
        try:
            ready, _, _ = select.select([report_r], [], [], 30)
            assert ready, "the spawner did not reach before_setup"
            knot = int(os.read(report_r, 100))
            knot_pidfd = os.pidfd_open(knot)  # it waits for us: alive
            # Its exe, not its cmdline: posix_spawn returns (the exec has replaced the
            # memory) before the kernel has set the new argv up, so cmdline may be empty.
            assert mode == "fork" or os.readlink(f"/proc/{knot}/exe") == os.path.realpath(
                env.native_init)
            os.write(hold_w, b"k")
            assert spawner.wait(timeout=30) == -signal.SIGKILL
        finally:
            if spawner.poll() is None:
                spawner.kill()
                spawner.wait()
        # Not our child (reparented): its pidfd says when it ends.
        ready, _, _ = select.select([knot_pidfd], [], [], 30)
        assert ready, f"knot {knot} still waits for a go byte from a dead spawner"
        assert os.read(events_r, 100) == b"", "the service ran"
        assert not os.path.exists(spec.state_dir), "the knot ran its setup"
        # (read only now: a knot still alive could hold the spawner's stdout open)
        assert spawner.stdout is not None
        assert spawner.stdout.read() == ""
    finally:
        if spawner is not None and spawner.stdout is not None:
            spawner.stdout.close()
        if knot_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):  # it ended, as it should
                signal.pidfd_send_signal(knot_pidfd, signal.SIGKILL)
            select.select([knot_pidfd], [], [], 30)
            os.close(knot_pidfd)
        for fd in ours:
            os.close(fd)
