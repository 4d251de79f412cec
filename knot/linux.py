"""The Linux syscalls that Python 3.11's os module lacks, through ctypes.

Owns: mount, umount2, pivot_root, unshare, setns and prctl, each a thin wrapper
that raises OSError(errno, strerror, path) on failure. Rules: no decisions here,
no logging, no retries; callers wrap the OSError with the object and the action
(STYLE P8). Imports only the standard library (ctypes, os).
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# clone(2) / unshare(2) / setns(2) flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# prctl(2) options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# glibc has no pivot_root() wrapper: call the syscall by number. os.uname() rather than
# platform.machine(): platform costs the broker about 0.1 MB for this one lookup.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(os.uname().machine)


def _raise(path: str | None = None) -> None:
    err = ctypes.get_errno()
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), path)


def _c(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    """mount(2); the OSError names the target."""
    if _libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data)) != 0:
        _raise(target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2); the OSError names the target."""
    if _libc.umount2(_c(target), ctypes.c_int(flags)) != 0:
        _raise(target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2); the OSError names new_root."""
    if _SYS_PIVOT_ROOT is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    if _libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), _c(new_root), _c(put_old)) != 0:
        _raise(new_root)


def unshare(flags: int) -> None:
    """unshare(2)."""
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        _raise()


def setns(fd: int, nstype: int) -> None:
    """setns(2)."""
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        _raise()


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) with one argument (the others zero)."""
    zero = ctypes.c_ulong(0)
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), zero, zero, zero) != 0:
        _raise()
