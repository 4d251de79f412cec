"""The 1000-container measures (issue #10 items 2, 4, 5): from cold against the C
floor, crun and supervisord, then, on the same running lithos_tree, idle CPU,
supervisor recovery and broker re-exec against the issue's targets.

Owns the order and the tables; the measures themselves are in bench/measure.py
(many) and bench/treeops.py. Rules: the machine's limits are checked before
anything starts; every contender is cleaned up before the next one starts (one
set of N containers at a time), the tree last, after its measures.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from bench import measure, treeops
from bench.contenders import Contender
from bench.env import BenchEnv
from bench.measure import FAILURES, Result

BIG = ("tree1000", "idle", "recovery", "reexec")
PEERS = ("C floor", "crun", "supervisord")
TARGET_ALL_S = 3.0
TARGET_IDLE_PCT = 0.0
TARGET_RECOVERY_MS = 300.0
TARGET_REEXEC_MS = 500.0
TARGET_FIXED_PSS_KB = 25 * 1024


@dataclass
class Options:
    n: int
    idle_s: float
    samples: int
    spacing_s: float


def _spacing() -> float:
    try:
        from broker.supervision import SUPERVISOR_STABLE_S
    except ImportError:
        return 10.5
    return SUPERVISOR_STABLE_S + 0.5


def options(n: int, idle_s: float, samples: int) -> Options:
    return Options(n, idle_s, samples, _spacing())


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.1f}" if value is not None and base else "-"


def cold_table(n: int, rows: list[tuple[str, Result]]) -> None:
    per = {name: r.values[0] / n for name, r in rows if r.values}
    print(f"\n### {n} long-running containers from cold: first start request -> all ready "
          f"(target for lithos tree: <= {TARGET_ALL_S:g} s)\n")
    print("| contender | N | all ready ms | ms per container | x C floor | x crun | "
          "x supervisord |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        if not r.values:
            print(f"| {name} | {n} | failed: {r.error} | - | - | - | - |")
            continue
        print(f"| {name} | {n} | {r.values[0]:.0f} | {per[name]:.2f} | "
              f"{ratio(per[name], per.get('C floor'))} | {ratio(per[name], per.get('crun'))} | "
              f"{ratio(per[name], per.get('supervisord'))} |")
    sys.stdout.flush()


def _target_row(what: str, r: Result, target: str, met: bool | None) -> None:
    if r.error:
        print(f"| {what} | failed: {r.error} | - | {target} | - |")
        return
    verdict = "-" if met is None else ("met" if met else "**missed**")
    print(f"| {what} | {_ms(r.median)} | {_ms(r.p90)} | {target} | "
          f"{verdict} |")


def run(env: BenchEnv, contenders: list[Contender], only: list[str], opts: Options) -> None:
    treeops.check_limits(opts.n)
    print(f"\n- limits: kernel.pid_max, threads-max, RLIMIT_NOFILE and MemAvailable are "
          f"enough for {opts.n} containers")
    rows: list[tuple[str, Result]] = []
    if "tree1000" in only:
        for c in contenders:
            if c.name in PEERS:
                result, _ = measure.many(env, c, opts.n, with_memory=False)
                rows.append((c.name, result))
                print(f"  {c.name}: {opts.n} started", file=sys.stderr, flush=True)
    tree = next((c for c in contenders if c.name == "lithos tree"), None)
    if tree is None:
        if rows:
            cold_table(opts.n, rows)
        print("\n- lithos tree not selected: no idle, recovery or re-exec measure")
        return
    _tree(env, tree, only, opts, rows)


def _tree(env: BenchEnv, tree: Contender, only: list[str], opts: Options,
          rows: list[tuple[str, Result]]) -> None:
    from bench.tree import LithosTree

    assert isinstance(tree, LithosTree)
    notify = treeops.Notify(env.tmp / "notify.sock")
    tree.extra_env["NOTIFY_SOCKET"] = str(notify.path)
    lines: list[str] = []
    targets: list[tuple[str, Result, str, bool | None]] = []
    try:
        cold = Result()
        try:
            t0 = time.perf_counter_ns()
            tree.start_many(opts.n)
            t1 = env.wait_ready(opts.n, measure.TIMEOUT_S + opts.n * 0.2, tree.ready_fd)
            notify.wait_ready(measure.TIMEOUT_S)  # the supervisor's first reconciliation
            cold.values.append((t1 - t0) / measure.NS_PER_MS)
        except FAILURES as e:
            cold.error = str(e)[:300]
        rows.append(("lithos tree", cold))
        print(f"  lithos tree: {opts.n} started", file=sys.stderr, flush=True)
        if "tree1000" in only:
            cold_table(opts.n, rows)
        if cold.error:
            return
        tree.settle()
        sup = treeops.supervisor_pid(tree.broker)
        ticks = {name: treeops.cpu(pid)[0] for name, pid in
                 (("broker", tree.broker), ("supervisor", sup))}
        lines.append("lithos tree: CPU from cold to all ready (the knots' own excluded): "
                     + ", ".join(f"{name} {t * 1000 / treeops.CLK_TCK:.0f} ms "
                                 f"({t * 1000 / treeops.CLK_TCK / opts.n:.2f} ms per container)"
                                 for name, t in ticks.items()))
        pss, uss = tree.control_kb()
        lines.append(f"lithos tree: broker + supervisor {pss} kB PSS, {uss} kB USS with "
                     f"{opts.n} containers")
        if "idle" in only:
            idle = treeops.idle_cpu(tree.broker, opts.idle_s)
            for name, (ticks, run_ns, slices) in idle.per_process.items():
                pct = idle.percent(name)
                lines.append(f"idle {idle.seconds:.0f} s with {opts.n} containers: {name} "
                              f"{ticks} ticks ({pct:.2f} % of a core; target "
                              f"{TARGET_IDLE_PCT:.2f} %: {'met' if ticks == 0 else 'missed'}), "
                              f"{run_ns / 1e6:.2f} ms on the CPU, scheduled {slices} times")
        if "recovery" in only or "reexec" in only:
            # broker.main is only the front now: the daemon's code is broker.startup
            for module in ("supervisor.main", "broker.startup"):
                floor = Result([treeops.interpreter_ms(f"import {module}")])
                targets.append((f"floor: python3 -c 'import {module}' (1 x 5 runs, median)",
                                floor, "-", None))
        if "recovery" in only:
            r = _guard(lambda: treeops.recovery(tree.broker, notify, opts.samples,
                                                opts.spacing_s, measure.TIMEOUT_S))
            targets.append((f"supervisor kill -9 -> reconciled {opts.n} children", r,
                            f"<= {TARGET_RECOVERY_MS:.0f} ms",
                            None if r.median is None else r.median <= TARGET_RECOVERY_MS))
        if "reexec" in only:
            pair = _guard_pair(lambda: treeops.reexec(tree.broker, tree.runtime_dir, notify,
                                                      opts.samples, opts.n, measure.TIMEOUT_S))
            serving, ready = pair
            targets.append(("broker SIGQUIT -> control request answered", serving,
                            f"<= {TARGET_REEXEC_MS:.0f} ms",
                            None if serving.median is None
                            else serving.median <= TARGET_REEXEC_MS))
            targets.append((f"broker SIGQUIT -> new supervisor reconciled {opts.n}", ready,
                            "-", None))
    finally:
        tree.cleanup()
        notify.close()
        env.drain()
    for line in lines:
        print(f"\n{line}")
    if targets:
        print(f"\n### lithos tree with {opts.n} containers running ({opts.samples} samples)\n")
        print("| measure | median ms | p90 ms | target | |")
        print("|---|---:|---:|---|---|")
        for what, r, target, met in targets:
            _target_row(what, r, target, met)
    sys.stdout.flush()


def _guard(fn: object) -> Result:
    try:
        return fn()  # type: ignore[operator,no-any-return]
    except FAILURES as e:
        return Result(error=str(e)[:300])


def _guard_pair(fn: object) -> tuple[Result, Result]:
    try:
        return fn()  # type: ignore[operator,no-any-return]
    except FAILURES as e:
        return Result(error=str(e)[:300]), Result(error=str(e)[:300])
