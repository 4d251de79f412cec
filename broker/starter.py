"""Carrying out a StartPlan, and undoing it when a container ends.

Owns the order of the kernel work of one start: sockets, the network of a
bridged sandbox (broker/netstart.py), cgroup and limits, stdio log, state dir,
the knot's start (knot.spawn), which joins its cgroup itself as its first step (T-51:
before it forks anything; a failed join is a line in its stdio log and sandbox log,
and the knot runs on, as when the broker joined it). The broker makes the group's
parents; a new group's own dirs and limits are the knot's first ops too (K-20:
broker.cgroups.prepare; a failed mkdir fails the setup, a failed limit is a line), so
a container whose knot died early may leave no group: removing one is fine. Rules: the plan was
checked by broker/policy.py; nothing here decides. A failure part-way undoes
what was done (no socket kept, no veth, netns, cgroup or state dir left) and raises Denied
with code RESOURCE naming the object and the errno.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from pathlib import Path

from broker import netstart
from broker.cgroups import CgroupError, CgroupHandle, CgroupLayout, LeafWork
from broker.children import Child, new_child
from broker.netstart import ContainerNet, NetworkError
from broker.policy import StartPlan
from broker.ports import PortError, PortTable, SocketSettings
from knot.spawn import spawn_knot
from knot.spec import CgroupWrite
from protocol import failpoints
from protocol.errors import Denied
from protocol.records import DenyCode
from protocol.stdiolog import StdioLogError, open_stdio_log

log = logging.getLogger(__name__)


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def start(
    plan: StartPlan,
    fingerprint: str,
    ports: PortTable,
    cgroups: CgroupLayout | None,
    *,
    detach_from_broker: bool = True,
    sandbox_log: tuple[int, str] | None = None,
    stdio_log_fd: int = -1,
) -> Child:
    """Forks the knot of `plan`; returns its Child. Raises: Denied(RESOURCE).

    sandbox_log: (fd, settings) from broker.sandboxlogs; stdio_log_fd: the stdio log
    already opened (broker.sandboxlogs.SandboxLogs.open_stdio), else opened here.
    Both fds are closed here.
    """
    name = plan.name
    fds: dict[int, int] = {}
    group: CgroupHandle | None = None
    leaf: LeafWork | None = None
    net: ContainerNet | None = None
    log_fd = stdio_log_fd
    try:
        for req in plan.ports:
            s = req.settings
            settings = SocketSettings(s.reuse_addr, s.reuse_port, s.set_non_block, s.listen_backlog)
            fds[req.fd] = ports.acquire(name, req.host, req.port, settings)
        if plan.network is not None:
            net = netstart.prepare(plan.network)
            fds.update(net.fds)
        failpoints.hit("broker.start.after_sockets")
        if cgroups is not None and plan.cgroup is not None:
            group, leaf = cgroups.prepare(plan.cgroup, plan.memory_limit, plan.cpu_shares)
        failpoints.hit("broker.start.after_cgroup")
        if log_fd < 0:
            log_fd = open_stdio_log(plan.stdio_log.parent, plan.stdio_log.stem)
        plan.state_dir.mkdir(parents=True, exist_ok=True)
        spec = plan.spec
        if group is not None:  # the knot joins it first thing (T-51; knot.plan's join op)
            spec = dataclasses.replace(spec, cgroup_procs=group.procs_files)
        if leaf is not None:  # a new group: the knot makes it and writes its limits (K-20)
            writes = tuple(CgroupWrite(*w) for w in leaf.writes)
            spec = dataclasses.replace(spec, cgroup_dirs=leaf.dirs, cgroup_writes=writes)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = spawn_knot(
                spec,
                inherited_fds=fds,
                stdin=null,
                stdout=log_fd,
                stderr=log_fd,
                stdio_log=log_fd,
                pdeathsig=not detach_from_broker,
                netns_fd=net.netns_fd if net is not None else None,
                sandbox_log=sandbox_log,
                before_setup=_before_go,
            )
        finally:
            os.close(null)
    except (PortError, CgroupError, StdioLogError, OSError, ValueError, NetworkError) as e:
        if net is not None:
            netstart.discard(net)
        ports.release(name)
        if group is not None:
            with contextlib.suppress(CgroupError):
                group.remove()
        remove_state_dir(plan.state_dir)
        what = f"{_errname(e)} ({e.strerror})" if isinstance(e, OSError) and e.errno else str(e)
        raise Denied(DenyCode.RESOURCE, f"{name}: starting: {what}") from None
    finally:
        if log_fd >= 0:
            os.close(log_fd)
        if net is not None:
            net.close()  # the knot holds the netns now
        if sandbox_log is not None:
            os.close(sandbox_log[0])
    addresses = [(req.host, req.port) for req in plan.ports]
    child = new_child(name, pid, fingerprint, plan.cgroup, addresses)
    child.kill_timeout_s = plan.spec.kill_timeout_s
    child.state_dir = str(plan.state_dir)
    child.veth = net.veth if net is not None else ""
    return child


def _before_go(pid: int) -> None:
    """Between the knot's spawn and its go byte (the knot waits on its go pipe)."""
    failpoints.hit("broker.start.before_go")


def remove_state_dir(path: Path, *, with_empty_parent: bool = True) -> None:
    """E-30: the state dir goes with its container (a missing one is fine), and the
    sandbox's dir with it once empty, unless `with_empty_parent` is False."""
    # Imported at the first stop, not with the broker: shutil brings bz2, lzma and zlib,
    # about 0.3 MB of the broker's fixed memory (issue #10). The broker is root: it can
    # always import.
    import shutil

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("%s: removing state dir: %s", path, _errname(e))
    if with_empty_parent:
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the sandbox's dir, once empty


def clean_up(child: Child, ports: PortTable, cgroups: CgroupLayout | None) -> None:
    """What a container leaves when it ends: its sockets, veth, cgroup and state dir."""
    ports.release(child.instance)
    if child.veth:
        netstart.remove_host_veth(child.veth, f"{child.instance} ended")
    if cgroups is not None and child.cgroup is not None:
        try:
            cgroups.handle(child.cgroup).remove()
        except CgroupError as e:
            log.warning("%s: %s", child.instance, e)
    if child.state_dir:
        remove_state_dir(Path(child.state_dir))
