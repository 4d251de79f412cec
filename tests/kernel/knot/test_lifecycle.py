"""The knot as pid 1: signals, kill-timeout, exit codes, restart-process-only (K-40..K-45)."""

from __future__ import annotations

import os
import signal

import pytest

from knot.exitcodes import EXIT_ABNORMAL, EXIT_KILL_TIMEOUT, EXIT_NORMAL
from knot.spec import Kind, Volume, VolumeKind

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

SLEEPER = "echo ready >&3; while :; do sleep 1 & wait $!; done"


def test_sigterm_kills_a_default_service_and_exits_0(env):
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    assert knot.read_event() == "ready"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_NORMAL                                   # K-42 rules 1, 2
    assert 'Process "test/svc.0" killed by signal SIGTERM' in knot.log_text()


def test_sigterm_during_setup_is_not_lost(env):
    knot = env.start(env.spec("echo ready >&3; exec sleep 1000"), events=True)
    os.kill(knot.pid, signal.SIGTERM)   # most likely before the knot is even exec'd (K-40)
    assert knot.wait() == EXIT_NORMAL


def test_sigint_is_not_forwarded_but_ends_the_knot_after_the_service(env):
    knot = env.start(env.spec("trap 'echo got-int >&3' INT; " + SLEEPER), events=True)
    assert knot.read_event() == "ready"
    os.kill(knot.pid, signal.SIGINT)
    # The service is still alive: SIGTERM it through the knot, which then exits.
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_NORMAL
    assert "got-int" not in knot.pending.decode()


def test_kill_timeout_kills_the_container_and_exits_3(env):
    spec = env.spec("trap '' TERM; " + SLEEPER, kill_timeout_s=0.3)
    knot = env.start(spec, events=True)
    assert knot.read_event() == "ready"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_KILL_TIMEOUT                             # E-14
    # protocol.stdiolog's wording: no `s` after the kill-timeout, as the original (K-41).
    assert ('Process "test/svc.0" did not respond to SIGTERM in 0.3, uptime 0s. Killing.. -----'
            in knot.log_text())
    # The whole container died with its pid 1: the events pipe has no writer left.
    assert os.read(knot.events, 100) == b""


def test_only_one_sigterm_per_start(env):
    spec = env.spec("n=0; trap 'n=$((n+1)); echo term$n >&3' TERM; " + SLEEPER,
                    kill_timeout_s=0.5)
    knot = env.start(spec, events=True)
    assert knot.read_event() == "ready"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.read_event() == "term1"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_KILL_TIMEOUT
    assert knot.pending == b"" and os.read(knot.events, 100) == b""     # no term2


@pytest.mark.parametrize(("kind", "codes", "exit", "expected"), [
    (Kind.DAEMON, (), 0, EXIT_ABNORMAL),          # E-11: a daemon exiting 0 is a failure
    (Kind.DAEMON, (), 1, EXIT_ABNORMAL),
    (Kind.COMMAND, (), 0, EXIT_NORMAL),
    (Kind.COMMAND, (42,), 0, EXIT_ABNORMAL),
    (Kind.DAEMON, (42,), 42, EXIT_NORMAL),
    (Kind.DAEMON, (200,), 200, EXIT_NORMAL),      # E-46 fixed: unsigned codes
])
def test_normal_exit_codes(env, kind, codes, exit, expected):
    code, knot = env.run(env.spec(f"exit {exit}", kind=kind, normal_exit_codes=codes))
    assert code == expected
    assert f"exited with code {exit}, uptime 0s -----" in knot.log_text()


def test_service_killed_by_a_signal_is_abnormal(env):
    code, knot = env.run(env.spec("kill -KILL $$"))
    assert code == EXIT_ABNORMAL
    assert "killed by signal SIGKILL" in knot.log_text()


def test_orphans_are_reaped(env):
    # 20 orphans go to pid 1; the service reports once no child of pid 1 but itself is
    # left (alive or zombie). If the knot did not reap them, "ready" would never come.
    spec = env.spec(
        "for i in $(seq 20); do (sh -c 'exit 0' &); done; "
        "while grep -l '^PPid:[[:space:]]*1$' /proc/[0-9]*/status 2>/dev/null "
        "| grep -v '^/proc/2/' | grep -q .; do :; done; echo ready >&3; exec sleep 1000")
    knot = env.start(spec, events=True)
    assert knot.read_event() == "ready"
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_NORMAL


def test_restart_process_only_restarts_the_service_in_the_same_container(env):
    persist = env.tmp / "persist"
    persist.mkdir()
    script = ("n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; "
              "echo \"run $n pid=$$ scratch=$(ls /scratch | wc -l) "
              "pid1=$(cat /proc/1/cmdline | tr '\\0' ' ')\" >&3; touch /scratch/f$n; "
              "[ $n -ge 3 ] && exec sleep 1000; exit 1")
    spec = env.spec(script, restart_process_only=True, restart_timeout_s=0,
                    volumes=(Volume(VolumeKind.PERSISTENT, "/data", str(persist)),
                             Volume(VolumeKind.TMPFS, "/scratch", None, size_bytes=1 << 20)))
    knot = env.start(spec, events=True)
    runs = [knot.read_event() for _ in range(3)]
    assert [r.split()[:2] for r in runs] == [["run", "1"], ["run", "2"], ["run", "3"]]
    pids = [int(r.split()[2].removeprefix("pid=")) for r in runs]
    assert pids[0] == 2 and len(set(pids)) == 3        # a new service process each time
    # Same container: the tmpfs keeps the files of the previous runs (manual), same pid 1.
    assert [r.split()[3] for r in runs] == ["scratch=0", "scratch=1", "scratch=2"]
    assert all("lithos_knot --name test/svc.0" in r for r in runs)  # pid 1: the knot
    assert knot.alive()
    os.kill(knot.pid, signal.SIGTERM)
    assert knot.wait() == EXIT_NORMAL
    log = knot.log_text()
    assert log.count("----- Starting") == 3 and log.count("exited with code 1") == 2


def test_restart_timeout_is_waited_event_driven_and_sigterm_ends_the_wait(env):
    spec = env.spec("echo run >&3; exit 1", restart_process_only=True, restart_timeout_s=60)
    knot = env.start(spec, events=True)
    assert knot.read_event() == "run"
    os.kill(knot.pid, signal.SIGTERM)       # while waiting 60 s to restart
    assert knot.wait(timeout_s=10) == EXIT_NORMAL
    assert knot.log_text().count("----- Starting") == 1
