"""Fuzz the decoder: `python3 -m protocol.fuzz --seconds N [--driver auto|atheris|random]`.

Owns: the sample messages (one per type, also used by the benchmark) and two
drivers that feed the decoder for N seconds: atheris (coverage guided, when
importable) seeded with every sample frame, and a random mutation driver over
the same frames and random bytes. Each input also picks an fd count 0..MAX_FDS+1
(the codec only counts fds: fake numbers are enough). Rule: the decoder may raise
ProtocolViolation and nothing else; any other exception prints the input and
exits 1. The last line printed is `inputs tried: N`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

from protocol.codec import MAX_FDS, REGISTRY, decode, encode
from protocol.errors import ProtocolViolation
from protocol.messages import (
    CleanUpInstance,
    CleanUpInstanceOk,
    CommandExited,
    GetSnapshot,
    GetStatus,
    Hello,
    HelloOk,
    InstanceExited,
    Message,
    PlanSwitch,
    Reload,
    ReloadOk,
    RequestDenied,
    RunCommand,
    SignalInstance,
    SignalInstanceOk,
    Snapshot,
    StartInstance,
    StartInstanceOk,
    StatusTree,
    SupervisorReady,
    SupervisorReadyOk,
    SwitchPlan,
)
from protocol.records import (
    ChildInfo,
    ChildState,
    DenyCode,
    InstanceStatus,
    LastExit,
    Pid,
    ProcessChange,
    ProcessStatus,
    ResourceUsage,
    Role,
    SandboxStatus,
    SwitchPlanEntry,
)


def sample_child(index: int) -> ChildInfo:
    """A plausible live child, `web/django.<index>`."""
    return ChildInfo(
        f"web/django.{index}", Pid(1000 + index), "sha256:" + "0f" * 32,
        1_790_000_000.25, 86_400.5 + index, ChildState.RUNNING,
    )  # fmt: skip


def sample_exit(index: int) -> InstanceExited:
    return InstanceExited(
        f"web/django.{index}", Pid(900 + index), None, int(signal.SIGKILL), False,
        ResourceUsage(0.5, 0.25, 20_480), 3600.0,
    )  # fmt: skip


def sample_messages() -> list[Message]:
    """One message of every registered type."""
    instance = InstanceStatus("web/django.0", ChildState.RUNNING, Pid(4121), 12.5, 2, None)
    stopped = InstanceStatus(
        "web/django.1", ChildState.EXITED, None, None, 3, LastExit(1, None, False, 1.7e9)
    )
    sandbox = SandboxStatus("web", None, (ProcessStatus("django", 2, (instance, stopped)),))
    return [
        Hello(1, Role.SUPERVISOR),
        HelloOk(1, Pid(1), 1_790_000_000.0, "0.1.0"),
        RequestDenied(DenyCode.POLICY, "/images/web/config: user-id: 0 is not in allow-users"),
        StartInstance("web/django.3", "sha256:" + "ab" * 32),
        StartInstanceOk("web/django.3", Pid(4121), 1_790_000_000.5, 86_400.25),
        SignalInstance("web/django.3", Pid(4121), signal.SIGTERM),
        SignalInstanceOk("web/django.3", Pid(4121)),
        GetSnapshot(),
        Snapshot((sample_child(0), sample_child(1)), (sample_exit(2),)),
        CleanUpInstance("web/django.3"),
        CleanUpInstanceOk("web/django.3"),
        SupervisorReady(),
        SupervisorReadyOk(),
        sample_exit(3),
        GetStatus(),
        StatusTree(Pid(1), 3600.0, (sandbox, SandboxStatus("db", "bad yaml", ()))),
        Reload(),
        ReloadOk(("/etc/lithos/processes/db.yaml: instances: -1 must be >= 0",)),
        PlanSwitch("web", b"django: {instances: 3}\n"),
        SwitchPlan("web", (SwitchPlanEntry("django", ProcessChange.RESIZED, 2, 3),)),
        RunCommand("web", "migrate", ("--fake", "x")),
        CommandExited(0, None),
    ]


def seed_frames() -> list[tuple[bytes, int]]:
    """Every sample message encoded, with the fd count it takes."""
    frames = []
    for message in sample_messages():
        request_id = 0 if type(message).__name__ == "InstanceExited" else 7
        frames.append((encode(message, request_id), message.FDS))
    return frames


def check_one(data: bytes, fd_count: int) -> None:
    """Decode one input; ProtocolViolation is the only acceptable failure."""
    with contextlib.suppress(ProtocolViolation):
        decode(data, range(100, 100 + fd_count))


# Byte strings worth splicing in: msgpack markers of huge lengths and ext types,
# every type tag and field name, and invalid UTF-8.
_TOKENS = [
    b"\xc1", b"\xc0", b"\xc2", b"\xc3", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xd4\x01\x00", b"\xd6\xff\x00\x00\x00\x00",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xa2\xc3\x28", b"\x91" * 64, b"\x81\xa0\xc0",
] + [bytes([0xA0 + len(tag)]) + tag.encode() for tag in REGISTRY if len(tag) < 32]  # fmt: skip


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """One to four random edits of data."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(buf))
        match rng.randrange(8):
            case 0 if buf:
                buf[at % len(buf)] ^= 1 << rng.randrange(8)
            case 1 if buf:
                buf[at % len(buf)] = rng.randrange(256)
            case 2:
                buf[at:at] = rng.randbytes(rng.randint(1, 8))
            case 3:
                del buf[at : at + rng.randint(1, 16)]
            case 4:
                del buf[at:]
            case 5:
                buf[at:at] = rng.choice(_TOKENS)
            case 6:
                other = rng.choice(others)
                buf[at:] = other[rng.randint(0, len(other)) :]
            case _:
                start = rng.randint(0, len(buf))
                buf[at:at] = buf[start : start + rng.randint(1, 32)]
    return bytes(buf)


