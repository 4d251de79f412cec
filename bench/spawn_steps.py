"""python3 -m bench.spawn_steps: where the time of one knot's start goes.

Usage (as root): python3 -m bench.spawn_steps [--samples 30] [--mode spawn|fork]
Starts a container through knot.spawn.spawn_knot `samples` times, one at a time,
with its steps wrapped to take time.perf_counter_ns() (CLOCK_MONOTONIC, the same
in every process) after each. Prints the median of each phase, from the start
request to the payload's first instruction. The wrapping itself adds about a
microsecond per step. A measuring tool for BENCHMARKS.md, not a contender.

--mode spawn (the default, contender `lithos`): the caller's steps
(knot.nativespawn: posix_spawn of the native init, knot.plan.build, the
description and the go byte), then init.c's own steps: it is built here with
-DLITHOS_INIT_STAMPS (knot/init.c: a stamp after each step, written to stderr
just before the service's execve; the production binary has none), and each
op's phase is named `op:target`. init's main() is timed from the start request,
its go from the caller's go byte, the rest from init's previous stamp.
--mode fork (contender `lithos fork`, LITHOS_KNOT_SPAWN=fork): the forked child
writes its stamps to its stderr just before it execs the native pid 1; also
prints the child's minor page faults (mostly copy-on-write of the caller's
pages) from fork to exec.
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

from bench.contenders import LithosForked, LithosKnot
from bench.env import BenchEnv

TAG = b"spawn-steps:"
INIT_TAG = b"init-stamps:"


def _stamped(stamps: list[tuple[str, int]], label: str,
             fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        stamps.append((label, time.perf_counter_ns()))
        return result
    return wrapper


def _instrument_spawn(stamps: list[tuple[str, int]]) -> None:
    """Wraps knot.nativespawn's steps, all in the caller."""
    import knot.nativespawn as kn

    kn.os = _OsProxy(stamps)  # type: ignore[assignment]
    kn.plan.build = _stamped(stamps, "plan.build (host side: state dir...)", kn.plan.build)
    kn.initdesc.encode = _stamped(stamps, "description encoded", kn.initdesc.encode)


class _OsProxy:
    """knot.nativespawn's `os`, with posix_spawn and the go byte's write stamped."""

    def __init__(self, stamps: list[tuple[str, int]]) -> None:
        self.stamps = stamps
        self.posix_spawn = _stamped(stamps, "posix_spawn returned (init exec'd)", os.posix_spawn)

    def write(self, fd: int, data: bytes) -> int:
        n = os.write(fd, data)
        if data == b"g":
            self.stamps.append(("description written, go byte sent", time.perf_counter_ns()))
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _instrument(stamps: list[tuple[str, int]]) -> None:
    """Wraps the forked knot's steps (module attributes, so the forked child runs them)."""
    import knot.main as km
    import knot.spawn as ks

    faults: list[int] = []  # the child's minor faults (copy-on-write) at its start

    def stamped(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return _stamped(stamps, label, fn)

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
    km.step = _stamped(stamps, "open native init", km.step)
    km.plan.build = _stamped(stamps, "plan.build (host side: state dir...)", km.plan.build)
    km.plan.execute = _stamped(stamps, "plan.execute (mounts, pivot_root)", km.plan.execute)
    exec_init = km.exec_native_init

    def exec_native_init(*args: Any) -> str:
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults[-1]
        line = TAG + b" ".join(f"{label.replace(' ', '_')}={ns}".encode()
                               for label, ns in stamps) + f" minflt={minflt}\n".encode()
        os.write(2, line)
        return exec_init(*args)

    km.exec_native_init = exec_native_init


def _child_marks(errlog: Any, size: int, faults: list[int]) -> list[tuple[str, int]]:
    """The forked child's stamps from its stderr line (and its page faults)."""
    with open(errlog, "rb") as f:
        f.seek(size)
        line = next(ln for ln in f.read().splitlines() if ln.startswith(TAG))
    marks = []
    for item in line[len(TAG):].split():
        label, _, ns = item.decode().partition("=")
        if label == "minflt":
            faults.append(int(ns))
            continue
        marks.append((label.replace("_", " "), int(ns)))
    return marks


def _init_marks(errlog: Any, size: int) -> list[tuple[str, int]]:
    """init.c's stamps (its -DLITHOS_INIT_STAMPS build) from its stderr line; a label
    seen twice (a bind then its remount) gets #2."""
    with open(errlog, "rb") as f:
        f.seek(size)
        line = next(ln for ln in f.read().splitlines() if ln.startswith(INIT_TAG))
    marks: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for item in line[len(INIT_TAG):].split():
        label, _, ns = item.decode().rpartition("=")
        seen[label] = seen.get(label, 0) + 1
        marks.append((f"{label}#{seen[label]}" if seen[label] > 1 else label, int(ns)))
    return marks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.spawn_steps")
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--mode", choices=("spawn", "fork"), default="spawn")
    args = p.parse_args(argv)
    spawned = args.mode == "spawn"
    if os.geteuid() != 0:
        print("bench.spawn_steps: run as root", file=sys.stderr)
        return 1
    os.setpriority(os.PRIO_PROCESS, 0, -20)
    env = BenchEnv()
    try:
        c = LithosKnot(env) if spawned else LithosForked(env)
        why = c.missing()
        if why:
            print(f"bench.spawn_steps: {why}", file=sys.stderr)
            return 1
        c.prepare()
        stamps: list[tuple[str, int]] = []
        if spawned:
            from knot import initbin

            path, why = initbin.build(env.tmp / "init-stamps",
                                      extra_cflags=("-DLITHOS_INIT_STAMPS",))
            if path is None:
                print(f"bench.spawn_steps: {why}", file=sys.stderr)
                return 1
            c.native_init = path
            _instrument_spawn(stamps)
        else:
            _instrument(stamps)
        phases: dict[str, list[float]] = {}
        faults: list[int] = []
        order: list[str] = []
        for _ in range(args.samples + 2):
            size = env.errlog_path.stat().st_size
            stamps.clear()
            t0 = time.perf_counter_ns()
            c.start_one(hold=False)
            t_back = time.perf_counter_ns()
            t_ready = env.wait_ready(1, 20.0)
            env.reap_all(20.0)
            marks = [("start request", t0)]
            if spawned:
                marks += stamps
                init = _init_marks(env.errlog_path, size)
                caller_go = stamps[-1][1]
                for i, (label, ns) in enumerate(init):
                    since = t0 if label == "main" else caller_go if label == "go" else \
                        init[i - 1][1]
                    label = f"init: {label}"
                    if label not in phases:
                        order.append(label)
                    phases.setdefault(label, []).append((ns - since) / 1e6)
                marks.append(("init.c: setup ops, fork, service exec .. payload's first "
                              "instruction", t_ready))
                phases.setdefault("init: payload's first instruction (since execve)",
                                  []).append((t_ready - init[-1][1]) / 1e6)
            else:
                marks += _child_marks(env.errlog_path, size, faults)
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
        tail = ["init: payload's first instruction (since execve)"] if spawned else []
        for label in [*order, *tail, "(spawn_knot returned in the caller)", "total"]:
            values = phases[label][2:]  # two warm-up runs
            print(f"| {label} | {statistics.median(values):.3f} |")
        if faults:
            print(f"\nminor page faults in the child, fork to exec (median): "
                  f"{statistics.median(faults[2:]):.0f}")
    finally:
        env.kill_all()
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
