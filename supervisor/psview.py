"""lithos_ps's pure part: the model of a scan and its three renderings (inventory 2.6).

Owns: the tree text (the original's layout, connectors and colours, byte for
byte), the uptime and memory formats, the `--monitor` table, and the `--json`
document (schema in docs/cli.md). Rules: pure; the clock (`now`, wall seconds)
and the scan come in as values, so every format is a unit test. Totals never
count the knot or the tree itself, only the processes under each knot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import field, fields

from protocol.structs import dataclass

RED, BLUE, GREEN = "31", "34", "32"
CLEAR_SCREEN = "\x1b[2J\x1b[;H"


@dataclass(frozen=True, slots=True)
class Proc:
    """One /proc entry; times in clock ticks, memory in bytes."""

    pid: int
    ppid: int
    start_time: float  # unix seconds (btime + start ticks / CLK_TCK)
    threads: int = 1
    mem_rss: int = 0
    mem_swap: int = 0
    user_time: int = 0
    system_time: int = 0
    child_user_time: int = 0
    child_system_time: int = 0


@dataclass(slots=True)
class Totals:
    """Sums over a group of processes, for lithos_ps's totals line."""

    processes: int = 0
    threads: int = 0
    mem_rss: int = 0
    mem_swap: int = 0
    user_time: int = 0
    system_time: int = 0
    child_user_time: int = 0
    child_system_time: int = 0

    @property
    def memory(self) -> int:
        return self.mem_rss + self.mem_swap

    @property
    def cpu_time(self) -> int:
        return self.user_time + self.system_time + self.child_user_time + \
            self.child_system_time

    def add_proc(self, p: Proc) -> None:
        self.processes += 1
        self.threads += p.threads
        self.mem_rss += p.mem_rss
        self.mem_swap += p.mem_swap
        self.user_time += p.user_time
        self.system_time += p.system_time
        self.child_user_time += p.child_user_time
        self.child_system_time += p.child_system_time

    def add(self, o: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))


@dataclass(frozen=True, slots=True)
class Group:
    """A process directly under a knot, with the totals of its whole subtree."""

    head: Proc
    totals: Totals


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One instance: the broker's record plus what /proc says is under its knot."""

    sandbox: str
    process: str
    index: int
    knot_pid: int | None  # None: not running (the broker waits to restart it)
    groups: tuple[Group, ...] = ()
    restarts: int = 0
    last_exit: str | None = None  # "exit 1", "SIGKILL", "SIGSEGV (core dumped)"
    last_exit_json: dict[str, object] | None = None
    cgroup_memory: int | None = None

    @property
    def name(self) -> str:
        return f"{self.sandbox}/{self.process}.{self.index}"

    @property
    def totals(self) -> Totals:
        t = Totals()
        for g in self.groups:
            t.add(g.totals)
        return t


@dataclass(frozen=True, slots=True)
class TreeView:
    """One tree for lithos_ps: its pid, master config, and instances."""

    pid: int
    config: str
    instances: tuple[InstanceView, ...]
    config_errors: dict[str, str] = field(default_factory=dict)  # sandbox -> why


@dataclass(slots=True)
class Node:
    """One line of lithos_ps's tree and the lines under it."""

    head: str
    children: list[Node] = field(default_factory=list)


class Line:
    """Tokens joined by one space; a coloured token is wrapped only when `color`."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.parts: list[str] = []

    def norm(self, text: object) -> Line:
        self.parts.append(str(text))
        return self

    def paint(self, code: str, text: object) -> Line:
        if self.color:
            self.parts.append(f"\x1b[{code}m\x1b[1m{text}\x1b[0m\x1b[22m")
        else:
            self.parts.append(str(text))
        return self

    def __str__(self) -> str:
        return " ".join(self.parts)


def format_uptime(seconds: float) -> tuple[str, bool]:
    """The uptime text, and whether it is young (< 30 s: red)."""
    s = max(0, int(seconds))
    if s < 60:
        text = f"{s}s"
    elif s < 3600:
        text = f"{s // 60}m{s % 60}s"
    elif s < 86400:
        text = f"{s // 3600}h{s // 60 % 60}m{s % 60}s"
    elif s < 3 * 86400:
        text = f"{s // 86400}d{s // 3600 % 24}h{s // 60 % 60}m"
    else:
        text = f"{s // 86400}days"
    return text, s < 30


def format_memory(size: int) -> str:
    if size < 1 << 10:
        return f"{size}B"
    if size < 1 << 20:
        return f"{size / 1024:.1f}kiB"
    if size < 1 << 30:
        return f"{size / 1048576:.1f}MiB"
    return f"{size / 1073741824:.1f}GiB"


def _counts(line: Line, t: Totals) -> Line:
    return line.paint(BLUE, f"[{t.processes}/{t.threads}]").paint(BLUE, format_memory(t.memory))


def instance_node(inst: InstanceView, color: bool, now: float) -> Node:
    line = Line(color)
    if inst.knot_pid is None:
        line.paint(RED, "(-)").norm(inst.name).paint(RED, "<down>")
    elif len(inst.groups) == 1:
        head = inst.groups[0].head
        text, young = format_uptime(now - head.start_time)
        line.paint(GREEN, head.pid).norm(inst.name).paint(RED if young else BLUE, text)
        _counts(line, inst.totals)
    else:
        line.paint(RED, f"({inst.knot_pid})").norm(inst.name)
        if not inst.groups:
            line.paint(RED, "<failing>")
        else:
            _counts(line.paint(RED, f"<{len(inst.groups)}>"), inst.totals)
    if inst.restarts or inst.knot_pid is None:
        # beyond the original: why an instance is down or was restarted
        extra = f"restarts:{inst.restarts}"
        if inst.last_exit is not None:
            extra += f" last:{inst.last_exit}"
        line.paint(RED, f"({extra})")
    return Node(str(line))


def _sum(instances: Sequence[InstanceView]) -> Totals:
    t = Totals()
    for i in instances:
        t.add(i.totals)
    return t


def tree_node(tree: TreeView, color: bool, now: float) -> Node:
    """The original's tree: tree -> sandboxes -> processes -> instances, sorted."""
    root = Line(color).paint(BLUE, tree.pid).norm("tree").paint(BLUE, tree.config)
    node = Node(str(_counts(root, _sum(tree.instances))))
    for sandbox in sorted({i.sandbox for i in tree.instances} | set(tree.config_errors)):
        in_sb = [i for i in tree.instances if i.sandbox == sandbox]
        sb_line = _counts(Line(color).norm(sandbox), _sum(in_sb))
        if sandbox in tree.config_errors:  # beyond the original: its last reload failed
            sb_line.paint(RED, "<config error>")
        sb_node = Node(str(sb_line))
        node.children.append(sb_node)
        for process in sorted({i.process for i in in_sb}):
            insts = sorted((i for i in in_sb if i.process == process), key=lambda i: i.index)
            if len(insts) == 1 and insts[0].index == 0:
                sb_node.children.append(instance_node(insts[0], color, now))
                continue
            p_node = Node(str(_counts(Line(color).norm(process), _sum(insts))))
            p_node.children = [instance_node(i, color, now) for i in insts]
            sb_node.children.append(p_node)
    return node


