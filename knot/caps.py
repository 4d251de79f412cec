"""CAP_NET_BIND_SERVICE for the app of a bridged sandbox (K-30).

Owns the capability steps around the knot's setuid, so that an app running as
an ordinary user can still bind ports below 1024 inside its own netns:
`keep_caps_across_setuid()` before setuid, `raise_net_bind_service()` after it
and before exec. Rules:
- ctypes only (Python 3.11 has no prctl/capset); no logging, since it runs in
  the forked child (P12): failures are OSError for the knot's step() to report.
- Only CAP_NET_BIND_SERVICE is kept: effective, permitted and inheritable are
  set to exactly that, and it is raised in the ambient set so it survives exec
  of an ordinary (non file-capability) binary.
Imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import errno
import os

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_NET_BIND_SERVICE = 10
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def keep_caps_across_setuid() -> None:
    """PR_SET_KEEPCAPS: setuid away from root keeps the permitted set (call before setuid)."""
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def raise_net_bind_service() -> None:
    """Keep only CAP_NET_BIND_SERVICE, also in the ambient set (call after setuid, before exec)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    bit = 1 << CAP_NET_BIND_SERVICE  # < 32: lives in the first of the two u32 words
    data = (_CapData * 2)(_CapData(bit, bit, bit), _CapData(0, 0, 0))
    # setuid cleared the effective set; the permitted set survived thanks to
    # KEEPCAPS. capset may only narrow permitted, so this also drops the rest.
    _check(_libc.capset(ctypes.byref(header), data), "capset(CAP_NET_BIND_SERVICE)")
    # Ambient needs the cap in permitted and inheritable (set just above).
    result = _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)
    if result != 0 and ctypes.get_errno() != errno.EINVAL:  # EINVAL: kernel < 4.3
        _check(result, "prctl(PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE)")
