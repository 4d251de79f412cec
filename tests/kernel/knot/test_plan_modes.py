"""One plan, two executors (issue #10 item 1): init.c and knot.plan.execute set up alike.

The same spec is started three ways: spawned straight into the native init, which
runs the ops (the default, knot.nativespawn); forked, the ops run in Python, then
the native init exec'd (LITHOS_KNOT_SPAWN=fork); exec'd Python knot that stays pid 1
(no native init). Inside the container the mounts must be the same, and every
failing step must give the same line and exit 78.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from knot.exitcodes import EXIT_SETUP_FAILED
from knot.spec import HostsFile, Volume, VolumeKind

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

MODES = ("spawn", "fork", "python")


def _mounts(lines: list[str]) -> list[str]:
    """mountinfo without the ids and device numbers (new for every tmpfs, proc...)."""
    return [" ".join(line.split()[3:]) for line in lines]


def test_the_same_mounts_inside_in_every_mode(env, start, tmp_path):
    ro = tmp_path / "ro-src"
    ro.mkdir()
    (ro / "file").write_text("ro\n")
    spec = env.spec("cat /proc/self/mountinfo >&3; echo END >&3", volumes=(
        Volume(VolumeKind.READONLY, "/ro", str(ro)),
        Volume(VolumeKind.PERSISTENT, "/data", str(tmp_path / "persist"), mkdir=True,
               mode=0o750),
        Volume(VolumeKind.STATEDIR, "/state", str(tmp_path / "statedir"), mode=0o700),
        Volume(VolumeKind.TMPFS, "/scratch", None, size_bytes=1 << 20, mode=0o1777)),
        hosts_file=dataclasses.replace(env.spec("").hosts_file, localhost=True, mount=True),
        fileno_limit=777)
    seen = {}
    for mode in MODES:
        knot = start(mode, spec, events=True)
        lines = []
        while (line := knot.read_event()) != "END":
            lines.append(line)
        assert knot.wait() == 2, knot.stderr_text()  # a daemon that exits: abnormal
        seen[mode] = _mounts(lines)
    assert seen["spawn"] == seen["fork"] == seen["python"]
    points = [m.split()[1] for m in seen["spawn"]]
    assert points == ["/", "/dev", "/dev/pts", "/sys", "/proc", "/ro", "/data", "/state",
                      "/scratch", "/etc/resolv.conf", "/etc/hosts"]


def _broken_specs(env):
    base = env.spec("exit 0")
    yield "missing image", dataclasses.replace(base, image_root=str(env.tmp / "no-image"))
    yield "missing source", dataclasses.replace(base, volumes=(
        Volume(VolumeKind.READONLY, "/ro", str(env.tmp / "nowhere")),))
    yield "missing mount point", dataclasses.replace(base, volumes=(
        Volume(VolumeKind.TMPFS, "/not-in-image", None, size_bytes=1 << 20),))
    yield "nothing generated", dataclasses.replace(base, hosts_file=HostsFile(
        mount=True, copy_from_host=False, localhost=False, public_hostname=False,
        source=str(env.host_hosts)))
    yield "missing resolv.conf", dataclasses.replace(base, resolv_conf=dataclasses.replace(
        base.resolv_conf, source=str(env.tmp / "no-resolv")))
    yield "rlimit", dataclasses.replace(base, fileno_limit=2**30)  # > fs.nr_open
    yield "service exec", dataclasses.replace(base, executable="/bin/nonexistent")


def test_every_failing_step_gives_the_same_line_in_every_mode(env, start):
    for what, spec in _broken_specs(env):
        lines = {}
        for mode in MODES:
            knot = start(mode, spec)
            assert knot.wait() == EXIT_SETUP_FAILED, (what, mode, knot.stderr_text())
            lines[mode] = knot.stderr_text()
            assert lines[mode].count("\n") == 1, (what, mode, lines[mode])
        assert lines["spawn"] == lines["fork"] == lines["python"], (what, lines)


def test_etc_hosts_symlink_and_no_tmp(env, start):
    (env.image / "etc" / "hosts").unlink()
    (env.image / "etc" / "hosts").symlink_to("/state/hosts")
    spec = env.spec("exit 0", hosts_file=dataclasses.replace(env.spec("").hosts_file,
                                                             mount=True))
    lines = {mode: start(mode, spec) for mode in MODES}
    assert {k.wait() for k in lines.values()} == {EXIT_SETUP_FAILED}
    texts = {k.stderr_text() for k in lines.values()}
    assert len(texts) == 1 and "/etc/hosts is not a valid mount point" in texts.pop()
    (env.image / "tmp").rmdir()
    knots = [start(mode, env.spec("exit 0")) for mode in MODES]
    assert {k.wait() for k in knots} == {EXIT_SETUP_FAILED}
    texts = {k.stderr_text() for k in knots}
    assert len(texts) == 1 and "tmp: missing (the image must have a /tmp" in texts.pop()


@pytest.fixture
def group():
    """A fresh group `lt-join-<hex>` in the memory and cpu hierarchies (removed at the
    end, after the test's knots were reaped)."""
    import secrets as _secrets

    from broker import cgroups

    layout = cgroups.detect(("memory", "cpu"))
    handle = layout.create(f"lt-join-{_secrets.token_hex(4)}")
    try:
        yield handle
    finally:
        handle.remove()


def test_the_knot_joins_its_cgroup_first_in_every_mode(env, start, group):
    """T-51: spec.cgroup_procs is the plan's first step (knot.plan's join op), so the
    knot, and the service it forks, run in the group, whichever executor ran it."""
    spec = env.spec("cat /proc/self/cgroup >&3; echo END >&3", cgroup_procs=group.procs_files)
    for mode in MODES:
        knot = start(mode, spec, events=True)
        lines = []
        while (line := knot.read_event()) != "END":
            lines.append(line)
        assert knot.wait() == 2, knot.stderr_text()
        joined = {line.split(":", 2)[1] for line in lines if line.endswith(f":/{group.group}")}
        assert {"memory", "cpu,cpuacct"} <= joined or {"memory", "cpu"} <= joined, (mode, lines)


def test_a_failed_join_is_one_line_and_the_container_runs(env, start, tmp_path):
    """As when the broker joined it: the knot says so (stderr = its stdio log) and runs."""
    missing = str(tmp_path / "gone" / "cgroup.procs")
    spec = env.spec("echo ran >&3", cgroup_procs=(missing,))
    texts = set()
    for mode in MODES:
        knot = start(mode, spec, events=True)
        assert knot.read_event() == "ran", mode
        assert knot.wait() == 2, knot.stderr_text()
        texts.add(knot.stderr_text())
    assert texts == {f"knot[{spec.name}]: joining cgroup: {missing}: ENOENT "
                     "(No such file or directory)\n"}
