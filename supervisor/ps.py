"""lithos_ps: the tree of sandboxes, processes and instances, with their resources (2.6).

Owns the CLI and the reading of /proc. The instances and their knot pids come
from the broker (GetStatus on the control socket, allowed to any user), so
lithos_cmd knots never appear and a down instance does; the processes under
each knot come from /proc (`task/*/children`), memory is VmRSS + VmSwap, CPU
is utime + stime + cutime + cstime in clock ticks, and the knot's cgroup
memory is read when the kernel has it. Formatting is supervisor.psview's.
Exit codes: 0 (also when no lithos_tree runs: a warning, nothing listed),
1 on an I/O or protocol error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from protocol import messages as m
from protocol.config import ConfigError, load_master
from protocol.records import LastExit
from supervisor import control
from supervisor.psview import (
    CLEAR_SCREEN,
    Group,
    InstanceView,
    Proc,
    Totals,
    TreeView,
    monitor_table,
    render_trees,
    to_json,
)
from supervisor.statewatch import StateWatch

VERSION = "lithos_ps (lithos 0.1.0, Lithos v0.18.4 compatible)"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MONITOR_PERIOD_S = 1.0  # --monitor: a screen each second (CPU %), earlier on a change
MONITOR_MIN_S = 0.25  # ... but never more than four screens a second
EXAMPLES = """examples:
  lithos_ps                      the tree, coloured when stdout is a terminal
  lithos_ps --no-color | less    plain text
  lithos_ps --json | jq '.trees[].children[] | select(.ok | not) | .name'
  lithos_ps --monitor            a table refreshed every second (Ctrl-C stops)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lithos_ps", description="Displays the tree of lithos processes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-C", "--config", default="/etc/lithos/master.yaml", type=Path,
                   help="master config, to find the runtime-dir (default %(default)s)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--json", action="store_true",
                        help="print one JSON document (schema in docs/cli.md)")
    action.add_argument("--monitor", action="store_true",
                        help="print a table of instances once a second until Ctrl-C")
    color = p.add_mutually_exclusive_group()
    color.add_argument("--force-color", dest="color", action="store_const", const=True,
                       help="colour even when stdout is not a terminal")
    color.add_argument("--no-color", dest="color", action="store_const", const=False,
                       help="never colour")
    p.add_argument("--version", action="version", version=VERSION)
    return p


# ---- /proc ---------------------------------------------------------------------------


def boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def read_proc(pid: int, btime: float) -> Proc | None:
    """One process from /proc, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    values: dict[str, str] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        values[key] = value.strip()
    f = stat[stat.rindex(")") + 2:].split()  # fields 3.. (the name may hold spaces)
    return Proc(
        pid=pid,
        ppid=int(values.get("PPid", "0")),
        start_time=btime + int(f[19]) / CLK_TCK,
        threads=int(values.get("Threads", "1")),
        mem_rss=_kb(values.get("VmRSS")),
        mem_swap=_kb(values.get("VmSwap")),
        user_time=int(f[11]), system_time=int(f[12]),
        child_user_time=int(f[13]), child_system_time=int(f[14]),
    )


def _kb(value: str | None) -> int:
    if not value:
        return 0  # kernel threads and zombies have no Vm* lines
    number, _, unit = value.partition(" ")
    return int(number) * (1024 * 1024 if unit == "MB" else 1024)


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return out
    for task in tasks:
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(out)


def group(head_pid: int, btime: float) -> Group | None:
    """A process and its whole subtree, with totals."""
    head = read_proc(head_pid, btime)
    if head is None:
        return None
    totals = Totals()
    stack = [head]
    while stack:
        proc = stack.pop()
        totals.add_proc(proc)
        stack.extend(p for c in children(proc.pid) if (p := read_proc(c, btime)) is not None)
    return Group(head, totals)


def cgroup_memory(pid: int) -> int | None:
    """The memory charged to the knot's cgroup (v2 memory.current, v1 usage_in_bytes)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.current"
        elif "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / \
                "memory.usage_in_bytes"
        else:
            continue
        try:
            return int(candidate.read_text())
        except (OSError, ValueError):
            continue
    return None


# ---- the scan --------------------------------------------------------------------------


