"""Cost of the protocol layer: `python3 bench/bench_protocol.py [--seconds-per-op S]`.

For a StartInstance and a Snapshot of 1000 children, measures encode, decode and
send + receive over a SOCK_SEQPACKET socketpair through protocol.channel, against
a baseline measured in the same run: raw msgpack.packb / unpackb of the same
wire structure and a raw socket send / recv_into of the same bytes. The ratio is
the price of validation (and of building typed objects). Runs in well under 30 s.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.channel import Channel  # noqa: E402
from protocol.codec import decode, encode  # noqa: E402
from protocol.fuzz import sample_child  # noqa: E402
from protocol.messages import Message, Snapshot, StartInstance  # noqa: E402


def per_op_seconds(op: Callable[[], object], budget_s: float) -> float:
    """Best of 5 rounds, each sized to take about budget_s / 5."""
    op()
    count, elapsed = 1, 0.0
    while elapsed < budget_s / 50:  # size a round
        count *= 2
        start = time.perf_counter()
        for _ in range(count):
            op()
        elapsed = time.perf_counter() - start
    per_round = max(1, int(count * (budget_s / 5) / elapsed))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_round):
            op()
        best = min(best, (time.perf_counter() - start) / per_round)
    return best


def bench(name: str, message: Message, budget_s: float) -> list[tuple[str, float, float]]:
    data = encode(message, 1)
    wire = msgpack.unpackb(data, raw=False)  # the same structure, as plain lists and dicts
    sender, receiver = Channel.pair()
    raw_left, raw_right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw_left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    buffer = bytearray(2 * 1024 * 1024)

    def channel_round() -> None:
        sender.send(message, 1)
        receiver.recv()

    def raw_round() -> None:
        raw_left.send(data)
        raw_right.recv_into(buffer)

    def raw_full() -> None:
        raw_left.send(msgpack.packb(wire))
        size = raw_right.recv_into(buffer)
        msgpack.unpackb(bytes(buffer[:size]), raw=False)

    try:
        rows = [
            ("encode", per_op_seconds(lambda: encode(message, 1), budget_s),
             per_op_seconds(lambda: msgpack.packb(wire), budget_s)),
            ("decode", per_op_seconds(lambda: decode(data), budget_s),
             per_op_seconds(lambda: msgpack.unpackb(data, raw=False), budget_s)),
            ("round trip", per_op_seconds(channel_round, budget_s),
             per_op_seconds(raw_full, budget_s)),
        ]  # fmt: skip
        transport_s = per_op_seconds(raw_round, budget_s)
    finally:
        sender.close()
        receiver.close()
        raw_left.close()
        raw_right.close()
    print(f"\n{name}: {len(data)} bytes per datagram")
    print(f"  {'op':<10} {'lithos':>12} {'baseline':>12} {'ratio':>7}")
    for op, ours, base in rows:
        print(f"  {op:<10} {ours * 1e6:>10.1f}us {base * 1e6:>10.1f}us {ours / base:>6.1f}x")
    print(f"  (the socket alone, send + recv_into of the same bytes: {transport_s * 1e6:.1f}us)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds-per-op", type=float, default=1.0)
    args = parser.parse_args(argv)
    print("baseline: msgpack.packb/unpackb of the same structure; raw send/recv_into")
    print("round trip: Channel.send + Channel.recv (encode, send, recv, decode, validate)")
    print("            against packb + send + recv_into + unpackb of the same structure")
    start = time.monotonic()
    bench(
        "StartInstance", StartInstance("web/django.3", "sha256:" + "ab" * 32), args.seconds_per_op
    )
    snapshot = Snapshot(tuple(sample_child(i) for i in range(1000)), ())
    bench("Snapshot of 1000 children", snapshot, args.seconds_per_op)
    print(f"\ntotal {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
