"""Becoming the unprivileged supervisor-user, first thing after exec.

The broker execs the supervisor as root (the interpreter and the lithos package
may live where only root can read them, e.g. under /root) with NoNewPrivs already
set; before it reads a config or a message, the supervisor drops to its user:
supplementary groups cleared, gid and uid set (real, effective, saved). Moving
every uid away from 0 clears all capabilities (capabilities(7)), and NoNewPrivs
means no exec can bring them back. Modules are imported before the drop.
"""

from __future__ import annotations

import os


def drop_privileges(uid: int, gid: int) -> None:
    """Raises: OSError, or RuntimeError when the drop did not hold."""
    if uid == 0:
        raise RuntimeError("supervisor: refusing to run as uid 0")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if 0 in os.getresuid() or os.getgroups():
        raise RuntimeError("supervisor: privileges were not dropped")
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    if int(caps.get("CapEff", "0"), 16) or int(caps.get("CapPrm", "0"), 16):
        raise RuntimeError(f"supervisor: capabilities remain after dropping to uid {uid}")
