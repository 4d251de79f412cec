"""OwnedFd: one file descriptor with exactly one owner (STYLE P6, trio's _FdHolder).

Owns: closing fds received from a peer. Rules: close() is idempotent and sets the
fd to -1 before closing, so a second close can never hit a reused number;
fileno() after close raises; detach() hands the number to a new owner. An OwnedFd
collected while still open is closed with a ResourceWarning (a leak is a bug, but
not one that may exhaust the broker's fd table).
"""

from __future__ import annotations

import os
import warnings
from types import TracebackType


class OwnedFd:
    """Owns one fd; close() is idempotent; fileno() after close raises ValueError."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"OwnedFd: {fd} is not an fd")
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The fd number, still owned by this object."""
        if self._fd < 0:
            raise ValueError("OwnedFd: fileno() after close() or detach()")
        return self._fd

    def detach(self) -> int:
        """Give up ownership: the caller now owns (and must close) the returned fd."""
        fd = self.fileno()
        self._fd = -1
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1  # -1 first: a failed close must not be retried
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> OwnedFd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if self._fd >= 0:
            warnings.warn(f"OwnedFd({self._fd}) was never closed", ResourceWarning, stacklevel=1)
            self.close()

    def __repr__(self) -> str:
        return f"OwnedFd({self._fd})" if self._fd >= 0 else "OwnedFd(closed)"


def close_all(fds: list[OwnedFd] | tuple[OwnedFd, ...]) -> None:
    """Close every fd, even when closing one of them fails (the first error is raised)."""
    first_error: OSError | None = None
    for fd in fds:
        try:
            fd.close()
        except OSError as error:
            first_error = first_error or error
    if first_error is not None:
        raise first_error
