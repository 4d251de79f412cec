"""protocol.codec: every message round-trips; anything else is one ProtocolViolation.

Hypothesis strategies below generate every registered message type (and the test
`test_strategies_cover_the_registry` keeps the two in step), h11-style.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol import records as r
from protocol.codec import (
    DEFAULT_MAX_LARGE_MESSAGE_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    REGISTRY,
    Decoder,
    Frame,
    decode,
    encode,
)
from protocol.errors import ProtocolViolation
from protocol.fuzz import mutate, sample_child, sample_messages, seed_frames

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
instances = st.builds(lambda s, p, n: f"{s}/{p}.{n}", names, names, st.integers(0, 999_999))
pids = st.builds(r.Pid, st.integers(1, r.PID_MAX))
seconds = st.floats(0, 1e12, allow_nan=False, allow_infinity=False)
fingerprints = st.from_regex(r"[!-~]{1,256}", fullmatch=True)
texts = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=100
)
counts = st.integers(0, 999_999)
exits = st.one_of(
    st.tuples(st.integers(0, 255), st.none()), st.tuples(st.none(), st.integers(1, 64))
)
live_states = st.sampled_from([r.ChildState.RUNNING, r.ChildState.SIGNALLED])
rusages = st.builds(r.ResourceUsage, seconds, seconds, st.integers(0, 2**53))
children = st.builds(r.ChildInfo, instances, pids, fingerprints, seconds, seconds, live_states)
last_exits = st.builds(lambda e, core, at: r.LastExit(*e, core, at), exits, st.booleans(), seconds)
instance_statuses = st.one_of(
    st.builds(
        r.InstanceStatus, instances, live_states, pids, seconds, counts, st.none() | last_exits
    ),
    st.builds(
        r.InstanceStatus, instances, st.just(r.ChildState.EXITED), st.none(), st.none(), counts,
        st.none() | last_exits,
    ),
)  # fmt: skip
process_statuses = st.builds(
    r.ProcessStatus, names, counts, st.lists(instance_statuses, max_size=3).map(tuple)
)
sandbox_statuses = st.builds(
    r.SandboxStatus, names, st.none() | texts, st.lists(process_statuses, max_size=3).map(tuple)
)
exited = st.builds(
    lambda i, p, e, core, ru, t: m.InstanceExited(i, p, *e, core, ru, t),
    instances, pids, exits, st.booleans(), rusages, seconds,
)  # fmt: skip


def tuples_of(strategy: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    return st.lists(strategy, max_size=max_size).map(tuple)


STRATEGIES: dict[type[m.Message], st.SearchStrategy[Any]] = {
    m.Hello: st.builds(m.Hello, st.integers(0, 2**31 - 1), st.sampled_from(r.Role)),
    m.HelloOk: st.builds(
        m.HelloOk, st.integers(0, 2**31 - 1), pids, seconds, texts.map(lambda t: t[:64])
    ),
    m.RequestDenied: st.builds(m.RequestDenied, st.sampled_from(r.DenyCode), texts),
    m.StartInstance: st.builds(m.StartInstance, instances, fingerprints),
    m.StartInstanceOk: st.builds(m.StartInstanceOk, instances, pids, seconds, seconds),
    m.SignalInstance: st.builds(m.SignalInstance, instances, pids, st.sampled_from(signal.Signals)),
    m.SignalInstanceOk: st.builds(m.SignalInstanceOk, instances, pids),
    m.GetSnapshot: st.just(m.GetSnapshot()),
    m.Snapshot: st.builds(
        m.Snapshot,
        st.lists(children, max_size=4, unique_by=(lambda c: c.instance, lambda c: c.pid)).map(
            tuple
        ),
        tuples_of(exited),
    ),
    m.CleanUpInstance: st.builds(m.CleanUpInstance, instances),
    m.CleanUpInstanceOk: st.builds(m.CleanUpInstanceOk, instances),
    m.SupervisorReady: st.just(m.SupervisorReady()),
    m.SupervisorReadyOk: st.just(m.SupervisorReadyOk()),
    m.InstanceExited: exited,
    m.GetStatus: st.just(m.GetStatus()),
    m.StatusTree: st.builds(m.StatusTree, pids, seconds, tuples_of(sandbox_statuses, 3)),
    m.Reload: st.just(m.Reload()),
    m.ReloadOk: st.builds(m.ReloadOk, tuples_of(texts)),
    m.PlanSwitch: st.builds(m.PlanSwitch, names, st.binary(max_size=200)),
    m.SwitchPlan: st.builds(
        m.SwitchPlan,
        names,
        tuples_of(
            st.builds(r.SwitchPlanEntry, names, st.sampled_from(r.ProcessChange), counts, counts)
        ),
    ),
    m.RunCommand: st.builds(m.RunCommand, names, names, tuples_of(texts)),
    m.CommandExited: exits.map(lambda e: m.CommandExited(*e)),
}  # fmt: skip

any_message = st.one_of(*STRATEGIES.values())


def request_id_for(message: m.Message) -> int:
    return 0 if message.KIND is m.Kind.EVENT else 42


def fds_for(message: m.Message) -> list[int]:
    return list(range(10, 10 + message.FDS))


def test_strategies_cover_the_registry() -> None:
    assert set(STRATEGIES) == set(REGISTRY.values()) == set(m.MESSAGE_TYPES)
    assert {type(sample) for sample in sample_messages()} == set(m.MESSAGE_TYPES)


def test_every_request_has_its_reply_and_names_follow_style_p2() -> None:
    requests = {cls for cls in m.MESSAGE_TYPES if cls.KIND is m.Kind.REQUEST}
    assert set(m.REPLY_TO) == requests
    for request, reply in m.REPLY_TO.items():
        assert reply.KIND is m.Kind.REPLY
        assert reply.__name__ in (request.__name__ + "Ok", "Snapshot", "StatusTree",
                                  "SwitchPlan", "CommandExited")  # fmt: skip
    for cls in m.MESSAGE_TYPES:
        assert cls.__doc__ and "->" in cls.__doc__, f"{cls.__name__}: who sends it to whom?"
        if cls.KIND is m.Kind.EVENT:
            assert cls.__name__.endswith("ed")


@pytest.mark.parametrize("cls", m.MESSAGE_TYPES, ids=lambda cls: cls.__name__)
@SETTINGS
@given(data=st.data())
def test_round_trip(cls: type[m.Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    request_id = 0
    if message.KIND is not m.Kind.EVENT:
        request_id = data.draw(st.integers(1, 2**63 - 1))
    fds = fds_for(message)
    frame = decode(encode(message, request_id), fds)
    assert frame == Frame(message, request_id, tuple(fds))
    assert type(frame.message) is cls


@SETTINGS
@given(data=st.binary(max_size=512), fd_count=st.integers(0, 5))
def test_arbitrary_bytes_give_only_protocol_violation(data: bytes, fd_count: int) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode(data, range(fd_count))


@settings(max_examples=300, deadline=None)
@given(message=any_message, seed=st.integers(0, 2**32 - 1), fd_count=st.integers(0, 4))
def test_mutated_frames_give_only_protocol_violation(
    message: m.Message, seed: int, fd_count: int
) -> None:
    valid = encode(message, request_id_for(message))
    data = mutate(random.Random(seed), valid, [valid])
    try:
        frame = decode(data, range(fd_count))
    except ProtocolViolation:
        return
    # Whatever is accepted is a valid message: it encodes back to an equal one.
    again = decode(encode(frame.message, frame.request_id), range(fd_count))
    assert again.message == frame.message


@pytest.mark.parametrize("frame", seed_frames(), ids=lambda f: msgpack.unpackb(f[0])[0])
def test_every_truncation_is_rejected(frame: tuple[bytes, int]) -> None:
    data, fd_count = frame
    for size in range(len(data)):  # one byte at a time, as h11 feeds its parser
        with pytest.raises(ProtocolViolation):
            decode(data[:size], range(fd_count))
    decode(data, range(fd_count))


@pytest.mark.parametrize("frame", seed_frames(), ids=lambda f: msgpack.unpackb(f[0])[0])
def test_wrong_fd_counts_are_rejected(frame: tuple[bytes, int]) -> None:
    data, fd_count = frame
    for wrong in {0, fd_count - 1, fd_count + 1, 4} - {fd_count, -1}:
        with pytest.raises(ProtocolViolation, match="fds"):
            decode(data, range(wrong))


def raw(tag: Any, request_id: Any, body: Any) -> bytes:
    data: bytes = msgpack.packb([tag, request_id, body], use_bin_type=True)
    return data


START = {"instance": "web/django.1", "fingerprint": "abc"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw("StartInstance", 1, START) + b"\xc0", "msgpack"),  # trailing bytes
        (raw("StartInstance", 1, {**START, "uid": 0}), "unknown field 'uid'"),
        (raw("StartInstance", 1, {"instance": "web/django.1"}), "missing field.*fingerprint"),
        (raw("StartInstance", 1, [*START.values()]), "expected a map"),
        (raw("StartInstance", 0, START), "request id 0"),
        (raw("StartInstance", -1, START), "request id -1"),
        (raw("StartInstance", True, START), "request id is a bool"),
        (raw("InstanceExited", 5, {}), "on an event"),
        (raw("StartInstance", 1, {**START, "instance": "../etc.1"}), "instance"),
        (raw("StartInstance", 1, {**START, "instance": b"web/django.1"}), "expected str"),
        (raw("Hello", 1, {"protocol_version": True, "role": "supervisor"}), "int64, got bool"),
        (raw("Hello", 1, {"protocol_version": 1, "role": "root"}), "not a Role"),
        (raw("Hello", 1, {"protocol_version": 1.0, "role": "control"}), "int64"),
        (raw("Hello", 1, {"protocol_version": 2**64 - 1, "role": "control"}), "int64"),
        (raw(b"Hello", 1, {"protocol_version": 1, "role": "control"}), "unknown message type"),
        (raw("Spawn", 1, {}), "unknown message type 'Spawn'"),
        (raw("SignalInstance", 1, {"instance": "a/b.0", "pid": 5, "signal": True}), "Signals"),
        (raw("SignalInstance", 1, {"instance": "a/b.0", "pid": 0, "signal": 15}), "pid"),
        (raw("CommandExited", 1, {"exit_code": None, "signal": None}), "exactly one"),
        (raw("CommandExited", 1, {"exit_code": 256, "signal": None}), "0..255"),
        (
            raw(
                "StartInstanceOk",
                1,
                {
                    "instance": "a/b.0",
                    "pid": 5,
                    "started_at_wall": float("nan"),
                    "started_at_monotonic": 1.0,
                },
            ),
            "finite",
        ),  # fmt: skip
        (raw("GetStatus", 1, {}) + b"", None),
        (b"\x93\xadStartInstance\x01\xdb\x7f\xff\xff\xff", "msgpack"),  # a 2 GiB string
        (b"\x93\xadStartInstance\x01\xdd\xff\xff\xff\xff", "msgpack"),  # a 4 G-item array
        (b"\x93\xa5Hello\x01\x82\xa4role\xa2\xc3\x28", "msgpack"),  # invalid UTF-8
        (b"\x93\xa5Hello\x01\xd6\xff\x00\x00\x00\x00", "msgpack"),  # a timestamp ext
        (b"\x91" * 5000 + b"\xc0", "msgpack"),  # deep nesting
        (b"\x92\xa5Hello\x01", "expected \\[type, id, body\\]"),
        (b"\x83\xa1a\x01\xa1b\x02\xa1c\x03", "expected \\[type, id, body\\]"),
        (raw("GetStatus", 1, [[1, 2]]), "expected a map"),
    ],
)
def test_bad_frames_are_rejected_with_a_clear_message(data: bytes, match: str | None) -> None:
    if match is None:
        decode(data)
        return
    with pytest.raises(ProtocolViolation, match=match):
        decode(data)


def test_duplicate_fields_are_rejected() -> None:
    data = b"\x93\xa5Hello\x01\x83\xb0protocol_version\x01\xa4role\xa7control\xa4role\xa7control"
    with pytest.raises(ProtocolViolation, match="twice"):
        decode(data)


def test_nested_record_errors_name_the_path() -> None:
    child = {"instance": "a/b.0", "pid": 5, "fingerprint": "f", "started_at_wall": 1.0,
             "started_at_monotonic": 1.0, "state": "exploded"}  # fmt: skip
    with pytest.raises(ProtocolViolation, match=r"Snapshot.children: \[0\]: ChildInfo.state"):
        decode(raw("Snapshot", 3, {"children": [child], "pending_exits": []}))


def test_oversized_frames_are_rejected() -> None:
    big = raw("StartInstance", 1, {**START, "fingerprint": "x" * DEFAULT_MAX_MESSAGE_BYTES})
    with pytest.raises(ProtocolViolation, match="exceeds 65536"):
        decode(big)
    with pytest.raises(ProtocolViolation, match="exceeds"):
        decode(b"\x00" * (DEFAULT_MAX_LARGE_MESSAGE_BYTES + 1))
    small = Decoder(max_message_bytes=100, max_large_message_bytes=200)
    with pytest.raises(ProtocolViolation, match="exceeds 100"):
        small.decode(encode(m.RequestDenied(r.DenyCode.POLICY, "x" * 150), 1), [])
    with pytest.raises(ProtocolViolation, match="exceeds 200"):
        small.decode(encode(m.ReloadOk(("x" * 150, "y" * 150)), 1), [])


def test_a_snapshot_of_1000_children_fits_and_5000_do_not() -> None:
    snapshot = m.Snapshot(tuple(sample_child(i) for i in range(1000)), ())
    assert decode(encode(snapshot, 1)).message == snapshot
    with pytest.raises(ValueError, match="exceeds"):
        encode(m.Snapshot(tuple(sample_child(i) for i in range(6000)), ()), 1)


@pytest.mark.parametrize(
    ("message", "request_id", "error"),
    [
        (m.GetStatus(), 0, ValueError),
        (m.GetStatus(), True, TypeError),
        (m.InstanceExited("a/b.0", r.Pid(5), 0, None, False, r.ResourceUsage(0, 0, 0), 1), 3,
         ValueError),
        (m.StartInstance("a/b.0", "f"), 2**63, ValueError),
        (m.PlanSwitch("web", "yaml"), 1, TypeError),  # type: ignore[arg-type]
        (m.Hello(True, r.Role.CONTROL), 1, TypeError),
        (m.ReloadOk(["ok"]), 1, None),  # type: ignore[arg-type]  # a list encodes as a tuple
    ],
)  # fmt: skip
def test_encode_refuses_what_the_peer_would_refuse(
    message: m.Message, request_id: Any, error: type[Exception] | None
) -> None:
    if error is None:
        assert decode(encode(message, request_id)).message == m.ReloadOk(("ok",))
        return
    with pytest.raises(error):
        encode(message, request_id)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: m.StartInstance("web/django", "f"), "SANDBOX/PROCESS.N"),
        (lambda: m.StartInstance("web/django.01", "f"), "SANDBOX/PROCESS.N"),
        (lambda: m.StartInstance("web/../x.1", "f"), "SANDBOX/PROCESS.N"),
        (lambda: m.StartInstance("web/django.1", "has space"), "fingerprint"),
        (lambda: m.RunCommand("web", "cmd", ("a\0b",)), "NUL"),
        (lambda: r.ChildInfo("a/b.0", r.Pid(1), "f", 0, 0, r.ChildState.EXITED), "EXITED"),
        (lambda: r.InstanceStatus("a/b.0", r.ChildState.EXITED, r.Pid(1), None, 0, None), "pid"),
        (lambda: m.CommandExited(0, 9), "exactly one"),
        (lambda: r.ResourceUsage(-1.0, 0, 0), "utime_s"),
    ],
)
def test_constructors_check_domains_and_name_the_field(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("module", ["codec", "messages", "records", "errors", "handshake"])
def test_pure_modules_import_no_io(module: str) -> None:
    """STYLE P1: the pure modules import none of os, socket, time, subprocess."""
    source = (ROOT / "protocol" / f"{module}.py").read_text()
    imported = set(re.findall(r"^(?:from|import) ([\w.]+)", source, re.MULTILINE))
    assert not imported & {"os", "socket", "time", "subprocess", "select", "selectors"}
    assert ("msgpack" in imported) == (module == "codec")


def test_a_snapshot_listing_an_instance_twice_is_rejected() -> None:
    twin = r.ChildInfo("web/django.0", r.Pid(5), "f", 1.0, 1.0, r.ChildState.RUNNING)
    with pytest.raises(ValueError, match="instance web/django.0 listed twice"):
        m.Snapshot((sample_child(0), twin), ())
    body = msgpack.unpackb(encode(m.Snapshot((sample_child(0),), ()), 1))[2]
    body["children"] *= 2
    with pytest.raises(ProtocolViolation, match="listed twice"):
        decode(raw("Snapshot", 1, body))