def render_tree(node: Node) -> str:
    out = [node.head + "\n"]
    _render_children(node, "  ", out)
    return "".join(out)


def _render_children(node: Node, indent: str, out: list[str]) -> None:
    for n, child in enumerate(node.children):
        last = n == len(node.children) - 1
        out.append(f"{indent}{'└─' if last else '├─'}{child.head}\n")
        _render_children(child, indent + ("    " if last else "│   "), out)


def render_trees(trees: Sequence[TreeView], color: bool, now: float) -> str:
    return "".join(render_tree(tree_node(t, color, now)) for t in trees)


def to_json(trees: Sequence[TreeView]) -> str:
    """The original's `--json` document plus our keys (docs/cli.md); keys sorted."""
    doc = {"trees": [{
        "pid": t.pid,
        "config": t.config,
        "children": [_instance_json(i) for i in t.instances],
        "config_errors": dict(sorted(t.config_errors.items())),
    } for t in trees]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _instance_json(i: InstanceView) -> dict[str, object]:
    return {
        "name": i.name,
        "pid": i.knot_pid,
        "ok": len(i.groups) == 1,
        "restarts": i.restarts,
        "last_exit": i.last_exit_json,
        "cgroup_memory": i.cgroup_memory,
        "processes": [{
            "pid": g.head.pid,
            "processes": g.totals.processes,
            "threads": g.totals.threads,
            "mem_rss": g.totals.mem_rss,
            "mem_swap": g.totals.mem_swap,
            "start_time": int(g.head.start_time),
            "user_time": g.totals.user_time,
            "system_time": g.totals.system_time,
            "child_user_time": g.totals.child_user_time,
            "child_system_time": g.totals.child_system_time,
        } for g in i.groups],
    }


def byte_unit(maximum: int) -> tuple[float, str]:
    if 1 <= maximum <= 10240:
        return 1.0, "B"
    if 10240 < maximum <= 10485760:
        return 1024.0, "kiB"
    if 10485760 < maximum <= 10737418240:
        return 1048576.0, "MiB"
    return 1073741824.0, "GiB"  # a maximum of 0 also gives GiB, as in the original


def monitor_table(rows: Sequence[tuple[int, str, float, int, int, int]]) -> str:
    """`PID NAME CPU THR PRC MEM` rows -> the table; every cell ends with a space."""
    pids = [str(r[0]) for r in rows]
    names = [r[1] for r in rows]
    threads = [str(r[3]) for r in rows]
    procs = [str(r[4]) for r in rows]
    mems = [r[5] for r in rows]

    def right(title: str, values: list[str]) -> list[str]:
        w = max(3, *(len(v) for v in values)) if values else 3
        return [title.rjust(w)] + [v.rjust(w) for v in values]

    w_name = max(3, *(len(v) for v in names)) if names else 3
    k, unit = byte_unit(max(mems, default=1))
    columns = [
        right("PID", pids),
        ["NAME".ljust(w_name)] + [v.ljust(w_name) for v in names],
        [f"{'CPU':>5}"] + [f"{r[2]:>5.1f}" for r in rows],
        right("THR", threads),
        right("PRC", procs),
        ["MEM".rjust(7 + len(unit))] + [f"{v / k:7.1f}{unit}" for v in mems],
    ]
    return "".join("".join(col[n] + " " for col in columns) + "\n"
                   for n in range(len(rows) + 1))