def _fail(data: bytes, fd_count: int, tried: int) -> int:
    traceback.print_exc()
    print(f"decoder raised on input {data!r} with {fd_count} fds", file=sys.stderr)
    print(f"inputs tried: {tried}", flush=True)
    return 1


def run_random(seconds: float, seed: int) -> int:
    """Mutate the seed frames and try random bytes until the time is up."""
    rng = random.Random(seed)
    seeds = seed_frames()
    others = [frame for frame, _ in seeds]
    deadline = time.monotonic() + seconds
    tried = 0
    while True:
        for _ in range(256):  # read the clock once per batch
            if rng.random() < 0.1:
                data, fd_count = rng.randbytes(rng.randint(0, 64)), rng.randint(0, MAX_FDS + 1)
            else:
                data, fd_count = rng.choice(seeds)
                data = mutate(rng, data, others)
                if rng.random() < 0.1:
                    fd_count = rng.randint(0, MAX_FDS + 1)
            tried += 1
            try:
                check_one(data, fd_count)
            except Exception:
                return _fail(data, fd_count, tried)
        if time.monotonic() >= deadline:
            print(f"inputs tried: {tried}", flush=True)
            return 0


def run_atheris(seconds: float) -> int:
    """libFuzzer via atheris, seeded with every sample frame; ends itself at the deadline."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    corpus = tempfile.mkdtemp(prefix="lithos-fuzz-")
    for index, (frame, fd_count) in enumerate(seed_frames()):
        with open(os.path.join(corpus, f"seed-{index}"), "wb") as file:
            file.write(bytes([fd_count]) + frame)
    deadline = time.monotonic() + seconds
    tried = 0

    def finish(status: int) -> None:
        for name in os.listdir(corpus):
            os.unlink(os.path.join(corpus, name))
        os.rmdir(corpus)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # libFuzzer's loop never returns; leave without its exit path

    def one_input(data: bytes) -> None:
        nonlocal tried
        tried += 1
        fd_count = data[0] % (MAX_FDS + 2) if data else 0
        try:
            codec.decode(data[1:], range(100, 100 + fd_count))
        except violation:
            pass
        except Exception:
            finish(_fail(data[1:], fd_count, tried))
        if tried % 256 == 0 and time.monotonic() >= deadline:
            print(f"inputs tried: {tried}", flush=True)
            finish(0)

    # Coverage only where it matters: re-import our package under atheris's import hook
    # (instrumenting every loaded module costs tens of seconds; msgpack is C anyway).
    for name in [name for name in sys.modules if name.partition(".")[0] == "protocol"]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["protocol"]):
        codec = importlib.import_module("protocol.codec")
        violation = importlib.import_module("protocol.errors").ProtocolViolation
    args = [sys.argv[0], corpus, "-max_len=4096", f"-max_total_time={int(seconds) + 60}"]
    atheris.Setup(args, one_input)
    atheris.Fuzz()
    return 1  # not reached


def _atheris_available() -> bool:
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m protocol.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run")
    parser.add_argument("--driver", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=None, help="random driver's seed")
    args = parser.parse_args(argv)
    drivers: dict[str, Callable[[], int]] = {
        "atheris": lambda: run_atheris(args.seconds),
        "random": lambda: run_random(args.seconds, args.seed or random.randrange(2**32)),
    }
    driver = args.driver
    if driver == "auto":
        driver = "atheris" if _atheris_available() else "random"
    print(f"fuzzing protocol.codec.decode for {args.seconds}s with the {driver} driver")
    return drivers[driver]()


if __name__ == "__main__":
    sys.exit(main())
