"""knot.plan: the setup as ops (issue #10 item 1), built on the host, one line per failure.

build() does the host-side steps (state dir, resolv.conf, hosts, volume dirs) in
tmp dirs here; the ops themselves are only looked at (the kernel tests run them).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from knot import plan
from knot.linux import MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT
from knot.plan import Op
from knot.spec import HostsFile, Kind, KnotSpec, ResolvConf, Volume, VolumeKind


@pytest.fixture
def spec(tmp_path: Path) -> KnotSpec:
    image = tmp_path / "image"
    for d in ("etc", "tmp", "data", "ro"):
        (image / d).mkdir(parents=True)
    (tmp_path / "resolv").write_text("nameserver 192.0.2.53\n")
    (tmp_path / "hosts").write_text("192.0.2.1 one\n")
    return KnotSpec(
        name="sb/p.0", kind=Kind.DAEMON, container_config="/cfg/main.yaml",
        config_filename="/etc/lithos/processes/sb.yaml", image_root=str(image),
        mount_dir=str(tmp_path / "mnt"), state_dir=str(tmp_path / "state"),
        devfs_dir=str(tmp_path / "dev"), volumes=(),
        resolv_conf=ResolvConf(mount=None, copy_from_host=True, source=str(tmp_path / "resolv")),
        hosts_file=HostsFile(mount=False, copy_from_host=True, localhost=True,
                             public_hostname=False, source=str(tmp_path / "hosts")),
        uid=0, gid=0, uid_map=(), gid_map=(), fileno_limit=4096, executable="/bin/sh",
        argv=("/bin/sh",), environ=(("A", "b"),), pid_env_vars=(), workdir="/", secrets=None,
        tcp_fds=(), interactive=False, stdout_stderr_file=None, kill_timeout_s=5,
        restart_timeout_s=1, restart_process_only=False, normal_exit_codes=())


def test_a_plan_in_order_with_the_host_side_done(spec: KnotSpec) -> None:
    ops, environ = plan.build(spec)
    labels = [op.label for op in ops]
    assert labels[0] == "make / private" and labels[-1] == "pivot_root"
    order = ["make / private", "bind image read-only", "mount /dev, /sys, /proc",
             "mount /etc/resolv.conf", "set limits", "pivot_root"]
    assert [lbl for i, lbl in enumerate(labels) if lbl not in labels[:i]] == order
    assert "mount /etc/hosts" not in labels  # mount: false
    assert Op("rlimit", "set limits", "fileno-limit", ("4096",)) in ops
    state = Path(spec.state_dir)
    assert (state / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert (state / "hosts").read_text() == \
        "192.0.2.1 one\n\n127.0.0.1 localhost.localdomain localhost\n"
    assert environ == {"TERM": os.environ.get("TERM", "dumb"), "A": "b",
                       "LITHOS_NAME": "sb/p.0",
                       "LITHOS_CONFIG": "/etc/lithos/processes/sb.yaml"}
    assert ops[-4:] == [Op("chdir", "pivot_root", "image", (spec.mount_dir,)),
                        Op("pivot_root", "pivot_root", "image",
                           (spec.mount_dir, spec.mount_dir + "/tmp")),
                        Op("chdir", "pivot_root", "image", ("/",)),
                        Op("umount2", "pivot_root", "image", ("/tmp", "2"))]


def _volume_ops(spec: KnotSpec, vol: Volume) -> list[Op]:
    ops, _ = plan.build(dataclasses.replace(spec, volumes=(vol,)))
    return [op for op in ops if op.key == f'volumes: "{vol.target}"']


def test_ops_of_each_volume_kind(spec: KnotSpec, tmp_path: Path) -> None:
    target = spec.mount_dir + "/data"
    label = 'volumes: "/data"'
    src = tmp_path / "src"
    src.mkdir()
    ro = _volume_ops(spec, Volume(VolumeKind.READONLY, "/data", str(src)))
    assert [(op.op, op.label) for op in ro] == [("stat", "mount Readonly volume")] * 2 + \
        [("mount", "mount Readonly volume")] * 2
    assert ro[0].args == (str(src),) and ro[1].args == (target,)  # the source named first
    assert ro[2].args == (str(src), target, "", str(MS_BIND | MS_REC), "")
    assert ro[3].args == ("", target, "", str(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
                                              | MS_NODEV), "")
    assert all(op.key == label for op in ro)
    new = tmp_path / "persistent"
    per = _volume_ops(spec, Volume(VolumeKind.PERSISTENT, "/data", str(new), mode=0o750,
                                   mkdir=True, user=12, group=34))
    st = new.stat()  # made on the host, while the plan was built (E-28)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 12, 34)
    assert per[3].args[3] == str(MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    sd = tmp_path / "state-vol"
    _volume_ops(spec, Volume(VolumeKind.STATEDIR, "/data", str(sd), mode=0o700))
    assert sd.stat().st_mode & 0o7777 == 0o700
    tmpfs = _volume_ops(spec, Volume(VolumeKind.TMPFS, "/data", None, size_bytes=1 << 20,
                                     mode=0o1777))
    assert [op.op for op in tmpfs] == ["stat", "mount"]
    assert tmpfs[1].args == ("tmpfs", target, "tmpfs", str(MS_NOSUID | MS_NODEV),
                             "size=1048576,mode=01777")


def test_a_failing_host_step_ends_the_plan_where_it_failed(spec: KnotSpec,
                                                           tmp_path: Path) -> None:
    bad = dataclasses.replace(spec, resolv_conf=dataclasses.replace(
        spec.resolv_conf, source=str(tmp_path / "missing")))
    ops, environ = plan.build(bad)
    assert [op.label for op in ops[:1]] == ["make / private"] and environ == {}
    assert ops[-1] == Op("fail", "error preparing resolv.conf", "resolv-conf", (
        f"{tmp_path}/missing: ENOENT (No such file or directory)",))
    assert plan.error_line(ops[-1].label, ops[-1].key, ops[-1].args[0], "/cfg/main.yaml") == (
        f"error preparing resolv.conf: {tmp_path}/missing: ENOENT (No such file or directory) "
        "(resolv-conf in /cfg/main.yaml)")


def test_a_mount_point_outside_the_image_is_refused_on_the_host(spec: KnotSpec) -> None:
    data = Path(spec.image_root) / "data"
    data.rmdir()
    data.symlink_to("/etc")
    ops, _ = plan.build(dataclasses.replace(spec, volumes=(
        Volume(VolumeKind.TMPFS, "/data", None, size_bytes=1),)))
    assert ops[-1].op == "fail" and ops[-1].key == 'volumes: "/data"'
    assert ops[-1].args[0].startswith(f"{spec.mount_dir}/data: resolves to /etc, outside the "
                                      "container")


@pytest.mark.parametrize("mount", [None, True])
def test_etc_files_are_checked_inside_and_skipped_or_refused(spec: KnotSpec,
                                                             mount: bool | None) -> None:
    ops, _ = plan.build(dataclasses.replace(spec, resolv_conf=dataclasses.replace(
        spec.resolv_conf, mount=mount)))
    etc = [op for op in ops if op.label == "mount /etc/resolv.conf"]
    assert [op.op for op in etc] == ["check", "check", "stat", "stat", "mount"]
    invalid = "" if mount is None else ("/etc/resolv.conf is not a valid mount point (it must "
                                        "be a regular file, not a symlink, in the image)")
    assert etc[0].args == (spec.mount_dir + "/etc", "dir", invalid, "4")
    assert etc[1].args == (spec.mount_dir + "/etc/resolv.conf", "reg", invalid, "3")
    assert etc[4].args[3] == str(MS_BIND)  # not recursive, no remount


def test_etc_file_with_nothing_generated(spec: KnotSpec) -> None:
    nothing = dataclasses.replace(spec.hosts_file, copy_from_host=False, localhost=False)
    ops, _ = plan.build(dataclasses.replace(spec, hosts_file=dataclasses.replace(
        nothing, mount=None)))
    assert "mount /etc/hosts" not in [op.label for op in ops]  # skipped, nothing to check
    ops, _ = plan.build(dataclasses.replace(spec, hosts_file=dataclasses.replace(
        nothing, mount=True)))
    etc = [op for op in ops if op.label == "mount /etc/hosts"]
    assert [op.op for op in etc] == ["check", "check", "fail"]
    assert etc[2].args[0].startswith("mount is true but nothing was generated")


def test_python_executor_lines(tmp_path: Path) -> None:
    lines: list[str] = []

    class Failed(Exception):
        pass

    def fail(line: str):  # type: ignore[no-untyped-def]
        lines.append(line)
        raise Failed

    cases = [
        [Op("stat", "mount Readonly volume", 'volumes: "/x"', (str(tmp_path / "no"),))],
        [Op("check", "pivot_root", "image", (str(tmp_path / "no"), "isdir", "no /tmp", "0"))],
        [Op("check", "l", "", (str(tmp_path / "no"), "dir", "", "1")),
         Op("fail", "skipped", "", ("never",)), Op("fail", "last", "k", ("reached",))],
        [Op("rlimit", "set limits", "fileno-limit", (str(2**40),))],
    ]
    for ops in cases:
        with pytest.raises(Failed):
            plan.execute(ops, "/cfg.yaml", fail, fail)
    assert lines == [
        f'mount Readonly volume: {tmp_path}/no: ENOENT (No such file or directory) '
        '(volumes: "/x" in /cfg.yaml)',
        "pivot_root: no /tmp (image in /cfg.yaml)",
        "last: reached (k in /cfg.yaml)",
        "set limits: EPERM (Operation not permitted) (fileno-limit in /cfg.yaml)",
    ]


def test_secrets_and_public_hostname_are_never_planned_in_the_spawner(spec: KnotSpec) -> None:
    """The spawner (the broker) builds plans itself only when that needs neither the
    secrets' plaintext nor a DNS lookup; those knots are forked (knot.spawn.spawnable)."""
    from knot.spawn import spawnable

    assert spawnable(spec)
    public = dataclasses.replace(
        spec, hosts_file=dataclasses.replace(spec.hosts_file, public_hostname=True))
    assert not spawnable(public)


def test_the_cgroup_join_comes_before_every_other_step(spec: KnotSpec) -> None:
    """T-51: the knot joins its groups (one cgroup.procs per hierarchy) before anything."""
    joined = dataclasses.replace(spec, cgroup_procs=("/cg/memory/x/cgroup.procs",
                                                     "/cg/cpu/x/cgroup.procs"))
    ops, _ = plan.build(joined)
    assert ops[:2] == [Op("join", "joining cgroup", "", ("/cg/memory/x/cgroup.procs",)),
                       Op("join", "joining cgroup", "", ("/cg/cpu/x/cgroup.procs",))]
    assert ops[2].label == "make / private"
    assert all(op.op != "join" for op in plan.build(spec)[0])
