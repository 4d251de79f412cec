"""What a starting lithos_tree takes back: its children, their cgroups, their sockets.

Owns the start-up step between reading the records and serving: the knots of
the previous broker image (or of a killed broker) are found again from their
records (broker/children.py checks each against /proc), adopted orphans are
watched through pidfds (broker/exits.py), each found knot joins its cgroup
again, and what knots that died while no broker ran left (sockets, cgroup,
state dir) is cleaned up: their exit status is lost for good. Then what no live
knot owns is swept (broker/sweep.py: state dirs, cgroups). Rules: after a
SIGKILL of the previous broker its listening sockets are taken back from the
orphans (broker/reclaim.py), after a re-exec they came with the resume state;
either way a socket no live instance uses is closed (T-12).
"""

from __future__ import annotations

import logging

from broker import exits, starter, sweep
from broker.cgroups import CgroupError, CgroupLayout
from broker.ports import PortTable
from broker.reclaim import reclaim

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)


def recover(b: Broker, cgroups: CgroupLayout | None) -> None:
    """Finds the children again, cleans up after the dead ones, keeps their sockets."""
    for child in b.children.recover(b.handed_over):
        log.info("%s: recovered (pid %d)", child.instance, child.pid)
        exits.watch_orphan(b, child)
    b.handed_over = {}
    for child in b.children.found:
        if cgroups is not None and child.cgroup is not None:
            try:
                cgroups.handle(child.cgroup).add(child.pid)
            except CgroupError as e:
                log.error("%s: joining cgroup %s: %s", child.instance, child.cgroup, e)
    # Knots that died while no broker ran (it was SIGKILLed): their exit
    # status is lost for good, but their cgroup and state dir are not left.
    for child in b.children.gone:
        if b.children.by_name(child.instance) is None:
            if child.pid > 0:  # (-1: a start cut short, logged by recover())
                log.warning("%s: pid %d exited while lithos_tree was down; cleaning up",
                            child.instance, child.pid)  # fmt: skip
            starter.clean_up(child, b.ports, cgroups)
    b.children.gone.clear()
    if not b.resumed:
        # After a SIGKILL of the previous broker: its sockets live on in the
        # containers it left; take them back so siblings share them again.
        orphans = [c for c in b.children if c.orphan_pidfd >= 0 and c.ports]
        if orphans:
            b.ports.close()
            b.ports = PortTable.adopt(reclaim(orphans))
    # Sockets whose instances did not survive are closed (T-12).
    for addr in b.ports.retain(c.instance for c in b.children):
        log.info("Closing socket %s: no live instance uses it", addr)
    # What containers that ended while no broker ran left behind (T-12a, T-12b).
    live = [c.instance for c in b.children]
    sweep.sweep_state_dirs(b.master.state_dir, live)
    if cgroups is not None and b.master.cgroup_name is not None:
        sweep.sweep_cgroups(cgroups, b.master.cgroup_name, live)
