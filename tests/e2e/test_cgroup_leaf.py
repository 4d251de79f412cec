"""A real lithos_tree: a container's group, made and limited by its knot (K-20, T-51).

The broker makes `<cgroup-name>`; the knot makes its own group in every hierarchy,
writes its limits and the cpuset copy, and joins it before it forks the service.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CONFIG = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
memory-limit: 104857600
cpu-shares: 512
kill-timeout: 1
"""
HIERARCHIES = ("systemd", "cpu", "cpuacct", "memory", "blkio", "cpuset")


def test_the_group_exists_everywhere_with_its_limits_and_the_service(lithos) -> None:
    if not Path("/sys/fs/cgroup/memory/cgroup.procs").exists():
        pytest.skip("no cgroup v1 hierarchies")
    lithos.write("master.yaml", lithos.master.read_text()
                 + "cgroup-controllers: [name, cpu, cpuacct, memory, blkio, cpuset]\n")
    lithos.image("s.v1", {"s.yaml": CONFIG})
    lithos.sandbox("cg", "", "s: {image: s.v1, config: /config/s.yaml, instances: 2}\n")
    lithos.start()
    for i in (0, 1):
        lithos.wait_stdio("cg", rf"^up cg/s\.{i}$")
    running = lithos.running()
    for i in (0, 1):
        knot = running[f"cg/s.{i}"]
        service = lithos.service_pid(knot)
        groups = [Path("/sys/fs/cgroup", h, lithos.cgroup_name, f"cg:s.{i}.scope")
                  for h in HIERARCHIES]
        for group in groups:
            procs = {int(p) for p in (group / "cgroup.procs").read_text().split()}
            assert {knot, service} <= procs, group
        memory, cpu, cpuset = groups[3], groups[1], groups[5]
        assert int((memory / "memory.limit_in_bytes").read_text()) == 104857600
        if (memory / "memory.memsw.limit_in_bytes").exists():
            assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 104857600
        assert (cpu / "cpu.shares").read_text() == "512\n"
        for name in ("cpuset.cpus", "cpuset.mems"):
            own = (cpuset / name).read_text()
            assert own.strip() and own == (cpuset.parent / name).read_text()
    assert "cgroup" not in lithos.stdio_log("cg")  # no warning, no failure
    # a restart in the same group name: made again by the next knot
    mark = lithos.mark()
    os.kill(lithos.service_pid(running["cg/s.0"]), signal.SIGKILL)
    lithos.wait_for(r"Container cg/s\.0 \(pid: \d+\) exited", start=mark)
    lithos.wait_for(r"cg/s\.0: STARTING -> RUNNING", start=mark)
    lithos.wait_stdio("cg", r"^up cg/s\.0$[\s\S]*^up cg/s\.0$")  # the new service runs
    knot = lithos.running()["cg/s.0"]
    group = Path("/sys/fs/cgroup/cpu", lithos.cgroup_name, "cg:s.0.scope")
    assert knot in {int(p) for p in (group / "cgroup.procs").read_text().split()}
    assert (group / "cpu.shares").read_text() == "512\n"
    assert lithos.stop() == 0
    assert not [h for h in HIERARCHIES
                if Path("/sys/fs/cgroup", h, lithos.cgroup_name, "cg:s.0.scope").exists()]
