"""What a chaos tree leaves behind: its knots in /proc, and the leftovers after SIGTERM.

Also the small /proc and log helpers of the storm (one supervisor, children, cmdline).

Owns the end-of-run check of issue 11: after the final SIGTERM, lithos_tree exits 0
and leaves no state dir, no child record, no cgroup below `<cgroup-name>` in any
hierarchy, no mount under the tree, no knot and no veth (T-38, K-33). Read-only: it
looks at /proc, /sys and the tree's directories and reports; the clean-up of a failed
run is tests/chaos/treefix.py's.

Veths: the host ends lithos makes are named `li_<hash>_<octets>` (broker/bridge.py,
K-31). The storm's sandboxes are not bridged, so any `li_*` interface of the host
network namespace that was not there before the tree started is a leftover of ours
(or of a parallel test that broke the "own netns" rule: either is worth a look).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from broker.children import proc_knot_name, proc_ppid
from tests.e2e.conftest import Lithos, _wait_gone

SYS_NET = Path("/sys/class/net")
VETH_PREFIX = "li_"


def tree_knots(sandboxes: Iterable[str]) -> dict[str, list[int]]:
    """The knots of `sandboxes` in /proc, by instance (zombies excluded: empty cmdline).

    A knot's own fork, between fork and the service's exec, still shows the
    knot's command line: a process whose parent is a knot of the same name is
    that fork, not a second knot.
    """
    ours = set(sandboxes)
    named: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        name = proc_knot_name(int(entry))
        if name is not None and name.split("/", 1)[0] in ours:
            named[int(entry)] = name
    out: dict[str, list[int]] = {}
    for pid, name in named.items():
        parent = proc_ppid(pid)
        if parent is not None and named.get(parent) == name:
            continue
        out.setdefault(name, []).append(pid)
    return out


def host_veths() -> set[str]:
    """Names of the host network namespace's interfaces that lithos could have made."""
    try:
        return {name for name in os.listdir(SYS_NET) if name.startswith(VETH_PREFIX)}
    except OSError:
        return set()


def leftovers(lithos: Lithos, sandboxes: Iterable[str], veths_before: set[str]) -> list[str]:
    """After lithos_tree exited: everything it made that is still there, one line each."""
    problems: list[str] = []
    sandboxes = list(sandboxes)
    for sb in sandboxes:
        state = lithos.runtime / "state" / sb
        left = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
        if left:
            problems.append(f"{state}: state dirs left {left}")
    records = sorted(p.name for p in (lithos.runtime / "children").glob("*"))
    if records:
        problems.append(f"child records left: {records}")
    base = Path("/sys/fs/cgroup")
    tops = [base, *base.iterdir()] if base.is_dir() else []
    for top in tops:
        group = top / lithos.cgroup_name
        if group.is_dir():
            subs = sorted(p.name for p in group.iterdir() if p.is_dir())
            if subs:
                problems.append(f"{group}: cgroups left {subs}")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f
                  if line.split()[4].startswith(str(lithos.root))]  # fmt: skip
    if mounts:
        problems.append(f"mounts left under {lithos.root}: {mounts}")
    knots = tree_knots(sandboxes)
    if knots:
        problems.append(f"knots left: {knots}")
    veths = sorted(host_veths() - veths_before)
    if veths:
        problems.append(f"veths left in the host network namespace: {veths}")
    return problems


def one_supervisor(lt: Lithos) -> list[str]:
    """[] when exactly one supervisor (a child of lithos_tree) runs."""
    sups = [p for p in children(lt.pid) if cmdline_has(p, b"-m\0supervisor")]
    if len(sups) > 1:  # the one before a re-exec may still be on its way out
        line = lt.log.lines[last_index(lt, "supervisor started (pid ")] if lt.log else ""
        current = re.search(r"supervisor started \(pid (\d+)", line)
        for pid in sups:
            if current is None or pid != int(current.group(1)):
                _wait_gone(pid, 5.0)
        sups = [p for p in children(lt.pid) if cmdline_has(p, b"-m\0supervisor")]
    return [] if len(sups) == 1 else [f"{len(sups)} supervisors: {sups}"]


def last_index(lithos: Lithos, text: str) -> int:
    assert lithos.log is not None
    lines = lithos.log.lines
    for i in range(len(lines) - 1, -1, -1):
        if text in lines[i]:
            return i
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def cmdline_has(pid: int, word: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word in f.read()
    except OSError:
        return False
