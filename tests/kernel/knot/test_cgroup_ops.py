"""A new container group is made and limited by its knot (K-20, T-51; issue #10 item 2).

broker.cgroups.prepare makes the parents and decides the leaf's work (LeafWork); the
knot's first ops make the dirs, write the limits and the cpuset copy, then join. Run in
the three ways (native spawn, fork, Python pid 1): real v1 groups under a unique
`lt-cgops-<hex>.slice` in every hierarchy, removed at teardown after the knots died.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import cgroups
from broker.cgroups import DEFAULT_CONTROLLERS, CgroupLayout, LeafWork, Version
from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import CgroupWrite

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

MODES = ("spawn", "fork", "python")
MIB = 2**20


@dataclasses.dataclass
class Slice:
    layout: CgroupLayout
    name: str

    def leaf(self) -> str:
        return cgroups.instance_group(self.name, "test/svc.0")

    def dirs_left(self) -> list[str]:
        return [d for d in self.layout.handle(self.leaf()).dirs if os.path.lexists(d)]


@pytest.fixture
def cg() -> Iterator[Slice]:
    """Listed before `env`/`start` in a test: torn down after the knots were killed."""
    layout = cgroups.detect((*DEFAULT_CONTROLLERS, "cpuset"))
    if layout.version is not Version.V1:
        pytest.skip("this host runs cgroup v2")
    s = Slice(layout, f"lt-cgops-{secrets.token_hex(4)}.slice")
    try:
        yield s
    finally:
        for h in layout.detected.hierarchies:
            top = Path(h.base_dir, s.name)
            for leaf in top.glob("*.scope"):
                with contextlib.suppress(FileNotFoundError):
                    leaf.rmdir()
            with contextlib.suppress(FileNotFoundError):
                top.rmdir()


def _with_group(spec, handle: cgroups.CgroupHandle, work: LeafWork, *extra: CgroupWrite):
    return dataclasses.replace(spec, cgroup_procs=handle.procs_files, cgroup_dirs=work.dirs,
                               cgroup_writes=(*(CgroupWrite(*w) for w in work.writes), *extra))


def _file(layout: CgroupLayout, controller: str, group: str, name: str) -> str:
    return Path(layout.detected.by_controller[controller].base_dir, group, name).read_text()


def test_a_new_group_is_made_limited_and_joined_by_the_knot(cg, env, start):
    spec = env.spec("cat /proc/self/cgroup >&3; echo END >&3")
    group = cg.leaf()
    for mode in MODES:
        handle, work = cg.layout.prepare(group, 100 * MIB, 512)
        assert work is not None and cg.dirs_left() == [], mode  # nothing made by the broker
        knot = start(mode, _with_group(spec, handle, work), events=True)
        lines = []
        while (line := knot.read_event()) != "END":
            lines.append(line)
        # the service (forked after the ops) is in the group in every hierarchy
        joined = {line.split(":", 2)[1] for line in lines if line.endswith(f":/{group}")}
        assert {"name=systemd", "cpu", "cpuacct", "memory", "blkio", "cpuset"} <= joined, (
            mode, lines)
        assert knot.wait() == 2, knot.stderr_text()
        assert knot.stderr_text() == "", mode  # no warning
        assert int(_file(cg.layout, "memory", group, "memory.limit_in_bytes")) == 100 * MIB
        memsw = Path(cg.layout.detected.by_controller["memory"].base_dir, group,
                     "memory.memsw.limit_in_bytes")
        if memsw.exists():
            assert int(memsw.read_text()) == 100 * MIB
        assert _file(cg.layout, "cpu", group, "cpu.shares") == "512\n"
        parent = os.path.dirname(group)
        for name in ("cpuset.cpus", "cpuset.mems"):
            own = _file(cg.layout, "cpuset", group, name)
            assert own.strip() and own == _file(cg.layout, "cpuset", parent, name)
        handle.remove()
        assert cg.dirs_left() == []


def test_a_failed_mkdir_fails_the_setup_in_one_line_and_leaves_nothing(cg, env, start):
    spec = env.spec("echo ran >&3")
    last = cg.layout.detected.hierarchies[-1].base_dir
    texts = set()
    for mode in MODES:
        # a new layout: prepare() keeps the parents it made (the broker lives in them)
        handle, work = CgroupLayout(cg.layout.detected).prepare(cg.leaf(), 100 * MIB, 512)
        assert work is not None
        os.rmdir(os.path.join(last, cg.name))  # the last hierarchy's parent is gone
        knot = start(mode, _with_group(spec, handle, work))
        assert knot.wait() == EXIT_SETUP_FAILED, knot.stderr_text()
        texts.add(knot.stderr_text())
        assert len(cg.dirs_left()) == len(work.dirs) - 1, mode  # made up to the failure
        handle.remove()  # what the broker's clean_up does; the missing one is fine
        assert cg.dirs_left() == []
    missing = os.path.join(last, cg.leaf())
    assert texts == {f"knot[test/svc.0]: creating cgroup dir: {missing}: ENOENT "
                     "(No such file or directory)\n"}


def test_a_failed_limit_write_is_a_warning_and_the_service_runs(cg, env, start):
    spec = env.spec("echo ran >&3; cat /proc/self/cgroup >&3; echo END >&3")
    group = cg.leaf()
    shares = os.path.join(cg.layout.detected.by_controller["cpu"].base_dir, group, "cpu.shares")
    texts = set()
    for mode in MODES:
        handle, work = cg.layout.prepare(group, 100 * MIB, 512)
        assert work is not None
        bad = CgroupWrite(shares, "lots", "cpu-shares")
        knot = start(mode, _with_group(spec, handle, work, bad), events=True)
        assert knot.read_event() == "ran", mode
        lines = []
        while (line := knot.read_event()) != "END":
            lines.append(line)
        assert any(line.endswith(f":memory:/{group}") for line in lines), (mode, lines)
        assert knot.wait() == 2, knot.stderr_text()
        texts.add(knot.stderr_text())
        # the good writes before the bad one stand
        assert _file(cg.layout, "cpu", group, "cpu.shares") == "512\n"
        handle.remove()
    assert texts == {f"knot[test/svc.0]: setting cgroup limit: {shares} = lots: EINVAL "
                     f"(Invalid argument) (cpu-shares in {spec.container_config})\n"}


def test_an_existing_leaf_is_made_and_limited_by_the_broker(cg):
    """A reused name: set_limits orders memsw by the current limit; nothing for the knot."""
    group = cg.leaf()
    handle = cg.layout.create(group)
    try:
        handle.set_limits(50 * MIB, None)
        again, work = cg.layout.prepare(group, 200 * MIB, 256)  # raising: memsw first
        assert work is None
        assert int(_file(cg.layout, "memory", group, "memory.limit_in_bytes")) == 200 * MIB
        assert _file(cg.layout, "cpu", group, "cpu.shares") == "256\n"
    finally:
        handle.remove()


def test_default_limits_write_nothing_but_the_cpuset_copy(cg):
    handle, work = cg.layout.prepare(cg.leaf(), cgroups.UNLIMITED_BYTES, 1024)
    assert work is not None
    assert [os.path.basename(w[0]) for w in work.writes] == ["cpuset.cpus", "cpuset.mems"]
    assert work.dirs == handle.dirs
