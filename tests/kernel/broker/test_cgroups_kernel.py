"""Real cgroups on this machine (K-20, T-6, T-12b, T-51): v1 groups, and a cgroup2 mount.

Every group is under a unique `lt-test-<random>.slice`; the fixtures kill the
processes they started (by pid) and rmdir every group, even when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import cgroups
from broker.cgroups import CgroupError, CgroupLayout, Version

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # lives until stdin closes


class Kernel:
    """Starts children and creates groups, and undoes both at teardown."""

    def __init__(self) -> None:
        self.slice = f"lt-test-{secrets.token_hex(4)}.slice"
        self.children: list[subprocess.Popen[bytes]] = []
        self.group_dirs: list[str] = []

    def child(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(SLEEPER, stdin=subprocess.PIPE)
        self.children.append(child)
        return child

    def track(self, layout: CgroupLayout, group: str) -> None:
        """Register every directory of `group` and its parents for rmdir at teardown."""
        parts = group.split("/")
        for hierarchy in layout.detected.hierarchies:
            for i in range(len(parts), 0, -1):
                self.group_dirs.append(os.path.join(hierarchy.base_dir, *parts[:i]))

    def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
            assert child.stdin is not None
            child.stdin.close()
        for d in sorted(set(self.group_dirs), key=lambda d: -d.count("/")):  # leaves first
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(d)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


def proc_cgroup(pid: int) -> dict[str, str]:
    """{controllers: path} from /proc/<pid>/cgroup."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}


def v1_layout() -> CgroupLayout:
    layout = cgroups.detect()
    if layout.version is not Version.V1:
        pytest.skip("this host runs cgroup v2; the v1 tests need a v1 host")
    return layout


def test_v1_group_limits_process_and_removal(kernel: Kernel) -> None:
    layout = v1_layout()
    group = cgroups.instance_group(kernel.slice, "web/app.0")
    kernel.track(layout, group)
    handle = layout.create(group)
    memory_dir = layout.detected.by_controller["memory"].base_dir + "/" + group
    cpu_dir = layout.detected.by_controller["cpu"].base_dir + "/" + group

    handle.set_limits(memory_limit_bytes=100 * 2**20, cpu_shares=512)
    assert Path(memory_dir, "memory.limit_in_bytes").read_text() == f"{100 * 2**20}\n"
    assert Path(cpu_dir, "cpu.shares").read_text() == "512\n"
    memsw = Path(memory_dir, "memory.memsw.limit_in_bytes")
    if memsw.exists():
        assert memsw.read_text() == f"{100 * 2**20}\n"
    # Raising a reused group's limit needs memsw written first, or the kernel says EINVAL.
    handle.set_limits(memory_limit_bytes=200 * 2**20, cpu_shares=None)
    assert Path(memory_dir, "memory.limit_in_bytes").read_text() == f"{200 * 2**20}\n"

    child = kernel.child()
    handle.add(child.pid)
    seen = proc_cgroup(child.pid)
    for key in ("name=systemd", "cpu", "cpuacct", "memory", "blkio"):
        assert seen[key] == f"/{group}", key
    assert handle.pids() == [child.pid]
    usage = handle.usage()
    assert usage.memory_bytes is not None and usage.cpu_ns is not None

    with pytest.raises(
        CgroupError, match=rf"cgroup {group}: rmdir: EBUSY \(processes {child.pid}\)"
    ):
        handle.remove()
    child.kill()
    child.wait()
    handle.remove()
    assert not os.path.exists(memory_dir)
    assert layout.list_groups(kernel.slice) == []


def test_v1_bad_value_names_group_file_value_and_errno(kernel: Kernel) -> None:
    layout = v1_layout()
    group = f"{kernel.slice}/web:bad.0.scope"
    kernel.track(layout, group)
    handle = layout.create(group)
    with pytest.raises(
        CgroupError,
        match=rf"cgroup {group}: writing .*/memory.limit_in_bytes = "
        r"-5: EINVAL",
    ):
        handle.set_limits(memory_limit_bytes=-5, cpu_shares=None)


def test_v1_enter_and_list_dangling_groups(kernel: Kernel) -> None:
    layout = v1_layout()
    kernel.track(layout, kernel.slice)
    broker = kernel.child()  # stands in for the broker: the test runner stays put
    layout.enter(kernel.slice, broker.pid)
    assert proc_cgroup(broker.pid)["memory"] == f"/{kernel.slice}"
    for name in ("web:app.0.scope", "web:cmd.sh.1.scope", "junk"):
        group = f"{kernel.slice}/{name}"
        kernel.track(layout, group)
        layout.create(group)
    names = layout.list_groups(kernel.slice)
    assert names == ["junk", "web:app.0.scope", "web:cmd.sh.1.scope"]
    assert [type(cgroups.classify_group(n)).__name__ for n in names] == [
        "WrongGroup",
        "InstanceGroup",
        "CommandGroup",
    ]


