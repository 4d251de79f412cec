"""python3 -m bench.run: lithos and its peers on the same work, in the same run.

Usage (as root): python3 -m bench.run [--quick] [--only spawn,many,memory,restart]
                 [--only tree1000,idle,recovery,reexec] [--big-n 1000] [--idle-s 60]
                 [--ops-samples 3]
                 [--n 100] [--samples 50] [--install-peers] [--no-nice]
                 [--contenders floor,lithos,lithos-fork,lithos-exec,lithos-python,lithos-S,
                               lithos-zygote,tree,unshare,bwrap,crun,supervisord]
Prints the machine, then one table per measurement with the median, p90 and the
ratio to the C floor measured in the same run. A contender that is missing (no
bwrap, no knot.spawn on this branch) is named and skipped. --install-peers
apt-get installs bubblewrap and crun when missing. Ctrl-C stops the run; the
temp dir and every process the run started are removed either way.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

from bench import big, measure
from bench.contenders import ALL, Contender
from bench.env import BenchEnv, BenchError
from bench.supervisord import Supervisord
from bench.tree import LithosTree

DEFAULT_MEASUREMENTS = ("spawn", "many", "memory", "restart")
MEASUREMENTS = (*DEFAULT_MEASUREMENTS, *big.BIG)
KEYS = {"floor": "C floor", "lithos": "lithos", "lithos-exec": "lithos exec",
        "lithos-python": "lithos python", "lithos-S": "lithos -S",
        "lithos-fork": "lithos fork", "lithos-zygote": "lithos zygote", "tree": "lithos tree",
        "unshare": "unshare", "bwrap": "bwrap", "crun": "crun", "supervisord": "supervisord"}
CRUN_MANY_MAX = 100  # crun is slow to start in bulk; larger N only for the others


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "absent"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def machine_facts() -> list[str]:
    return [f"nproc {os.cpu_count()}, kernel {platform.release()}, "
            f"python {platform.python_version()}, {platform.machine()}",
            f"unshare: {_version(['unshare', '--version'])}; "
            f"bwrap: {_version(['bwrap', '--version'])}; crun: {_version(['crun', '--version'])}",
            f"load average before the run: {_load()}"]


def python_startup_ms(flags: list[str], samples: int = 11) -> float:
    """Median wall time of `python3 FLAGS -c pass`: what every Python knot pays first."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(sys.executable, [sys.executable, *flags, "-c", "pass"], {})
        os.waitpid(pid, 0)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return measure.Result(times).median or 0.0


def install_peers() -> None:
    missing = [pkg for tool, pkg in (("bwrap", "bubblewrap"), ("crun", "crun"))
               if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False,
                       stdout=subprocess.DEVNULL, timeout=300)


