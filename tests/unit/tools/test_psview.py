"""lithos_ps formatting (inventory 2.6, E-34): layout, colours, uptime, memory, table, JSON."""

from __future__ import annotations

import json

from supervisor.psview import (
    Group,
    InstanceView,
    Node,
    Proc,
    Totals,
    TreeView,
    format_memory,
    format_uptime,
    monitor_table,
    render_tree,
    render_trees,
    to_json,
)

NOW = 1_000_000.0


def inst(sb: str, proc: str, index: int, knot: int | None, app: int | None,
         age: float = 123.0, mem_kb: int = 7680, **kw: object) -> InstanceView:
    groups: tuple[Group, ...] = ()
    if app is not None:
        p = Proc(app, knot or 1, NOW - age, threads=1, mem_rss=mem_kb * 1024,
                 user_time=3, system_time=4)
        t = Totals()
        t.add_proc(p)
        groups = (Group(p, t),)
    return InstanceView(sb, proc, index, knot, groups, **kw)  # type: ignore[arg-type]


def two_instances() -> TreeView:
    return TreeView(1234, "/etc/lithos/master.yaml", (
        inst("socket", "socket", 1, 5001, 5679),
        inst("socket", "socket", 0, 5000, 5678),
    ))


def test_tree_layout_plain_matches_the_original_example() -> None:
    assert render_trees([two_instances()], False, NOW) == (
        "1234 tree /etc/lithos/master.yaml [2/2] 15.0MiB\n"
        "  └─socket [2/2] 15.0MiB\n"
        "      └─socket [2/2] 15.0MiB\n"
        "          ├─5678 socket/socket.0 2m3s [1/1] 7.5MiB\n"
        "          └─5679 socket/socket.1 2m3s [1/1] 7.5MiB\n"
    )


def b(text: str) -> str:
    return f"\x1b[34m\x1b[1m{text}\x1b[0m\x1b[22m"


def r(text: str) -> str:
    return f"\x1b[31m\x1b[1m{text}\x1b[0m\x1b[22m"


def g(text: str) -> str:
    return f"\x1b[32m\x1b[1m{text}\x1b[0m\x1b[22m"


def test_tree_layout_coloured_e34() -> None:
    out = render_trees([two_instances()], True, NOW).splitlines()
    assert out == [
        f"{b(1234)} tree {b('/etc/lithos/master.yaml')} {b('[2/2]')} {b('15.0MiB')}",
        f"  └─socket {b('[2/2]')} {b('15.0MiB')}",
        f"      └─socket {b('[2/2]')} {b('15.0MiB')}",
        f"          ├─{g(5678)} socket/socket.0 {b('2m3s')} {b('[1/1]')} {b('7.5MiB')}",
        f"          └─{g(5679)} socket/socket.1 {b('2m3s')} {b('[1/1]')} {b('7.5MiB')}",
    ]


def test_single_instance_zero_is_printed_directly_young_uptime_red() -> None:
    tree = TreeView(1, "m.yaml", (inst("a", "web", 0, 10, 11, age=5),
                                  inst("b", "x", 0, 20, None)))
    out = render_trees([tree], True, NOW).splitlines()
    assert out[2] == f"  │   └─{g(11)} a/web.0 {r('5s')} {b('[1/1]')} {b('7.5MiB')}"
    assert out[4] == f"      └─{r('(20)')} b/x.0 {r('<failing>')}"


def test_down_instance_and_restarts_are_shown() -> None:
    tree = TreeView(1, "m.yaml", (
        inst("a", "web", 0, None, None, restarts=2, last_exit="exit 1"),
        inst("a", "web", 1, 10, 11, restarts=1, last_exit="SIGKILL"),
    ))
    out = render_trees([tree], False, NOW).splitlines()
    assert out[3] == "          ├─(-) a/web.0 <down> (restarts:2 last:exit 1)"
    assert out[4] == "          └─11 a/web.1 2m3s [1/1] 7.5MiB (restarts:1 last:SIGKILL)"


def test_sandbox_whose_reload_failed_is_marked() -> None:
    tree = TreeView(1, "m.yaml", (inst("a", "web", 0, 10, 11),), {"b": "b.yaml: bad"})
    out = render_trees([tree], False, NOW).splitlines()
    assert out[3] == "  └─b [0/0] 0B <config error>"
    assert json.loads(to_json([tree]))["trees"][0]["config_errors"] == {"b": "b.yaml: bad"}


def test_connectors() -> None:
    node = Node("parent", [Node("child1", [Node("subchild")]), Node("child2", [Node("s")])])
    assert render_tree(node) == (
        "parent\n  ├─child1\n  │   └─subchild\n  └─child2\n      └─s\n")


def test_uptime_formats() -> None:
    assert format_uptime(5) == ("5s", True)
    assert format_uptime(45) == ("45s", False)
    assert format_uptime(123)[0] == "2m3s"
    assert format_uptime(3 * 3600 + 62)[0] == "3h1m2s"
    assert format_uptime(86400 + 3600 + 60 + 5)[0] == "1d1h1m"
    assert format_uptime(5 * 86400)[0] == "5days"


def test_memory_formats() -> None:
    assert format_memory(1023) == "1023B"
    assert format_memory(1536) == "1.5kiB"
    assert format_memory(15 * 1048576) == "15.0MiB"
    assert format_memory(3 << 30) == "3.0GiB"


def test_json_schema_sorted_keys_no_newline() -> None:
    text = to_json([two_instances()])
    assert not text.endswith("\n")
    doc = json.loads(text)
    assert list(doc) == ["trees"]
    tree = doc["trees"][0]
    assert sorted(tree) == ["children", "config", "config_errors", "pid"]
    assert tree["config_errors"] == {}
    child = tree["children"][1]
    assert child["name"] == "socket/socket.0" and child["pid"] == 5000 and child["ok"] is True
    assert sorted(child) == ["cgroup_memory", "last_exit", "name", "ok", "pid", "processes",
                             "restarts"]
    proc = child["processes"][0]
    assert sorted(proc) == ["child_system_time", "child_user_time", "mem_rss", "mem_swap",
                            "pid", "processes", "start_time", "system_time", "threads",
                            "user_time"]
    assert proc["mem_rss"] == 7680 * 1024 and proc["start_time"] == int(NOW - 123)
    assert text.index('"children"') < text.rindex('"config"') < text.rindex('"pid"')


def test_monitor_table() -> None:
    out = monitor_table([(11, "a/web.0", 12.345, 1, 1, 7680 * 1024),
                         (0, "a/web.1", 0.0, 3, 2, 1024)])
    assert out.splitlines() == [
        "PID NAME      CPU THR PRC        MEM ",
        " 11 a/web.0  12.3   1   1  7680.0kiB ",
        "  0 a/web.1   0.0   3   2     1.0kiB ",
    ]
