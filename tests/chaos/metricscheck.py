"""The chaos storm's metric checks (issue 6): the supervisor's counters against history.

Owns reading `<runtime-dir>/metrics.meta` + `.values` (through the supervisor's own
reader, supervisor/metrics_file.py) and two checks, both returning problems as text:

`MetricWatch.problems(storm)`, at every round's picture (so a publish a moment
late is simply looked at again):
- counters never go down (X-M6: a new supervisor restores them; before the
  broker waited for the previous supervisor at a re-exec, both wrote the files);
- exact levels: `master.sandboxes`, `master.containers` (the instances the config
  wants), `containers.unknown` 0, and `processes.<sb>.<p>.running` = the
  configured count for every process that does not crash;
- exact counters: a steady process (never restarted) has `started` = its
  instances, `deaths` = `failures` = 0; a crashing one `failures` = `deaths`
  (every exit is code 1); `containers.<c>` = the sum of `processes.*.<c>`
  (no process entry is ever removed in the storm).

`history_problems(storm, entries, kills)`, once the crashing processes were switched
to 0 instances and their last exit published: their counters against the broker's
log, the independent record (one `Forked <instance> (pid: N)` line per knot started,
one `Container <instance> (pid: N) exited ...` per knot reaped, one
`supervisor started (pid N` per supervisor and `supervisor ready (` per supervisor
that finished its take-over):
- `started` <= Forked + refused lines and `deaths` <= exited + refused lines (never
  counted twice, and no start counted that the broker did not carry out: it carries
  out what a dead supervisor had queued; a refused start, `denied StartInstance`,
  is a start and a death, T-35);
- (Forked + refused) - `started` <= K * n + refused and the same for `deaths` and
  exited, K the kill -9s, n the instances of the process: a kill -9 loses at most
  one unpublished start and one unpublished exit per instance (an instance has one
  knot at a time, and its next start needs its exit handled), and a refusal that
  came when its supervisor no longer listened (killed, reloaded, re-exec'd) is lost.
  Nothing else is: a reload (lithos_switch) and a re-exec let the supervisor handle
  every exit already sent before it exits (exits after that wait in the broker for
  the next one). One excess: a re-exec waits at most 5 s for the supervisor's last
  requests (`re-exec: the supervisor did not finish`); Spawns it sent after that
  were counted and never carried out, at most one per instance: the lower bound
  is -n per such line (none expected on a machine that is not overloaded);
- ready lines <= the growth of `master.restarts` <= started lines, and started
  lines - growth <= K (a supervisor killed before its first publish is not counted).
The losses measured are printed (they are the figures of docs/reliability.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from supervisor.metrics_file import MetricsFiles

if TYPE_CHECKING:
    from tests.chaos.storm import Storm

COUNTERS = ("started", "deaths", "failures")


def read_metrics(storm: Storm) -> dict[str, int]:
    """Dotted name -> value; two equal reads in a row (a read may meet a write)."""
    files = MetricsFiles(storm.lithos.runtime)
    first = files.read_previous()
    for _ in range(10):
        second = files.read_previous()
        if second == first:
            return second
        first = second
    return first


class MetricWatch:
    """The last counters seen, to check they only grow."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def problems(self, storm: Storm) -> list[str]:
        values = read_metrics(storm)
        if not values:
            return ["metrics: metrics.meta/.values unreadable or empty"]
        problems = []
        for name, before in self.last.items():
            if name in values and values[name] < before:
                problems.append(f"metrics: {name} went down from {before} to {values[name]}")
        self.last = {k: v for k, v in values.items() if k.rsplit(".", 1)[1] in
                     (*COUNTERS, "restarts")}  # fmt: skip
        want = {"master.sandboxes": len(storm.sandboxes),
                "master.containers": len(storm.expected()), "containers.unknown": 0}  # fmt: skip
        for entry, n in storm.wanted.items():
            group = "processes." + entry.replace("/", ".")
            if entry in storm.crash_entries:
                if storm.quiesced:
                    want[f"{group}.running"] = 0
                else:
                    want[f"{group}.failures"] = values.get(f"{group}.deaths", -1)
                continue
            want[f"{group}.running"] = n
            if not entry.endswith("/flex"):
                want.update({f"{group}.started": n, f"{group}.deaths": 0,
                             f"{group}.failures": 0})  # fmt: skip
        for counter in COUNTERS:
            want[f"containers.{counter}"] = sum(
                v for k, v in values.items() if k.startswith("processes.") and
                k.endswith("." + counter))  # fmt: skip
        for name, value in want.items():
            if values.get(name) != value:
                problems.append(f"metrics: {name} is {values.get(name)}, expected {value}")
        return problems


def history_problems(storm: Storm, entries: Iterable[str],
                     kills: int) -> tuple[list[str], list[str]]:  # fmt: skip
    """(problems, figures): the counters of `entries` (sandbox/process) against the log.

    The tree's runtime dir was fresh: every counter started at 0.
    """
    lt = storm.lithos
    assert lt.log is not None
    text = "\n".join(lt.log.lines)
    values = read_metrics(storm)
    problems, figures = [], []
    # A re-exec waits at most REEXEC_DRAIN_S for the supervisor's last requests;
    # what it sent later was counted and never carried out (one per instance).
    late = len(re.findall(r"re-exec: the supervisor did not finish", text))
    for entry in entries:
        n = storm.wanted_at_start[entry]
        group = "processes." + entry.replace("/", ".")
        forked = len(re.findall(rf"Forked {re.escape(entry)}\.\d+ \(pid", text))
        exited = len(re.findall(rf"Container {re.escape(entry)}\.\d+ \(pid: \d+\) ", text))
        refused = len(re.findall(rf"denied StartInstance from .*\(instance {re.escape(entry)}"
                                 rf"\.\d+\)$", text, re.M))
        started, deaths = values.get(f"{group}.started", -1), values.get(f"{group}.deaths", -1)
        lost_starts, lost_deaths = forked + refused - started, exited + refused - deaths
        figures.append(f"{entry}: {forked} forked, {refused} refused, started {started} (lost "
                       f"{lost_starts}); {exited} exited, deaths {deaths} (lost {lost_deaths}), "
                       f"failures {values.get(f'{group}.failures')}")  # fmt: skip
        for what, lost in (("started", lost_starts), ("deaths", lost_deaths)):
            most, least = kills * n + refused, -late * n
            if not least <= lost <= most:
                problems.append(f"{group}.{what}: {lost} lost, expected {least}..{most} "
                                f"({kills} kills x {n} instances + {refused} refused; "
                                f"{late} late re-exec drains)")  # fmt: skip
    launched = len(re.findall(r"supervisor started \(pid \d+", text))
    ready = len(re.findall(r"supervisor ready \(", text))
    grew = values.get("master.restarts", -1)
    figures.append(f"master.restarts grew by {grew}: {launched} supervisors started, "
                   f"{ready} finished their take-over, {kills} killed")  # fmt: skip
    if not (ready <= grew <= launched and launched - grew <= kills):
        problems.append(f"master.restarts grew by {grew}; expected {ready}..{launched} and "
                        f"at least {launched - kills}")  # fmt: skip
    return problems, figures
