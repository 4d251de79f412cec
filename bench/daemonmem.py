"""python3 -m bench.daemonmem [N ...]: broker and supervisor memory, process by process.

Usage (as root): python3 -m bench.daemonmem [--maps] 1 200
For each N: starts the bench's lithos tree (bench/tree.py) with N containers,
waits until every service is ready and the supervisor reconciled (its sd_notify
READY=1, bench/treeops.py), then prints PSS, USS and anonymous kB of the broker
and of the supervisor from /proc/PID/smaps_rollup (with --maps, their largest
mappings from /proc/PID/smaps too), and the load average. Issue #10's target is
on the sum: broker + supervisor <= 25 MB PSS fixed, <= 20 kB more per container.
Rules: as bench/tree.py (the tree is stopped with SIGTERM, leftovers SIGKILLed by
pid, its cgroups removed), one tree and one bench temp dir at a time.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

from bench import treeops
from bench.env import BenchEnv, BenchError, rollup_kb
from bench.tree import LithosTree

READY_TIMEOUT_S = 120.0


def mappings(pid: int) -> dict[str, list[int]]:
    """Mapping name (basename of a file, [heap], [anon]...) -> [PSS, USS] kB."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            path = fields[5] if len(fields) > 5 else "[anon]"
            name = os.path.basename(path) if path.startswith("/") else path
        elif fields[0] == "Pss:":
            out[name][0] += int(fields[1])
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
            out[name][1] += int(fields[1])
    return out


def measure(env: BenchEnv, n: int, maps: bool, python: str) -> list[str]:
    tree = LithosTree(env)
    tree.python = python
    notify = treeops.Notify(env.tmp / f"notify-{n}.sock")
    tree.extra_env["NOTIFY_SOCKET"] = str(notify.path)
    lines = []
    try:
        tree.prepare()
        tree.start_many(n)
        env.wait_ready(n, READY_TIMEOUT_S + n * 0.2, tree.ready_fd)
        notify.wait_ready(READY_TIMEOUT_S)
        tree.settle()
        total = [0, 0, 0]
        for name, pid in (("broker", tree.broker),
                          ("supervisor", treeops.supervisor_pid(tree.broker))):
            r = rollup_kb(pid)
            row = [r["Pss"], r["Private_Clean"] + r["Private_Dirty"], r["Anonymous"]]
            total = [a + b for a, b in zip(total, row, strict=True)]
            lines.append(f"| {n} | {name} | {row[0]} | {row[1]} | {row[2]} |")
            if maps:
                top = sorted(mappings(pid).items(), key=lambda kv: -kv[1][0])[:8]
                lines += [f"|   | {name}: {k} | {p} | {u} | |" for k, (p, u) in top]
        lines.append(f"| {n} | **broker + supervisor** | **{total[0]}** | **{total[1]}** | "
                     f"{total[2]} |")
    finally:
        tree.cleanup()
        notify.close()
        tree.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.daemonmem",
                                description=__doc__.split("\n")[0])
    p.add_argument("counts", nargs="*", type=int, default=[1, 200], help="containers")
    p.add_argument("--maps", action="store_true", help="also the largest mappings")
    p.add_argument("--python", default=sys.executable,
                   help="the tree's interpreter (default: this one). PSS splits a page "
                        "among every process mapping it, this harness too: run the harness "
                        "under another interpreter to count libpython for the daemons alone")
    args = p.parse_args(argv)
    print("| N | process | PSS kB | USS kB | anonymous kB |")
    print("|---:|---|---:|---:|---:|")
    for n in args.counts:
        try:
            env = BenchEnv()  # one per tree: bench/tree.py prepares its dirs once
        except BenchError as e:
            print(str(e), file=sys.stderr)
            return 1
        try:
            for line in measure(env, n, args.maps, args.python):
                print(line, flush=True)
        finally:
            env.close()
    print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
