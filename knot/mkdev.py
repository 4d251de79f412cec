"""lithos_mkdev DIR: the device directory bind-mounted read-only as each container's /dev.

Owns the contents of devfs-dir (§2.9): the six character devices (mode 0666),
pts/, shm/, the ptmx -> pts/ptmx link and the fd/stdin/stdout/stderr links.
Unlike the original shell script, a re-run succeeds: what already exists with the
right type, device number and target is kept (modes are re-applied); something
else in the way is an error naming the path. Run as `python3 -m knot.mkdev DIR`.
"""

from __future__ import annotations

import os
import stat
import sys

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9),
           ("tty", 5, 0), ("full", 1, 7))
DIRS = ("pts", "shm")
LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


class MkdevError(Exception):
    """Something in DIR is in the way."""


def make_devfs(root: str) -> None:
    """Creates (or completes) the devfs dir; Raises: MkdevError, OSError."""
    os.makedirs(root, exist_ok=True)
    for name, major, minor in DEVICES:
        path = os.path.join(root, name)
        want = os.makedev(major, minor)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mknod(path, stat.S_IFCHR | 0o666, want)
        else:
            if not stat.S_ISCHR(st.st_mode) or st.st_rdev != want:
                raise MkdevError(f"{path}: exists and is not the char device {major}:{minor}")
        os.chmod(path, 0o666)  # mknod's mode is filtered by the umask; `mknod -m` is not
    for name in DIRS:
        path = os.path.join(root, name)
        if not os.path.isdir(path) or os.path.islink(path):
            os.mkdir(path)
    for name, target in LINKS:
        path = os.path.join(root, name)
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        if os.path.lexists(path):
            raise MkdevError(f"{path}: exists and is not a symlink to {target}")
        os.symlink(target, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("Usage: lithos_mkdev /var/lib/lithos/dev", file=sys.stderr)
        return 1
    try:
        make_devfs(args[0])
    except MkdevError as e:
        print(f"lithos_mkdev: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"lithos_mkdev: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
