"""knot.caps and knot.ports: an unprivileged app keeps CAP_NET_BIND_SERVICE (K-30, K-34).

The child unshares its own netns (destroyed when it exits), drops to
uid/gid 65534 and then execs a probe; nothing touches the host's network.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from collections.abc import Callable

import pytest

from knot.caps import CAP_NET_BIND_SERVICE, keep_caps_across_setuid, raise_net_bind_service
from knot.ports import open_listening_socket, put_at_fd

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root

CLONE_NEWNET = 0x40000000
NOBODY = 65534
# The probe runs as uid 65534, which cannot reach a python under /root (pyenv);
# the system python is world-executable.
PROBE_PYTHON = "/usr/bin/python3"
_libc = ctypes.CDLL(None, use_errno=True)

# Runs after exec as uid 65534: reports its caps, the inherited fd 3, and
# whether it can bind port 81 itself (which needs the ambient capability).
PROBE = r"""
import json, socket, errno
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
out = {"uid": status["Uid"].split()[0], "eff": int(status["CapEff"], 16),
       "amb": int(status["CapAmb"], 16),
       "unprivileged_port_start":
           int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read())}
try:
    fd3 = socket.socket(fileno=3)
    out["fd3"] = [fd3.getsockname()[1], fd3.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
except OSError as e:
    out["fd3"] = errno.errorcode[e.errno]
s = socket.socket()
try:
    s.bind(("0.0.0.0", 81))
    out["bind81"] = "ok"
except OSError as e:
    out["bind81"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def _in_new_netns_as_nobody(keep_bind: bool) -> Callable[[], None]:
    """What the knot does between fork and exec, in order (K-30, K-34)."""
    def child() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        if keep_bind:
            keep_caps_across_setuid()
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if keep_bind:
            raise_net_bind_service()
            put_at_fd(open_listening_socket("0.0.0.0", 80, 16, True, False, False), 3)
    return child


def _run_probe(keep_bind: bool) -> dict[str, object]:
    if not os.path.exists(PROBE_PYTHON):
        pytest.skip(f"{PROBE_PYTHON} is needed for a probe that runs as uid {NOBODY}")
    result = subprocess.run(
        [PROBE_PYTHON, "-I", "-c", PROBE], preexec_fn=_in_new_netns_as_nobody(keep_bind),
        close_fds=False, cwd="/", env={}, capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


def test_unprivileged_app_can_bind_port_80_in_its_netns() -> None:
    out = _run_probe(keep_bind=True)
    assert out["uid"] == str(NOBODY)
    assert out["unprivileged_port_start"] == 1024  # so port 80 really needs the capability
    assert out["eff"] == 1 << CAP_NET_BIND_SERVICE  # exactly one capability, nothing else
    assert out["amb"] == 1 << CAP_NET_BIND_SERVICE
    assert out["fd3"] == [80, 1]  # K-34: opened before exec, listening at fd 3
    assert out["bind81"] == "ok"  # the app itself, after exec (ambient set)


def test_without_the_capability_binding_port_80_is_refused() -> None:
    """The control: the same child without knot.caps gets EACCES."""
    out = _run_probe(keep_bind=False)
    assert out["uid"] == str(NOBODY)
    assert out["eff"] == 0 and out["amb"] == 0
    assert out["bind81"] == "EACCES"
    assert out["fd3"] == "EBADF"