def test_v1_sweep_removes_only_dangling_groups(kernel: Kernel) -> None:
    """T-12b in every hierarchy: groups of no live knot and of a dead lithos_cmd go;
    a live instance's, a running command's and a foreign one stay; a dangling group
    with a process still inside is an error line naming it, and the sweep goes on."""
    from broker import sweep

    layout = v1_layout()
    kernel.track(layout, kernel.slice)
    occupant = kernel.child()
    dead = kernel.child()
    dead.kill()
    dead.wait()
    names = {"web:app.0.scope": "kept", "web:app.1.scope": "gone",
             f"web:cmd.sh.{os.getpid()}.scope": "kept", f"web:cmd.sh.{dead.pid}.scope": "gone",
             "junk": "kept", "web:app.2.scope": "busy"}  # fmt: skip
    for name in names:
        group = f"{kernel.slice}/{name}"
        kernel.track(layout, group)
        layout.create(group)
    layout.handle(f"{kernel.slice}/web:app.2.scope").add(occupant.pid)

    removed = sweep.sweep_cgroups(layout, kernel.slice, ["web/app.0"])

    assert removed == [f"{kernel.slice}/{n}" for n, what in sorted(names.items()) if what == "gone"]
    left = sorted(n for n, what in names.items() if what != "gone")
    assert layout.list_groups(kernel.slice) == left
    for hierarchy in layout.detected.hierarchies:
        assert sorted(e.name for e in os.scandir(os.path.join(hierarchy.base_dir, kernel.slice))
                      if e.is_dir()) == left  # fmt: skip


# ---- a real cgroup2 mount ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


@pytest.fixture
def cgroup2(tmp_path: Path) -> Iterator[Path]:
    """cgroup2 mounted at a temp dir (the same single hierarchy the host may show)."""
    target = tmp_path / "cg2"
    target.mkdir()
    try:
        _mount("none", str(target), "cgroup2")
    except OSError as e:
        pytest.skip(f"cannot mount cgroup2 here: {e}")
    try:
        yield target
    finally:
        # MNT_DETACH: a group directory left by a failed test must not keep it mounted.
        _libc.umount2(str(target).encode(), 2)


def test_v2_real_mount_group_process_and_removal(
    kernel: Kernel, cgroup2: Path, tmp_path: Path
) -> None:
    # Point detection at the cgroup2 mount with a /proc that says "pure v2". Only
    # controllers that need no subtree_control change at the hierarchy's root: this
    # host binds cpu and memory to v1, and the root is shared with the whole system.
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "1").mkdir()
    (proc / "self" / "mountinfo").write_text(f"99 1 0:99 / {cgroup2} rw - cgroup2 none rw\n")
    (proc / "1" / "cgroup").write_text("0::/\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    layout = cgroups.detect(["name", "cpuacct"], str(proc))
    assert layout.version is Version.V2
    group = cgroups.instance_group(kernel.slice, "web/app.1")
    kernel.track(layout, group)

    handle = layout.create(group)
    child = kernel.child()
    handle.add(child.pid)
    assert proc_cgroup(child.pid)[""] == f"/{group}"
    assert handle.pids() == [child.pid]
    usage = handle.usage()
    assert usage.memory_bytes is None and usage.cpu_ns is not None
    assert layout.list_groups(kernel.slice) == ["web:app.1.scope"]
    child.kill()
    child.wait()
    handle.remove()
    layout.handle(kernel.slice).remove()
    assert not (cgroup2 / kernel.slice).exists()


def test_v1_cpuset_group_accepts_a_process(kernel: Kernel) -> None:
    # A fresh v1 cpuset group has no cpus or mems; without copying the parent's,
    # adding a process fails with ENOSPC.
    layout = cgroups.detect(["cpuset"])
    if layout.version is not Version.V1:
        pytest.skip("this host runs cgroup v2")
    group = f"{kernel.slice}/web:app.0.scope"
    kernel.track(layout, group)
    handle = layout.create(group)
    child = kernel.child()
    handle.add(child.pid)
    assert proc_cgroup(child.pid)["cpuset"] == f"/{group}"