def describe_exit(e: LastExit) -> str:
    if e.signal is not None:
        try:
            name = signal.Signals(e.signal).name
        except ValueError:
            name = f"signal {e.signal}"
        return name + (" (core dumped)" if e.core_dumped else "")
    return f"exit {e.exit_code}"


def exit_json(e: LastExit) -> dict[str, object]:
    return {"exit_code": e.exit_code, "signal": e.signal, "core_dumped": e.core_dumped,
            "time": e.exited_at_wall}


def scan(status: m.StatusTree, config: str) -> TreeView:
    btime = boot_time()
    views = []
    for sb in status.sandboxes:
        for p in sb.processes:
            for i in p.instances:
                index = int(i.instance.rsplit(".", 1)[1])
                groups: tuple[Group, ...] = ()
                if i.pid is not None:
                    groups = tuple(g for c in children(i.pid) if (g := group(c, btime)))
                views.append(InstanceView(
                    sb.name, p.name, index, None if i.pid is None else int(i.pid), groups,
                    i.restarts,
                    None if i.last_exit is None else describe_exit(i.last_exit),
                    None if i.last_exit is None else exit_json(i.last_exit),
                    None if i.pid is None else cgroup_memory(i.pid)))
    errors = {sb.name: sb.config_error for sb in status.sandboxes if sb.config_error}
    return TreeView(int(status.broker_pid), config, tuple(views), errors)


def tree_config(pid: int, fallback: str) -> str:
    """The master config lithos_tree was started with (its -C), as the original shows."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return fallback
    for n, arg in enumerate(args):
        if arg in (b"-C", b"--config") and n + 1 < len(args):
            return os.fsdecode(args[n + 1])
        if arg.startswith(b"--config="):
            return os.fsdecode(arg[len(b"--config="):])
    return fallback


def trees(runtime_dir: Path, config: str) -> list[TreeView]:
    try:
        status = control.status(runtime_dir)
        return [scan(status, tree_config(int(status.broker_pid), config))]
    except control.NoDaemon as e:
        print(f"lithos_ps: warning: {e}", file=sys.stderr)
        return []


def monitor(runtime_dir: Path, config: str) -> Iterator[str]:
    """A table of instances with CPU since the last screen: a screen each second, and
    one as soon as the tree changes (an instance starts or dies: supervisor.statewatch),
    at most MONITOR_MIN_S apart."""
    before: dict[str, int] = {}
    then = time.monotonic()
    with StateWatch(runtime_dir) as watch:
        while True:
            if watch.wait(MONITOR_PERIOD_S) and time.monotonic() - then < MONITOR_MIN_S:
                # a display's rate limit, not a wait for an event: a tree restarting
                # in a loop must not redraw the screen hundreds of times a second
                time.sleep(max(0.0, then + MONITOR_MIN_S - time.monotonic()))
            now = time.monotonic()
            yield CLEAR_SCREEN + monitor_table(_rows(runtime_dir, config, before, now - then))
            then = now


def _rows(runtime_dir: Path, config: str, before: dict[str, int], elapsed_s: float
          ) -> list[tuple[int, str, float, int, int, int]]:
    """The --monitor rows; `before` (instance -> CPU ticks) is updated in place."""
    rows = []
    current: dict[str, int] = {}
    for tree in trees(runtime_dir, config):
        for inst in sorted(tree.instances, key=lambda i: i.name):
            t = inst.totals
            current[inst.name] = t.cpu_time
            old = before.get(inst.name)
            ticks = 0 if old is None else max(0, t.cpu_time - old)
            pid = inst.groups[0].head.pid if len(inst.groups) == 1 else 0
            rows.append((pid, inst.name, ticks / (max(elapsed_s, 1e-3) * CLK_TCK) * 100,
                         t.threads, t.processes, t.memory))
    before.clear()
    before.update(current)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run lithos_ps; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        master = load_master(args.config)
    except ConfigError as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        return 1
    color = sys.stdout.isatty() if args.color is None else args.color
    config = str(args.config)
    try:
        if args.monitor:
            try:
                for screen in monitor(master.runtime_dir, config):
                    sys.stdout.write(screen)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                return 0
        found = trees(master.runtime_dir, config)
        if args.json:
            sys.stdout.write(to_json(found))
        else:
            sys.stdout.write(render_trees(found, color, time.time()))
        sys.stdout.flush()
    except (OSError, control.ControlError) as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
