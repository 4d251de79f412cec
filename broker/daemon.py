"""Process-level chores of lithos_tree: directories, the pid file, privileges.

Owns M-1 (the directories lithos creates), T-5 (the pid file), the child
subreaper flag, and starting the unprivileged supervisor. Each function does one
thing and raises `StartupError` with a message that names the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import signal
import socket
import sys
from pathlib import Path

from broker.pyexec import PACKAGE_PARENT, daemon_path, x_options
from protocol import failpoints
from protocol.config import MasterConfig
from protocol.structs import dataclass

PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("lithos_tree")


class StartupError(Exception):
    """lithos_tree cannot start; the message names the object and the reason."""


def prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


def make_dir(path: Path, what: str) -> None:
    """Non-recursive mkdir that accepts an existing directory (M-1)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not path.is_dir():
            raise StartupError(
                f"Cant create {what}: Can't create dir {str(path)!r}, "
                "path already exists but not a directory"
            ) from None
    except OSError as e:
        raise StartupError(
            f"Cant create {what}: {path}: {errno.errorcode.get(e.errno or 0, e.errno)} "
            f"({e.strerror})"
        ) from None


def make_master_dirs(master: MasterConfig) -> None:
    """M-1, in the original's order (lithos_tree and lithos_cmd). Raises: StartupError."""
    for path, what in (
        (master.runtime_dir, "runtime-dir"),
        (master.state_dir, "state-dir"),
        (master.mount_dir, "mount-dir"),
        (master.default_log_dir, "log dir"),
        (master.config_log_dir, "configuration log dir"),
        (master.stdio_log_dir, "stdio log dir"),
    ):
        if path is not None:
            make_dir(path, what)


def write_pid_file(path: Path) -> None:
    """T-5: refuse to start while another live lithos_tree owns the pid file."""
    me = os.getpid()
    try:
        text: str | None = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        text = None
    except OSError as e:
        text = f"<{e.strerror}>"
    if text is not None:
        try:
            other = int(text)
        except ValueError:
            other = 0
        if other <= 0:  # the original warns `Pid file exists, but cannot be read`
            log.warning("%s: exists but does not hold a pid (%r); replacing it", path, text[:40])
        elif other != me and pid_alive(other):
            raise StartupError(
                f"{path}: master pid is {other}, and there is a live process with that pid "
                "(is another lithos_tree running with this runtime-dir?)"
            )
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(f"{me}\n")
        os.rename(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StartupError(f"{path}: can't write the pid file: {e.strerror}") from None


def pid_alive(pid: int) -> bool:
    """Whether `pid` names a process (any: kill(pid, 0) asks no more)."""
    if pid <= 0:
        return False  # kill(0) and kill(-1) would ask about groups, not one process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged identity the supervisor runs as."""

    name: str
    uid: int
    gid: int


def lookup_account(user: str) -> Account:
    """`supervisor-user` (a name or a numeric uid) -> Account; root is refused."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        if user.isdigit():
            return Account(user, int(user), int(user))
        raise StartupError(
            f"supervisor-user: {user!r} is not a known user (use a name from /etc/passwd "
            "or a numeric uid)"
        ) from None
    if entry.pw_uid == 0:
        raise StartupError(
            f"supervisor-user: {user!r} is root; the supervisor must run unprivileged"
        )
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def spawn_supervisor(
    account: Account, master_path: Path, extra_args: list[str], stderr_fd: int | None,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, socket.socket]:
    """Forks the supervisor with one end of a SEQPACKET socketpair; returns (pid, ours).

    The child sets NoNewPrivs and execs the supervisor (`python3 -S` with our import
    path and -X options, broker/pyexec.py), which drops to `account` before it
    reads anything (supervisor/privileges.py): the interpreter may live where only
    root can read it, so the supervisor imports everything before that. stderr_fd
    (the pipe of broker/logrelay.py) becomes its fd 2, so its log lines land beside
    the broker's. Its environment is built here, plus extra_env (CANTAL_PATH when
    ours has none: protocol/metricpaths.py).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child_fd = theirs.fileno()
    argv = [
        sys.executable, "-S", *x_options(), "-m", "supervisor",
        "--config", str(master_path), "--fd", str(child_fd),
        "--user", f"{account.uid}:{account.gid}", *extra_args,
    ]  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "PYTHONPATH": daemon_path(), **(extra_env or {})}  # fmt: skip
    if armed := failpoints.hand_over("supervisor."):  # this supervisor only: no crash loop
        env[failpoints.ENV] = armed
    pid = os.fork()
    if pid == 0:  # child: nothing but fd and signal set-up until exec
        try:
            ours.close()
            os.set_inheritable(child_fd, True)
            if stderr_fd is not None:
                os.dup2(stderr_fd, 2)
            for signum in range(1, signal.NSIG):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            signal.set_wakeup_fd(-1)
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            # The package's parent dir: `-m supervisor` imports the same code as ours.
            os.chdir(PACKAGE_PARENT)
            os.execve(sys.executable, argv, env)
        except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
            os.write(2, f"lithos_tree: starting supervisor: {e}\n".encode())
        finally:
            os._exit(127)
    theirs.close()
    return pid, ours
