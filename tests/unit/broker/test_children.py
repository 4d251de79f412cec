"""broker.children: records survive a broker restart; stale ones are dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.children import (
    Children,
    handed_over,
    new_child,
    proc_knot_name,
    proc_start_ticks,
)


@pytest.fixture
def fake_knot():
    """A process whose cmdline looks like a knot's (`... lithos_knot --name sb/p.0`)."""
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "lithos_knot", "--name", "sb/p.0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    # Popen returns once exec has closed the CLOEXEC pipe, which is a moment
    # before the kernel has set up the new cmdline: wait for the child to speak.
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_record_round_trip_and_recovery(tmp_path: Path, fake_knot: subprocess.Popen[bytes]) -> None:
    table = Children(tmp_path)
    child = new_child(
        "sb/p.0", fake_knot.pid, "fp1", "lithos.slice/sb:p.0.scope", [("0.0.0.0", 80)]
    )
    table.add(child)
    assert (tmp_path / "sb:p.0.json").exists()

    again = Children(tmp_path)
    recovered = again.recover()
    assert [c.instance for c in recovered] == ["sb/p.0"]
    got = again.by_name("sb/p.0")
    assert got is not None
    assert got.pid == fake_knot.pid and got.fingerprint == "fp1"
    assert got.ports == [("0.0.0.0", 80)]
    assert got.orphan_pidfd == -1  # still our child


def test_dead_or_reused_pid_is_not_recovered(
    tmp_path: Path, fake_knot: subprocess.Popen[bytes]
) -> None:
    table = Children(tmp_path)
    child = new_child("sb/p.0", fake_knot.pid, "fp1", None, [])
    child.start_ticks += 1  # as if the pid now belonged to a newer process
    table.add(child)
    assert Children(tmp_path).recover() == []
    assert not (tmp_path / "sb:p.0.json").exists()


def test_remove_deletes_record(tmp_path: Path, fake_knot: subprocess.Popen[bytes]) -> None:
    table = Children(tmp_path)
    table.add(new_child("sb/p.0", fake_knot.pid, "fp", None, []))
    assert table.remove(fake_knot.pid) is not None
    assert list(tmp_path.iterdir()) == []
    assert table.by_name("sb/p.0") is None


def test_proc_helpers(fake_knot: subprocess.Popen[bytes]) -> None:
    assert proc_knot_name(fake_knot.pid) == "sb/p.0"
    assert proc_knot_name(os.getpid()) is None
    assert proc_start_ticks(fake_knot.pid) is not None
    assert proc_start_ticks(2**22 + 12345) is None


@pytest.fixture
def unique_knot():
    """A fake knot with a name no other test uses (intent recovery scans all of /proc)."""
    name = f"fp{os.getpid()}x{id(object())}/p.0"
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code, "lithos_knot", "--name", name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield name, proc
    proc.kill()
    proc.wait()


@pytest.fixture
def forked_knot_mid_setup():
    """A process as a knot forked without exec is during its setup: its spawner's
    cmdline (no `--name`), comm `lithos_knot` (knot.spawn names it at once)."""
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'lithos_knot', 0, 0, 0); "
            "print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_intended_start_whose_knot_runs_is_adopted(tmp_path: Path, unique_knot) -> None:
    name, proc = unique_knot
    table = Children(tmp_path)
    table.intend(new_child(name, -1, "fp1", None, [("0.0.0.0", 80)]))
    # The broker was killed between the fork and add(): the next one finds the knot.
    again = Children(tmp_path)
    recovered = again.recover()
    assert [(c.instance, c.pid) for c in recovered] == [(name, proc.pid)]
    assert again.found == recovered and again.gone == []
    assert recovered[0].start_ticks == proc_start_ticks(proc.pid)
    assert recovered[0].ports == [("0.0.0.0", 80)]
    # Its record now names the pid: a third broker recovers it the ordinary way.
    third = Children(tmp_path)
    assert [c.pid for c in third.recover()] == [proc.pid] and third.found == []


def test_intended_start_without_a_knot_is_cleaned_up(tmp_path: Path) -> None:
    table = Children(tmp_path)
    table.intend(new_child(f"fp{os.getpid()}none/p.0", -1, "fp1", None, []))
    again = Children(tmp_path)
    assert again.recover() == []
    assert [c.pid for c in again.gone] == [-1]
    assert list(tmp_path.iterdir()) == []


def test_abandoned_intent_leaves_no_record(tmp_path: Path) -> None:
    table = Children(tmp_path)
    table.intend(new_child("sb/p.9", -1, "fp1", None, []))
    table.abandon("sb/p.9")
    assert list(tmp_path.iterdir()) == []


def test_a_knot_still_in_its_setup_is_recovered_by_comm_and_start_time(
    tmp_path: Path, forked_knot_mid_setup: subprocess.Popen[bytes]
) -> None:
    pid = forked_knot_mid_setup.pid
    assert proc_knot_name(pid) is None
    Children(tmp_path).add(new_child("sb/p.0", pid, "fp1", None, []))
    assert [c.pid for c in Children(tmp_path).recover()] == [pid]


def test_a_process_named_lithos_knot_with_another_start_time_is_not_recovered(
    tmp_path: Path, forked_knot_mid_setup: subprocess.Popen[bytes]
) -> None:
    child = new_child("sb/p.0", forked_knot_mid_setup.pid, "fp1", None, [])
    child.start_ticks += 1  # the pid was reused by another process so named
    Children(tmp_path).add(child)
    assert Children(tmp_path).recover() == []


def test_children_handed_over_in_a_reexec_are_taken_without_proc_checks(
    tmp_path: Path, fake_knot: subprocess.Popen[bytes]
) -> None:
    table = Children(tmp_path)
    child = new_child("sb/p.0", fake_knot.pid, "fp1", None, [("0.0.0.0", 80)])
    table.add(child)
    texts = [c.to_json() for c in table]
    child.start_ticks += 1  # /proc would not confirm it: the hand-over is what counts
    (tmp_path / "sb:p.0.json").write_text(child.to_json())
    again = Children(tmp_path)
    recovered = again.recover(handed_over([*texts, "not json", "[1]"]))
    assert [(c.instance, c.pid, c.ports) for c in recovered] == [
        ("sb/p.0", fake_knot.pid, [("0.0.0.0", 80)])]
    assert again.by_name("sb/p.0") is not None
    assert handed_over(None) == {} and handed_over("x") == {}
