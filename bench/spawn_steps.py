"""python3 -m bench.spawn_steps: where the time of one forked knot's start goes.

Usage (as root): python3 -m bench.spawn_steps [--samples 30]
Starts the `lithos` contender's container (knot.spawn.spawn_knot, forked knot,
native pid 1) `samples` times, one at a time, with knot.spawn's and knot.main's
steps wrapped to take time.perf_counter_ns() (CLOCK_MONOTONIC, the same in every
process) after each; the forked child writes its stamps to its stderr just before
it execs the native pid 1. Prints the median of each phase, from the start
request to the payload's first instruction, and the child's minor page faults
(mostly copy-on-write of the caller's pages) from fork to exec. The wrapping itself adds about a
microsecond per step. A measuring tool for BENCHMARKS.md, not a contender.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.contenders import LithosKnot
from bench.env import BenchEnv

TAG = b"spawn-steps:"


def _instrument(stamps: list[tuple[str, int]]) -> None:
    """Wraps the knot's steps (module attributes, so the forked child runs the wrappers)."""
    import knot.main as km
    import knot.spawn as ks

    faults: list[int] = []  # the child's minor faults (copy-on-write) at its start

    def stamped(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            stamps.append((label, time.perf_counter_ns()))
            return result
        return wrapper

    forked_child = ks._forked_child

    def child(*args: Any) -> None:
        stamps.clear()  # the parent's stamps came with the fork
        stamps.append(("fork (child runs)", time.perf_counter_ns()))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        forked_child(*args)

    ks._forked_child = child
    ks._show_as_knot = stamped("signals, name, cmdline", ks._show_as_knot)
    ks._wait_go = stamped("unshare mnt/uts/ipc", ks._wait_go)
    ks._place_fds = stamped("fds placed (close_range)", ks._place_fds)
    plain_step = km.step

    def step(spec: Any, label: str, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        result = plain_step(spec, label, key, fn, *args)
        stamps.append((label, time.perf_counter_ns()))
        return result

    km.step = step
    exec_init = km.exec_native_init

    def exec_native_init(*args: Any) -> str:
        stamps.append(("environ, secrets", time.perf_counter_ns()))
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults[-1]
        line = TAG + b" ".join(f"{label.replace(' ', '_')}={ns}".encode()
                               for label, ns in stamps) + f" minflt={minflt}\n".encode()
        os.write(2, line)
        return exec_init(*args)

    km.exec_native_init = exec_native_init


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.spawn_steps")
    p.add_argument("--samples", type=int, default=30)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.spawn_steps: run as root", file=sys.stderr)
        return 1
    os.setpriority(os.PRIO_PROCESS, 0, -20)
    env = BenchEnv()
    try:
        c = LithosKnot(env)
        why = c.missing()
        if why:
            print(f"bench.spawn_steps: {why}", file=sys.stderr)
            return 1
        c.prepare()
        stamps: list[tuple[str, int]] = []
        _instrument(stamps)
        phases: dict[str, list[float]] = {}
        faults: list[int] = []
        order: list[str] = []
        for _ in range(args.samples + 2):
            size = env.errlog_path.stat().st_size
            t0 = time.perf_counter_ns()
            c.start_one(hold=False)
            t_back = time.perf_counter_ns()
            t_ready = env.wait_ready(1, 20.0)
            env.reap_all(20.0)
            with open(env.errlog_path, "rb") as f:
                f.seek(size)
                line = next(ln for ln in f.read().splitlines() if ln.startswith(TAG))
            marks = [("start request", t0)]
            for item in line[len(TAG):].split():
                label, _, ns = item.decode().partition("=")
                if label == "minflt":
                    faults.append(int(ns))
                    continue
                marks.append((label.replace("_", " "), int(ns)))
            marks.append(("native pid 1 exec'd .. payload's first instruction", t_ready))
            for (_, a), (label, b) in zip(marks, marks[1:], strict=False):
                if label not in phases:
                    order.append(label)
                phases.setdefault(label, []).append((b - a) / 1e6)
            phases.setdefault("(spawn_knot returned in the caller)", []).append(
                (t_back - t0) / 1e6)
            phases.setdefault("total", []).append((t_ready - t0) / 1e6)
        print(f"| phase (ends when...) | median ms ({args.samples} samples) |")
        print("|---|---:|")
        for label in [*order, "(spawn_knot returned in the caller)", "total"]:
            values = phases[label][2:]  # two warm-up runs
            print(f"| {label} | {statistics.median(values):.3f} |")
        print(f"\nminor page faults in the child, fork to exec (median): "
              f"{statistics.median(faults[2:]):.0f}")
    finally:
        env.kill_all()
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
