"""Who holds what (issue 11): the supervisor runs unprivileged (uid != 0, no
capabilities, NoNewPrivs); a container's service holds only its stdio and its
declared port, no fd of the broker's, and runs as its configured user (T-33, K-18)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from tests.security.tree import fd_targets, proc_status, start_sleeper, supervisor_pid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_supervisor_has_no_uid_0_no_capabilities_and_no_new_privs(sec_tree) -> None:
    start_sleeper(sec_tree)
    pid = supervisor_pid(sec_tree)
    status = proc_status(pid)
    assert b"-m\0supervisor" in Path(f"/proc/{pid}/cmdline").read_bytes()
    uids = [int(x) for x in status["Uid"].split()]
    gids = [int(x) for x in status["Gid"].split()]
    assert 0 not in uids, status["Uid"]
    assert 0 not in gids, status["Gid"]
    assert status["Groups"] == ""
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps}: {status[caps]}"
    assert status["NoNewPrivs"] == "1"


def test_service_holds_only_stdio_and_its_port_and_runs_as_its_user(sec_tree) -> None:
    _, knot, port = start_sleeper(sec_tree, uid=1000)
    service = sec_tree.service_pid(knot)
    status = proc_status(service)
    assert [int(x) for x in status["Uid"].split()] == [1000] * 4
    assert [int(x) for x in status["Gid"].split()] == [1000] * 4
    assert int(status["CapEff"], 16) == 0
    fds = fd_targets(service)
    assert sorted(fds) == [0, 1, 2, 3], fds
    assert fds[3].startswith("socket:"), fds
    # fd 3 is the listening socket of the declared port, and nothing else is a socket.
    inode = os.stat(f"/proc/{service}/fd/3").st_ino
    tcp = [row for name in ("tcp", "tcp6")
           for row in Path(f"/proc/net/{name}").read_text().splitlines()[1:]]  # fmt: skip
    listening = [row.split() for row in tcp if row.split()[9] == str(inode)]
    assert listening and int(listening[0][1].split(":")[1], 16) == port, listening
    for fd in (0, 1, 2):
        assert not fds[fd].startswith("socket:"), fds
        mode = os.stat(f"/proc/{service}/fd/{fd}").st_mode
        assert stat.S_ISCHR(mode) or stat.S_ISREG(mode) or stat.S_ISFIFO(mode), (fd, fds)
    # None of the broker's own open files (control socket, records, logs) is shared.
    broker = {
        os.stat(f"/proc/{sec_tree.pid}/fd/{fd}").st_ino
        for fd in fd_targets(sec_tree.pid)
        if fd > 2
    }
    shared = {fd for fd in fds if os.stat(f"/proc/{service}/fd/{fd}").st_ino in broker}
    assert shared <= {3}, f"service fds {shared} are broker fds: {fds}"


def test_supervisor_holds_no_listening_socket_and_no_broker_file(sec_tree) -> None:
    """Its only socket is its channel to the broker: no port, no control socket."""
    start_sleeper(sec_tree)
    pid = supervisor_pid(sec_tree)
    fds = fd_targets(pid)
    sockets = [fd for fd, target in fds.items() if target.startswith("socket:")]
    assert len(sockets) == 1, fds
    broker_inodes = set()
    for fd in fd_targets(sec_tree.pid):
        with contextlib.suppress(FileNotFoundError):  # a short-lived fd of the broker
            broker_inodes.add(os.stat(f"/proc/{sec_tree.pid}/fd/{fd}").st_ino)
    tcp = {row.split()[9] for name in ("tcp", "tcp6")
           for row in Path(f"/proc/net/{name}").read_text().splitlines()[1:]}  # fmt: skip
    ino = os.stat(f"/proc/{pid}/fd/{sockets[0]}").st_ino
    assert str(ino) not in tcp and ino not in broker_inodes, fds  # the peer end, not the same
    # Its own output, the metric files it updates in place, may be open for a
    # moment while it publishes; nothing else may be.
    metrics = {str(sec_tree.runtime / f"metrics{s}") for s in (".meta", ".values", ".prom")}
    for fd, target in fds.items():
        if fd > 2 and target.startswith("/") and target not in metrics:
            raise AssertionError(f"supervisor holds file {target} (fd {fd})")
