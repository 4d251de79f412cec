"""cgroup detection, names and the v2 path against a directory tree (K-20, T-12b, T-51).

No root needed: cgroup v2 (and v1 file writes) are checked against a fake /proc and a
fake cgroup root in tmp_path, since this build machine runs v1 for its controllers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import cgroup_detect as det
from broker import cgroups
from broker.cgroups import CgroupError, Version

# This build machine's mountinfo and /proc/<pid>/cgroup (v1 plus an empty cgroup2).
MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PID1_V1 = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n4:memory:/\n2:cpuacct:/\n1:cpu:/\n0::/\n"
SELF_V1 = PID1_V1.replace("4:memory:/", "4:memory:/process_api/5b44")


def fake_proc(tmp_path: Path, mountinfo: str, pid1: str, own: str) -> str:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "1").mkdir()
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "1" / "cgroup").write_text(pid1)
    (proc / "self" / "cgroup").write_text(own)
    return str(proc)


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes() -> None:
    text = MOUNTINFO_V1 + r"50 31 0:40 /sub /mnt/with\040space rw shared:1 - cgroup cgroup rw,cpu"
    mounts = det.parse_mountinfo(text)
    assert [m.mount_point for m in mounts][:2] == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"]
    assert mounts[-1] == det.Mount("/sub", "/mnt/with space", "cgroup", frozenset({"rw", "cpu"}))
    assert mounts[-2].fstype == "cgroup2"


def test_parse_proc_cgroup_rejects_garbage_naming_the_file() -> None:
    lines = det.parse_proc_cgroup("4:memory:/a:b.scope\n0::/\n", "/proc/1/cgroup")
    assert lines[0] == det.ProcCgroup(4, ("memory",), "/a:b.scope")
    with pytest.raises(CgroupError, match=r"/proc/1/cgroup: unexpected line 'nonsense'"):
        det.parse_proc_cgroup("nonsense\n", "/proc/1/cgroup")


def test_v1_detection_on_this_machines_layout(tmp_path: Path) -> None:
    layout = cgroups.detect(proc_dir=fake_proc(tmp_path, MOUNTINFO_V1, PID1_V1, SELF_V1))
    assert layout.version is Version.V1
    base = {c: h.base_dir for c, h in layout.detected.by_controller.items()}
    # K-20: pid 1's path, not our own (/process_api/... for memory here).
    assert base == {
        "name": "/sys/fs/cgroup/systemd",
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "blkio": "/sys/fs/cgroup/blkio",
    }


def test_v1_comounted_controllers_share_one_hierarchy(tmp_path: Path) -> None:
    mountinfo = "32 31 0:29 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    lines = "3:cpu,cpuacct:/init\n"
    layout = cgroups.detect(["cpu", "cpuacct"], fake_proc(tmp_path, mountinfo, lines, lines))
    assert len(layout.detected.hierarchies) == 1
    assert layout.detected.hierarchies[0].base_dir == "/cg/cpu,cpuacct/init"
    assert layout.handle("x/y").dirs == ("/cg/cpu,cpuacct/init/x/y",)


def test_v1_mount_of_a_subtree_strips_its_root(tmp_path: Path) -> None:
    mountinfo = "32 31 0:29 /outer /cg/memory rw - cgroup cgroup rw,memory\n"
    proc = fake_proc(tmp_path, mountinfo, "4:memory:/outer/c1\n", "4:memory:/outer/c1\n")
    assert cgroups.detect(["memory"], proc).detected.hierarchies[0].base_dir == "/cg/memory/c1"


def test_missing_controller_is_named(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, MOUNTINFO_V1, PID1_V1, SELF_V1)
    with pytest.raises(CgroupError, match=r"^CGroup freezer not mounted"):
        cgroups.detect(["memory", "freezer"], proc)


def test_listed_but_unmounted_controller_is_named(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "", PID1_V1, SELF_V1)
    with pytest.raises(CgroupError, match=r"^CGroup cpu not mounted \(no cgroup mount with cpu"):
        cgroups.detect(["cpu"], proc)


def test_different_hierarchy_from_pid1_is_refused(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, MOUNTINFO_V1, "1:cpu,cpuacct:/\n", "1:cpu:/\n")
    with pytest.raises(CgroupError, match="Init process has CGroup hierarchy different"):
        cgroups.detect(["cpu"], proc)


def test_empty_controller_list_means_the_default_five(tmp_path: Path) -> None:
    layout = cgroups.detect([], fake_proc(tmp_path, MOUNTINFO_V1, PID1_V1, SELF_V1))
    assert layout.detected.controllers == ("name", "cpu", "cpuacct", "memory", "blkio")


@pytest.mark.parametrize(
    ("shares", "weight"),
    [
        (0, 1),
        (2, 1),
        (10, 1),
        (11, 1),
        (512, 50),
        (1024, 100),
        (2048, 200),
        (102400, 10000),
        (262144, 10000),
    ],
)
def test_shares_to_weight_maps_default_to_default(shares: int, weight: int) -> None:
    assert cgroups.shares_to_weight(shares) == weight


def test_names_t51_and_t12b() -> None:
    assert cgroups.instance_group("lithos.slice", "web/app.0") == "lithos.slice/web:app.0.scope"
    assert cgroups.classify_group("web:app.0.scope") == cgroups.InstanceGroup("web/app.0")
    assert cgroups.classify_group("web-1:my_app.12.scope") == cgroups.InstanceGroup(
        "web-1/my_app.12"
    )
    assert cgroups.classify_group("web:cmd.shell.4121.scope") == cgroups.CommandGroup("web", 4121)
    for wrong in ("web:app.scope", "web/app.0.scope", "app.0.scope", "web:app.0", "x:y.0.scope.d"):
        assert cgroups.classify_group(wrong) == cgroups.WrongGroup(wrong)


def test_group_must_be_relative(tmp_path: Path) -> None:
    layout = cgroups.detect([], fake_proc(tmp_path, MOUNTINFO_V1, PID1_V1, SELF_V1))
    for bad in ("/abs", "a/../b", "a//b", ""):
        with pytest.raises(CgroupError, match="must be a relative path"):
            layout.handle(bad)


# ---- cgroup v2 against a fake tree -------------------------------------------------


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def v2_layout(
    tmp_path: Path, root: Path, pid1: str = "0::/\n", controllers=()
) -> cgroups.CgroupLayout:
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    return cgroups.detect(controllers, fake_proc(tmp_path, mountinfo, pid1, "0::/whatever\n"))


def make_group_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name in (
        "cgroup.subtree_control",
        "cgroup.procs",
        "memory.max",
        "memory.swap.max",
        "cpu.weight",
        "memory.current",
        "cpu.stat",
    ):
        (d / name).write_text("")


def test_v2_detected_when_only_a_0_line(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    assert layout.version is Version.V2
    assert layout.detected.v2_enable == ("cpu", "memory", "io")  # blkio is io on v2
    assert layout.handle("lithos.slice/a:b.0.scope").dirs == (
        f"{v2_root}/lithos.slice/a:b.0.scope",
    )


def test_v2_missing_controller_names_cgroup_controllers(tmp_path: Path, v2_root: Path) -> None:
    (v2_root / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(
        CgroupError,
        match=r"CGroup memory not mounted \('memory' is not in .*"
        r"cgroup.controllers: cpu pids\)",
    ):
        v2_layout(tmp_path, v2_root)


def test_v2_init_scope_leaf_is_replaced_by_its_parent(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root, pid1="0::/init.scope\n")
    assert layout.detected.hierarchies[0].base_dir == str(v2_root)


def test_v2_create_enables_controllers_down_to_the_parent(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    make_group_files(v2_root / "lithos.slice")  # as the kernel would after mkdir
    (v2_root / "lithos.slice" / "cgroup.subtree_control").write_text("cpu\n")
    handle = layout.create("lithos.slice/web:app.0.scope")
    assert (v2_root / "cgroup.subtree_control").read_text() == "+cpu +memory +io"
    # Only the missing ones: writing an enabled one again can fail on a busy group.
    assert (v2_root / "lithos.slice" / "cgroup.subtree_control").read_text() == "+memory +io"
    assert (v2_root / "lithos.slice" / "web:app.0.scope").is_dir()
    assert handle.group == "lithos.slice/web:app.0.scope"


def test_v2_limits_and_usage(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    leaf = v2_root / "lithos.slice" / "web:app.0.scope"
    make_group_files(leaf)
    handle = layout.handle("lithos.slice/web:app.0.scope")
    handle.set_limits(memory_limit_bytes=100 * 2**20, cpu_shares=512)
    assert (leaf / "memory.max").read_text() == "104857600"
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.weight").read_text() == "50"
    handle.set_limits(memory_limit_bytes=cgroups.UNLIMITED_BYTES, cpu_shares=None)
    assert (leaf / "memory.max").read_text() == "max"
    assert (leaf / "memory.swap.max").read_text() == "max"
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    assert handle.usage() == cgroups.CgroupUsage(memory_bytes=4096, cpu_ns=1_500_000)


def test_v2_enter_uses_a_leaf_and_list_groups_hides_it(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root, controllers=["name"])
    make_group_files(v2_root / "lithos.slice" / "lithos_tree.scope")
    handle = layout.enter("lithos.slice", 4242)
    assert handle.group == "lithos.slice/lithos_tree.scope"
    procs = v2_root / "lithos.slice" / "lithos_tree.scope" / "cgroup.procs"
    assert procs.read_text() == "4242"
    (v2_root / "lithos.slice" / "web:app.0.scope").mkdir()
    (v2_root / "lithos.slice" / "stray").mkdir()
    assert layout.list_groups("lithos.slice") == ["stray", "web:app.0.scope"]
    assert layout.list_groups("absent.slice") == []


def test_write_error_names_group_file_value_and_errno(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    (v2_root / "g").mkdir()  # no files: the kernel would have made them
    with pytest.raises(CgroupError) as info:
        layout.handle("g").set_limits(memory_limit_bytes=1000, cpu_shares=1024)
    text = str(info.value)
    assert f"cgroup g: writing {v2_root}/g/memory.max = 1000: ENOENT" in text
    assert f"cgroup g: writing {v2_root}/g/cpu.weight = 100: ENOENT" in text


def test_remove_reports_what_is_left(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    make_group_files(v2_root / "g")
    (v2_root / "g" / "cgroup.procs").write_text("12\n34\n")
    with pytest.raises(CgroupError, match=r"cgroup g: rmdir: ENOTEMPTY \(processes 12 34\) in "):
        layout.handle("g").remove()
    layout.handle("absent").remove()  # already gone is fine


def test_v1_memsw_order_follows_the_direction_of_change(tmp_path: Path) -> None:
    mountinfo = f"35 31 0:32 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n"
    layout = cgroups.detect(
        ["memory"], fake_proc(tmp_path, mountinfo, "4:memory:/\n", "4:memory:/\n")
    )
    leaf = tmp_path / "memory" / "g"
    leaf.mkdir(parents=True)
    limit, memsw = leaf / "memory.limit_in_bytes", leaf / "memory.memsw.limit_in_bytes"
    limit.write_text("1000\n")
    memsw.write_text("1000\n")
    handle = layout.handle("g")
    handle.set_limits(memory_limit_bytes=5000, cpu_shares=None)
    assert (limit.read_text(), memsw.read_text()) == ("5000", "5000")
    handle.set_limits(memory_limit_bytes=2000, cpu_shares=None)
    assert (limit.read_text(), memsw.read_text()) == ("2000", "2000")


def test_limit_for_an_absent_controller_is_logged(
    tmp_path: Path, v2_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = v2_layout(tmp_path, v2_root, controllers=["name"])
    layout.handle("g").set_limits(memory_limit_bytes=1000, cpu_shares=1024)
    assert "cgroup g: memory-limit 1000 not applied: memory is not in cgroup-controllers" in (
        caplog.text
    )
    assert "cpu-shares" not in caplog.text  # the default is no limit to apply


def test_v2_prepare_leaves_a_new_leaf_to_the_knot(tmp_path: Path, v2_root: Path) -> None:
    """K-20: the parents are made and enabled here; the leaf's dir and its files (only
    values other than a new group's own) are the knot's, in order."""
    layout = v2_layout(tmp_path, v2_root)
    make_group_files(v2_root / "lithos.slice")  # as the kernel would after mkdir
    handle, work = layout.prepare("lithos.slice/web:app.0.scope", 100 * 2**20, 512)
    leaf = f"{v2_root}/lithos.slice/web:app.0.scope"
    assert work == cgroups.LeafWork(
        dirs=(leaf,),
        writes=(
            (f"{leaf}/memory.max", "104857600", "memory-limit"),
            (f"{leaf}/memory.swap.max", "0", "memory-limit"),
            (f"{leaf}/cpu.weight", "50", "cpu-shares"),
        ),
    )
    assert handle.dirs == work.dirs and not Path(leaf).exists()
    assert (v2_root / "lithos.slice" / "cgroup.subtree_control").read_text() == "+cpu +memory +io"
    # shares 1024..1034 are weight 100, a new group's own: nothing to write
    _, work = layout.prepare("lithos.slice/web:app.1.scope", cgroups.UNLIMITED_BYTES, 1030)
    assert work is not None and work.writes == ()


def test_v2_prepare_makes_and_limits_a_reused_leaf_itself(tmp_path: Path, v2_root: Path) -> None:
    layout = v2_layout(tmp_path, v2_root)
    leaf = v2_root / "lithos.slice" / "web:app.0.scope"
    make_group_files(v2_root / "lithos.slice")
    make_group_files(leaf)
    handle, work = layout.prepare("lithos.slice/web:app.0.scope", 100 * 2**20, 512)
    assert work is None
    assert (leaf / "memory.max").read_text() == "104857600"
    assert (leaf / "cpu.weight").read_text() == "50"
