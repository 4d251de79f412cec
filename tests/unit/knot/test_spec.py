"""KnotSpec's JSON form: round trip and strict validation, naming the key."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knot.service import is_normal
from knot.spec import (
    HostsFile,
    IdMap,
    Kind,
    KnotSpec,
    ResolvConf,
    Secrets,
    SpecError,
    Volume,
    VolumeKind,
    mount_order,
)

SPEC = KnotSpec(
    name="web/django.0", kind=Kind.DAEMON, container_config="/images/web/config/main.yaml",
    config_filename="/config/main.yaml", image_root="/var/lib/lithos/images/web",
    mount_dir="/run/lithos/mnt", state_dir="/run/lithos/state/web/django.0",
    devfs_dir="/var/lib/lithos/dev",
    volumes=(Volume(VolumeKind.TMPFS, "/tmp", None, size_bytes=104857600, mode=0o1777),
             Volume(VolumeKind.READONLY, "/etc/x", "/srv/x"),
             Volume(VolumeKind.PERSISTENT, "/data", "/srv/data", mode=0o700, mkdir=True,
                    user=1, group=1)),
    resolv_conf=ResolvConf(mount=None, copy_from_host=True, source="/etc/resolv.conf"),
    hosts_file=HostsFile(mount=True, copy_from_host=False, localhost=True,
                         public_hostname=True, source="/etc/hosts",
                         additional_hosts=(("db", "10.0.0.1"),)),
    uid=1000, gid=1000, uid_map=(IdMap(0, 100000, 65536),), gid_map=(),
    fileno_limit=1024, executable="/usr/bin/python3",
    argv=("/usr/bin/python3", "app.py"), environ=(("A", "1"),), pid_env_vars=("LISTEN_PID",),
    workdir="/app", secrets=Secrets(key_file="/etc/lithos/key", namespaces=("",),
                                    environ=(("PW", ("v2:a", "v2:b")),)),
    tcp_fds=(0, 3), interactive=False, stdout_stderr_file=None, kill_timeout_s=5,
    restart_timeout_s=1, restart_process_only=False, normal_exit_codes=(0, 42))


def test_round_trip():
    assert KnotSpec.from_json(SPEC.to_json()) == SPEC


@settings(max_examples=50, deadline=None)
@given(env=st.lists(st.tuples(st.text(min_size=1).filter(lambda s: "\0" not in s),
                              st.text().filter(lambda s: "\0" not in s)), max_size=5),
       argv=st.lists(st.text().filter(lambda s: "\0" not in s), min_size=1, max_size=5),
       uid=st.integers(0, 2**32 - 2), kill=st.floats(0, 86400))
def test_round_trip_any_strings(env, argv, uid, kill):
    spec = dataclasses.replace(SPEC, environ=tuple(env), argv=tuple(argv), uid=uid,
                               kill_timeout_s=kill)
    assert KnotSpec.from_json(spec.to_json()) == spec


def mutated(path: list[object], value: object, delete: bool = False) -> str:
    raw = json.loads(SPEC.to_json())
    node = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(raw)


@pytest.mark.parametrize(("path", "value", "message"), [
    (["bogus"], 1, "knot spec: unknown keys ['bogus']"),
    (["uid"], -1, "knot spec.uid: -1 must be in 0..4294967294"),
    (["uid"], True, "knot spec.uid: True must be an integer"),
    (["kind"], "Service", "knot spec.kind: 'Service' must be one of ['Daemon', 'Command']"),
    (["image_root"], "images/web", "knot spec.image_root: 'images/web' must be an absolute"),
    (["volumes", 1, "target"], "/a/../etc", "knot spec.volumes[1].target: '/a/../etc' must not"),
    (["volumes", 0, "source"], "/x", "knot spec.volumes[0].source: '/x': a Tmpfs volume has no"),
    (["volumes", 1, "source"], None, "knot spec.volumes[1].source: None: a Readonly volume needs"),
    (["volumes", 2, "mode"], 0o10000, "knot spec.volumes[2].mode: 4096 must be in 0..4095"),
    (["tcp_fds"], [2], "knot spec.tcp_fds[0]: fd 2 is stdout/stderr"),
    (["tcp_fds"], [3, 3], "knot spec.tcp_fds: [3, 3] has duplicates"),
    (["argv"], [], "knot spec.argv: must hold at least argv[0]"),
    (["kill_timeout_s"], -1, "knot spec.kill_timeout_s: -1 must be a number of seconds"),
    (["hosts_file", "mount"], "yes", "knot spec.hosts_file.mount: 'yes' must be true or false"),
    (["environ", 0], ["A"], "knot spec.environ[0]: ['A'] must be a pair"),
    (["executable"], "a\0b", "knot spec.executable: 'a\\x00b' must not contain NUL"),
    (["secrets", "environ_file"], "/s.yaml", "mutually exclusive"),
    (["normal_exit_codes"], [256], "knot spec.normal_exit_codes[0]: 256 must be in 0..255"),
])
def test_bad_values_are_named(path, value, message):
    with pytest.raises(SpecError) as info:
        KnotSpec.from_json(mutated(path, value))
    assert message in str(info.value)


def test_missing_key_and_not_json():
    with pytest.raises(SpecError, match=r"knot spec.resolv_conf: missing keys \['source'\]"):
        KnotSpec.from_json(mutated(["resolv_conf", "source"], None, delete=True))
    with pytest.raises(SpecError, match="knot spec: not JSON"):
        KnotSpec.from_json(b"{")
    with pytest.raises(SpecError, match="expected an object, got list"):
        KnotSpec.from_json(b"[]")


@pytest.mark.parametrize(("kind", "codes", "wait_status", "sigterm", "normal"), [
    (Kind.DAEMON, (), 0 << 8, False, False),
    (Kind.DAEMON, (), 0 << 8, True, True),       # K-42 rule 1: whatever the code
    (Kind.DAEMON, (), 15, False, True),          # rule 2: killed by SIGTERM
    (Kind.DAEMON, (), 9, False, False),
    (Kind.DAEMON, (3,), 3 << 8, False, True),    # rule 3
    (Kind.COMMAND, (3,), 0 << 8, False, False),
    (Kind.COMMAND, (), 0 << 8, False, True),     # rule 4
    (Kind.COMMAND, (), 1 << 8, False, False),
])
def test_is_normal(kind, codes, wait_status, sigterm, normal):
    spec = dataclasses.replace(SPEC, kind=kind, normal_exit_codes=codes)
    assert is_normal(spec, wait_status, sigterm) is normal


def test_status_words_are_protocol_stdiologs():
    # The knot (both pid 1s) words a death with protocol.stdiolog (K-41).
    from protocol.stdiolog import status_text_of
    assert status_text_of(1 << 8) == "exited with code 1"
    assert status_text_of(9) == "killed by signal SIGKILL[9]"
    assert status_text_of(11 | 0x80) == "killed by signal SIGSEGV[11] (core dumped)"


def test_mount_order_is_v1():
    vols = {t: Volume(VolumeKind.TMPFS, t, None) for t in ("/var/b", "/var", "/tmp", "/var/a")}
    assert [v.target for v in mount_order(vols)] == ["/tmp", "/var", "/var/a", "/var/b"]