Row = tuple[str, measure.Result]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(title: str, unit: str, rows: list[Row]) -> None:
    """One markdown table: median, p90 and the ratio of medians to the C floor's."""
    floor = next((r.median for name, r in rows if name == "C floor"), None)
    print(f"\n### {title}\n")
    print(f"| contender | median {unit} | p90 {unit} | x C floor | note |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        med = r.median
        ratio = f"{med / floor:.1f}" if med is not None and floor else "-"
        note = f"failed: {r.error}" if r.error else r.note
        print(f"| {name} | {_fmt(med)} | {_fmt(r.p90)} | {ratio} | {note} |")
    sys.stdout.flush()


def mem_table(rows: list[tuple[str, int, measure.Memory | None]]) -> None:
    print("\n### Resident memory per container while N run (PSS from smaps_rollup)\n")
    print("| contender | N | runtime processes per container | runtime PSS kB | x C floor | "
          "runtime USS kB | service PSS kB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    floor = next((m.runtime_pss_kb for name, _, m in rows if name == "C floor" and m), None)
    for name, n, m in rows:
        if m is None:
            print(f"| {name} | {n} | - | - | - | - | - |")
            continue
        ratio = f"{m.runtime_pss_kb / floor:.1f}" if floor else "-"
        print(f"| {name} | {n} | {m.runtime_processes:.2f} | {m.runtime_pss_kb:.0f} | {ratio} | "
              f"{m.runtime_uss_kb:.0f} | {m.service_pss_kb:.0f} |")
    for name, n, m in rows:
        if m is not None and m.control_pss_kb:
            print(f"\n{name}: broker + supervisor {m.control_pss_kb} kB PSS, "
                  f"{m.control_uss_kb} kB USS in total with N={n} (included above, shared "
                  "out per container)")
    sys.stdout.flush()


def many_table(n: int, rows: list[tuple[str, int, measure.Result]]) -> None:
    print(f"\n### {n} long-running containers from cold: first start request -> all ready\n")
    print("| contender | N | all ready ms | ms per container | x C floor (per container) |")
    print("|---|---:|---:|---:|---:|")
    per = {name: r.values[0] / cn for name, cn, r in rows if r.values}
    floor = per.get("C floor")
    for name, cn, r in rows:
        if not r.values:
            print(f"| {name} | {cn} | failed: {r.error} | - | - |")
            continue
        ratio = f"{per[name] / floor:.1f}" if floor else "-"
        print(f"| {name} | {cn} | {r.values[0]:.0f} | {per[name]:.2f} | {ratio} |")
    sys.stdout.flush()


def _ordered(contenders: list[Contender], results: dict[str, measure.Result]) -> list[Row]:
    return [(c.name, results[c.name]) for c in contenders if c.name in results]


def _parse_list(value: str, allowed: tuple[str, ...], flag: str,
                default: tuple[str, ...] | None = None) -> list[str]:
    items = [v for v in value.split(",") if v] if value else list(default or allowed)
    bad = [v for v in items if v not in allowed]
    if bad:
        raise BenchError(f"bench: {flag}: {','.join(bad)} is not one of {','.join(allowed)}")
    return items


def run(args: argparse.Namespace) -> int:
    only = _parse_list(args.only, MEASUREMENTS, "--only", DEFAULT_MEASUREMENTS)
    wanted = {KEYS[w] for w in _parse_list(args.contenders, tuple(KEYS), "--contenders")}
    samples = args.samples or (5 if args.quick else 50)
    n = args.n or (20 if args.quick else 100)
    if args.install_peers:
        install_peers()
    if not args.no_nice:
        # Other work on the machine would otherwise add its scheduling noise to
        # every sample; every contender inherits the same priority.
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    print("## Machine\n")
    for line in machine_facts():
        print(f"- {line}")
    print(f"- command: python3 -m bench.run {' '.join(sys.argv[1:])}".rstrip())
    print(f"- nice: {os.getpriority(os.PRIO_PROCESS, 0)} (inherited by every contender)")
    env = BenchEnv()
    print(f"- work dir: {env.tmp} ({'a tmpfs' if env.tmpfs else 'on the host disk'}, "
          "removed at exit)")
    contenders: list[Contender] = []
    try:
        for cls in (*ALL[:6], *_zygote(), LithosTree, *ALL[6:], Supervisord):
            c = cls(env)
            if c.name not in wanted:
                continue
            why = c.missing()
            if why:
                print(f"- skipped: {why}")
                continue
            try:
                c.prepare()
            except (OSError, subprocess.SubprocessError, ImportError) as err:
                print(f"- skipped: {c.name}: preparing it failed: {err}")
                continue
            contenders.append(c)
        if "spawn" in only and any(c.name.startswith("lithos") for c in contenders):
            print(f"- python3 start to exit (`-c pass`): {python_startup_ms([]):.1f} ms; "
                  f"with -S (no site, no .pth files): {python_startup_ms(['-S']):.1f} ms")
        if "spawn" in only:
            spawnable = [c for c in contenders if c.name not in ("lithos tree", "supervisord")]
            results = measure.spawn_latency(env, spawnable, samples)
            table(f"Spawn latency: start request -> first instruction ({samples} samples, "
                  "interleaved)", "ms", _ordered(spawnable, results))
        if "many" in only or "memory" in only:
            _many_and_memory(env, contenders, n, only)
        if "restart" in only:
            restartable = [c for c in contenders if c.can_restart]
            results = measure.restart_latency(env, list(restartable), samples)
            for c in restartable:
                if c.name in results and not results[c.name].error:
                    results[c.name].note = RESTART_NOTES.get(c.name, "")
            table(f"Restart latency: kill -9 of the service -> first instruction of the new "
                  f"one ({samples} samples, interleaved)", "ms", _ordered(restartable, results))
        if any(m in only for m in big.BIG):
            big.run(env, contenders, only, big.options(args.big_n, args.idle_s,
                                                      args.ops_samples))
        print(f"\n- load average after the run: {_load()}")
    finally:
        try:  # processes first: a cgroup or a crun state can go only once they are gone
            env.kill_all()
            for c in contenders:
                c.cleanup()
                c.close()
        finally:
            env.close()
    return 0


def _zygote() -> tuple[type[Contender], ...]:
    try:
        from bench.zygote import LithosZygote
    except ImportError:  # no knot on this branch: LithosKnot.missing() says so
        return ()
    return (LithosZygote,)


RESTART_NOTES = {"C floor": "pid 1 is a C loop: fork, exec, wait, again",
                 "lithos": "native pid 1 restart-process-only, restart-timeout 0",
                 "lithos exec": "native pid 1 restart-process-only, restart-timeout 0",
                 "lithos python": "knot restart-process-only, restart-timeout 0",
                 "lithos -S": "knot restart-process-only, restart-timeout 0",
                 "lithos fork": "native pid 1 restart-process-only, restart-timeout 0",
                 "lithos zygote": "knot restart-process-only, restart-timeout 0",
                 "lithos tree": "whole container: knot exits, broker reaps, supervisor "
                                "restarts (restart-timeout 0)"}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _many_and_memory(env: BenchEnv, contenders: list[Contender], n: int,
                     only: list[str]) -> None:
    many_rows: list[tuple[str, int, measure.Result]] = []
    mem_rows: list[tuple[str, int, measure.Memory | None]] = []
    for c in contenders:
        if c.name == "supervisord":  # a peer for the 1000-container run only
            continue
        cn = min(n, CRUN_MANY_MAX) if c.name == "crun" else n
        result, mem = measure.many(env, c, cn, "memory" in only)
        many_rows.append((c.name, cn, result))
        mem_rows.append((c.name, cn, mem))
        print(f"  {c.name}: {cn} started", file=sys.stderr, flush=True)
    if "many" in only:
        many_table(n, many_rows)
    if "memory" in only:
        mem_table(mem_rows)
        tree = next((c for c in contenders if c.name == "lithos tree"), None)
        at_n = next((m for name, _, m in mem_rows if name == "lithos tree"), None)
        if tree is not None and at_n is not None and n > 1:
            _, at_1 = measure.many(env, tree, 1, with_memory=True)
            if at_1 is not None:
                growth = (at_n.control_uss_kb - at_1.control_uss_kb) / (n - 1)
                print(f"lithos tree: broker + supervisor {at_1.control_uss_kb} kB USS with one "
                      f"container, {at_n.control_uss_kb} kB with {n}: {growth:.1f} kB more "
                      "per container")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 samples, N=20 (under 30 s)")
    p.add_argument("--only", default="", help=f"comma-separated: {','.join(MEASUREMENTS)} "
                   f"(default: {','.join(DEFAULT_MEASUREMENTS)})")
    p.add_argument("--n", type=int, default=0, help="containers for many/memory (default 100)")
    p.add_argument("--samples", type=int, default=0, help="samples per latency (default 50)")
    p.add_argument("--big-n", type=int, default=1000,
                   help="containers for tree1000, idle, recovery, reexec (default 1000)")
    p.add_argument("--idle-s", type=float, default=60.0, help="idle period (default 60 s)")
    p.add_argument("--ops-samples", type=int, default=3,
                   help="samples of recovery and reexec (default 3; recovery ones are "
                        "SUPERVISOR_STABLE_S apart)")
    p.add_argument("--contenders", default="", help=f"comma-separated: {','.join(KEYS)}")
    p.add_argument("--no-nice", action="store_true",
                   help="keep the current nice value (default: run at nice -20)")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install bubblewrap and crun if missing")
    args = p.parse_args(argv)
    # Ctrl-C and SIGTERM both clean up, even when started with SIGINT ignored
    # (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except BenchError as e:
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
