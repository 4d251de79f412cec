"""broker/sweep.py: what no live container owns is removed at start-up (T-12a, T-12b,
E-30, CMD-2), and nothing else: live instances' dirs, running lithos_cmds', entries
by names that are not ours, anything holding a mount point."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from broker import cgroups, daemon, sweep

LIVE_CMD_PID = 111
DEAD_CMD_PID = 222


def alive(pid: int) -> bool:
    return pid == LIVE_CMD_PID


def make(path: Path, *, files: bool = True) -> Path:
    path.mkdir(parents=True)
    if files:  # what a container leaves in its state dir: nested files and dirs
        (path / "data").mkdir()
        (path / "data" / "x.db").write_text("x")
        (path / "pid").write_text("1")
    return path


def test_state_dirs_of_no_live_instance_or_command_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    kept = [
        make(state / "web" / "app.0"),  # a live instance
        make(state / "web" / f"cmd.shell.{LIVE_CMD_PID}"),  # a running lithos_cmd
        make(state / "web" / "app.2"),  # holds a mount point: never deleted through
        make(state / "web" / "not-an-instance"),  # no name of ours: not ours to judge
        make(state / "foreign" / "data"),  # (a mistyped state-dir must not lose data)
    ]
    gone = [
        make(state / "web" / "app.1"),  # its knot died while no broker ran
        make(state / "web" / f"cmd.shell.{DEAD_CMD_PID}"),  # a SIGKILLed lithos_cmd
        make(state / "old" / "app.0"),  # a deleted sandbox...
        state / "old",  # ...and its dir, empty now
        make(state / "empty", files=False),
    ]
    (state / "web" / "app.3").write_text("?")  # a file by a name of ours
    gone.append(state / "web" / "app.3")
    outside = make(tmp_path / "outside")
    (state / "web" / "app.4").symlink_to(outside)  # removed as a link, never followed
    gone.append(state / "web" / "app.4")
    (state / "README").write_text("not ours to judge")
    kept.append(make(state / "lost+found", files=False))  # a state-dir of its own
    mounts = ["/proc", str(state / "web" / "app.2" / "data")]
    caplog.set_level(logging.INFO, logger="broker.sweep")

    removed = sweep.sweep_state_dirs(state, ["web/app.0", "other/app.0"], alive=alive,
                                     mounts=mounts)  # fmt: skip

    assert sorted(removed) == sorted(gone)
    assert all(p.exists() for p in kept)
    assert not any(os.path.lexists(p) for p in gone)
    assert (outside / "data" / "x.db").read_text() == "x"
    assert (state / "README").exists()
    assert f'Dangling state dir "{state}/web/app.1". Deleting...' in caplog.messages
    assert f'Empty sandbox dir "{state}/old". Deleting...' in caplog.messages
    assert f'Skipping unknown entry "{state}/foreign/data" in the state dir' in caplog.messages
    assert (f'State dir "{state}/web/app.2" holds a mount point ({state}/web/app.2/data): '
            "left in place") in caplog.messages  # fmt: skip


def test_a_missing_state_dir_is_nothing_to_sweep(tmp_path: Path) -> None:
    assert sweep.sweep_state_dirs(tmp_path / "absent", [], mounts=[]) == []


def test_pid_alive() -> None:
    assert daemon.pid_alive(os.getpid())
    assert not daemon.pid_alive(0) and not daemon.pid_alive(-1)
    assert not daemon.pid_alive(2**22 + 1)  # above pid_max's ceiling: no such process


def test_mount_points_decode_the_kernel_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /run rw - tmpfs tmpfs rw\n"
                    "41 22 0:38 / /run/with\\040space rw - tmpfs tmpfs rw\n")  # fmt: skip
    assert sweep.mount_points(str(info)) == ["/run", "/run/with space"]


def v2_layout(tmp_path: Path) -> tuple[cgroups.CgroupLayout, Path]:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "1").mkdir()
    (proc / "self" / "mountinfo").write_text(f"41 31 0:38 / {root} rw - cgroup2 cgroup2 rw\n")
    (proc / "1" / "cgroup").write_text("0::/\n")
    (proc / "self" / "cgroup").write_text("0::/whatever\n")
    return cgroups.detect((), str(proc)), root


def test_groups_of_no_live_knot_or_command_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout, root = v2_layout(tmp_path)
    top = root / "lithos.slice"
    names = ["web:app.0.scope", "web:app.1.scope", f"web:cmd.sh.{LIVE_CMD_PID}.scope",
             f"web:cmd.sh.{DEAD_CMD_PID}.scope", "gone:x.0.scope", "stray", "lithos_tree.scope"]
    for name in names:
        (top / name).mkdir(parents=True)
    caplog.set_level(logging.INFO, logger="broker.sweep")

    removed = sweep.sweep_cgroups(layout, "lithos.slice", ["web/app.0"], alive=alive)

    assert removed == ["lithos.slice/gone:x.0.scope", "lithos.slice/web:app.1.scope",
                       f"lithos.slice/web:cmd.sh.{DEAD_CMD_PID}.scope"]  # fmt: skip
    assert sorted(p.name for p in top.iterdir()) == [
        "lithos_tree.scope", "stray", "web:app.0.scope", f"web:cmd.sh.{LIVE_CMD_PID}.scope"]
    assert 'Skipping wrong group "lithos.slice/stray"' in caplog.messages
    assert 'Dangling cgroup "lithos.slice/web:app.1.scope". Deleting...' in caplog.messages


def test_a_group_that_cannot_be_removed_is_logged_and_the_rest_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout, root = v2_layout(tmp_path)
    top = root / "lithos.slice"
    (top / "web:app.1.scope").mkdir(parents=True)
    (top / "web:app.1.scope" / "cgroup.procs").write_text("4121\n")  # rmdir: ENOTEMPTY
    (top / "web:app.2.scope").mkdir()

    removed = sweep.sweep_cgroups(layout, "lithos.slice", [], alive=alive)

    assert removed == ["lithos.slice/web:app.2.scope"]
    assert any(m.startswith("Error removing cgroup: cgroup lithos.slice/web:app.1.scope: "
                            "rmdir: ENOTEMPTY (processes 4121)") for m in caplog.messages)
