"""Reading one file inside an image as if the image root were `/`.

Owns read_in_image(). Rule: nothing a container author writes (symlinks,
`..`, absolute links) can make us read a file outside `image_root`. The
kernel does the resolution with openat2(RESOLVE_IN_ROOT) (Linux >= 5.6)
through ctypes; where that syscall is missing we walk the path ourselves one
component at a time with O_NOFOLLOW, resolving each symlink against the
image root, and never following a magic link. The size read is bounded.
A process that has not loaded ctypes walks too (the supervisor: ctypes would
stay in its memory for this alone, about 0.3 MB; issue #10); the unit tests run
every case both ways.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from .container import ContainerConfig, parse_container
from .errors import ConfigError, Problem
from .yamlload import MAX_FILE_BYTES

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

__all__ = ["image_file_name", "load_container_in_image", "read_in_image"]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "riscv64": 437,
                "ppc64le": 437, "s390x": 437, "i686": 437}
MAX_SYMLINKS = 40
_libc: ctypes.CDLL | None = None  # the process's own symbols, made by the first _openat2


def _openat2(dirfd: int, path: str, flags: int) -> int:
    """openat2(dirfd, path, {flags, 0, RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS}).

    Raises OSError; errno ENOSYS when the kernel (or a seccomp filter) lacks it.
    """
    import ctypes  # loaded already (read_in_image's rule), or asked for by the caller

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    number = _SYS_OPENAT2.get(os.uname().machine)  # what platform.machine() says
    if number is None:
        raise OSError(errno.ENOSYS, "openat2 number unknown on this machine")
    how = (ctypes.c_uint64 * 3)(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)  # open_how
    raw = path.encode("utf-8", "surrogateescape")
    for _ in range(8):     # EAGAIN: a concurrent rename raced the lookup; just retry
        fd = int(_libc.syscall(number, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def _walk_in_root(rootfd: int, path: str, flags: int) -> int:
    """Pure-userspace RESOLVE_IN_ROOT: component by component, O_NOFOLLOW."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()                       # a stack: next component on top
    stack: list[int] = [os.dup(rootfd)]     # fds of the directories walked so far
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(stack) > 1:          # `..` at the root stays at the root
                    os.close(stack.pop())
                continue
            last = not pending
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):  # absolute links are relative to the image root
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if last:
                os.close(fd)
                return os.open(name, flags | os.O_NOFOLLOW, dir_fd=stack[-1])
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            stack.append(fd)
        return os.open(".", flags, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def _open_in_root(rootfd: int, path: str, flags: int) -> int:
    try:
        return _openat2(rootfd, path, flags)
    except OSError as e:
        # ENOSYS: kernel < 5.6; EPERM: a seccomp filter that does not know openat2.
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
    return _walk_in_root(rootfd, path, flags)


def read_in_image(image_root: Path, path: str, limit: int = MAX_FILE_BYTES,
                  *, use_openat2: bool | None = None) -> bytes:
    """The bytes of `path` resolved inside `image_root` (never escaping it).

    use_openat2: None (the default) means where ctypes is loaded already.

    Raises:
        ConfigError: naming the image, the path and the reason.
    """
    def problem(reason: str) -> ConfigError:
        return ConfigError([Problem(image_file_name(image_root, path), "", "",
                                    f"{reason} (in image {image_root})")])

    if use_openat2 is None:
        use_openat2 = "ctypes" in sys.modules
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        rootfd = os.open(image_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise problem(f"cannot be read: the image root cannot be opened: {_name(e)}") from None
    try:
        if use_openat2:
            fd = _open_in_root(rootfd, path, flags)
        else:
            fd = _walk_in_root(rootfd, path, flags)
    except OSError as e:
        raise problem(f"cannot be opened: {_name(e)}") from None
    finally:
        os.close(rootfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise problem("is not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise problem(f"cannot be read: {_name(e)}") from None
    finally:
        os.close(fd)
    if got > limit:
        raise problem(f"is larger than {limit} bytes")
    return b"".join(chunks)


def image_file_name(image_root: Path, path: str) -> str:
    """How a file inside an image is named in messages: the host path it stands for."""
    return str(Path(image_root) / path.lstrip("/"))


def load_container_in_image(image_root: Path, config: str) -> ContainerConfig:
    """Read and parse the container config `config` inside `image_root` (K-8, T-29).

    Raises:
        ConfigError: unreadable (naming the image) or invalid.
    """
    return parse_container(read_in_image(image_root, config), image_file_name(image_root, config))


def _name(e: OSError) -> str:
    return f"{errno.errorcode.get(e.errno or 0, 'error')} ({e.strerror})"
