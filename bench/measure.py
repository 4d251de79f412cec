"""The four measurements, each run on all contenders in the same run.

Rules: a timed region starts with time.perf_counter_ns() just before the start
request (or the kill) and ends when the payload's byte is read (select with a
deadline, then read: blocking, no polling). Latency samples are interleaved
round-robin across contenders, so a load change on the machine hits them all
alike. A contender that fails is reported with its error and dropped from that
measurement; the others go on. Everything a measurement starts is killed and
reaped before it returns (try/finally).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable

from bench.contenders import PAYLOAD_COMMS, Contender
from bench.env import BenchEnv, BenchError, comm, descendants, pss_kb, uss_kb

TIMEOUT_S = 30.0
NS_PER_MS = 1_000_000
FAILURES = (BenchError, RuntimeError, OSError, ValueError)


@dataclasses.dataclass
class Result:
    """One contender's values for one measurement (ms or kB), or why it has none."""

    values: list[float] = dataclasses.field(default_factory=list)
    error: str = ""
    note: str = ""

    @property
    def median(self) -> float | None:
        v = sorted(self.values)
        if not v:
            return None
        mid = len(v) // 2
        return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2

    @property
    def p90(self) -> float | None:
        v = sorted(self.values)
        return v[round(0.9 * (len(v) - 1))] if v else None


def _cleanup(env: BenchEnv, contenders: list[Contender]) -> None:
    env.kill_all()
    for c in contenders:
        c.cleanup()
    env.drain()


def _round_robin(env: BenchEnv, contenders: list[Contender], rounds: int,
                 one: Callable[[Contender], float], kill_on_failure: bool) -> dict[str, Result]:
    results = {c.name: Result() for c in contenders}
    live = list(contenders)
    for _ in range(rounds):
        for c in list(live):
            try:
                results[c.name].values.append(one(c))
            except FAILURES as e:
                results[c.name].error = str(e)[:300]
                live.remove(c)
                contenders.remove(c)
                if kill_on_failure:  # nothing else runs between spawn samples
                    _cleanup(env, [c])
    return results


def spawn_latency(env: BenchEnv, contenders: list[Contender], samples: int,
                  warmup: int = 2) -> dict[str, Result]:
    """Start request -> the payload's first instruction, one container at a time."""

    def one(c: Contender) -> float:
        t0 = time.perf_counter_ns()
        c.start_one(hold=False)
        t1 = env.wait_ready(1, TIMEOUT_S)
        env.reap_all(TIMEOUT_S)  # the container is gone before the next start
        return (t1 - t0) / NS_PER_MS

    try:
        live = list(contenders)
        failed = _round_robin(env, live, warmup, one, kill_on_failure=True)
        results = _round_robin(env, live, samples, one, kill_on_failure=True)
        return {**results, **{k: r for k, r in failed.items() if r.error}}
    finally:
        _cleanup(env, contenders)


@dataclasses.dataclass
class Memory:
    """What stays resident per container (kB of PSS), and how many runtime processes."""

    runtime_pss_kb: float
    runtime_uss_kb: float
    runtime_processes: float
    service_pss_kb: float
    control_pss_kb: int = 0  # lithos tree: broker + supervisor, in total
    control_uss_kb: int = 0


def many(env: BenchEnv, c: Contender, n: int, with_memory: bool) -> tuple[Result, Memory | None]:
    """n held containers from cold: ms until all n bytes arrived; memory while all run."""
    mem = None
    try:
        t0 = time.perf_counter_ns()
        c.start_many(n)
        t1 = env.wait_ready(n, TIMEOUT_S + n * 0.2, c.ready_fd)
        if with_memory:
            c.settle()
            mem = memory(n)
            control = getattr(c, "control_kb", None)
            if control is not None:
                mem.control_pss_kb, mem.control_uss_kb = control()
        return Result([(t1 - t0) / NS_PER_MS]), mem
    except FAILURES as e:
        return Result(error=str(e)[:300]), None
    finally:
        _cleanup(env, [c])


def memory(n: int) -> Memory:
    """PSS of every process under the harness, split into runtime and service, per container."""
    runtime = unique = service = count = 0
    for pid in descendants(os.getpid()):
        kb = pss_kb(pid)
        if comm(pid) in PAYLOAD_COMMS:
            service += kb
        elif kb:  # a zombie (a launcher not yet reaped) holds no memory
            runtime += kb
            unique += uss_kb(pid)
            count += 1
    return Memory(runtime / n, unique / n, count / n, service / n)


def restart_latency(env: BenchEnv, contenders: list[Contender], samples: int,
                    warmup: int = 1) -> dict[str, Result]:
    """SIGKILL of the service -> the first instruction of its replacement."""
    restarters: dict[str, int] = {}
    failed: dict[str, Result] = {}
    try:
        for c in contenders:
            try:
                restarters[c.name] = c.start_restarting()
                env.wait_ready(1, TIMEOUT_S, c.ready_fd)
            except FAILURES as e:
                failed[c.name] = Result(error=str(e)[:300])
        live = [c for c in contenders if c.name in restarters]

        def one(c: Contender) -> float:
            services = [p for p in descendants(restarters[c.name]) if comm(p) in PAYLOAD_COMMS]
            if len(services) != 1:
                raise RuntimeError(f"{c.name}: expected one service under pid "
                                   f"{restarters[c.name]}, found {services}")
            t0 = time.perf_counter_ns()
            os.kill(services[0], signal.SIGKILL)
            t1 = env.wait_ready(1, TIMEOUT_S, c.ready_fd)
            return (t1 - t0) / NS_PER_MS

        warm = _round_robin(env, live, warmup, one, kill_on_failure=False)
        results = _round_robin(env, live, samples, one, kill_on_failure=False)
        return {**results, **{k: r for k, r in warm.items() if r.error}, **failed}
    finally:
        _cleanup(env, contenders)


__all__ = ["Memory", "Result", "many", "memory", "restart_latency", "spawn_latency"]
