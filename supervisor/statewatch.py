"""Waking the CLIs (lithos_switch --wait, lithos_ps --monitor) when the tree changes.

Owns one inotify instance watching what the tree writes as it changes, with no new
protocol message: `<runtime-dir>` itself (the supervisor rewrites `metrics.prom`, and
`metrics.values` unless CANTAL_PATH puts it elsewhere, in place after every start,
death and reload; a re-exec creates
`control.sock` and `master.pid` again) and `<runtime-dir>/children` (the broker's
record per knot, written at each start, removed at each exit; root only).
Rules: a source that cannot be watched (not there, no permission) is skipped; the
watch is made before the caller's first read, so no change between a read and a
wait is lost; `wait` returns at its timeout anyway, so a missed source costs
latency, never correctness.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
from pathlib import Path
from types import TracebackType

_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE = 0x100, 0x200
MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


class StateWatch:
    """`with StateWatch(runtime_dir) as w: ... w.wait(timeout_s)`; see the module doc."""

    def __init__(self, runtime_dir: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        self.watched: list[Path] = []
        if self.fd < 0:  # out of inotify instances: wait() is then a plain timeout
            return
        for path in (runtime_dir, runtime_dir / "children"):
            if _libc.inotify_add_watch(self.fd, os.fsencode(path), MASK) >= 0:
                self.watched.append(path)

    def wait(self, timeout_s: float) -> bool:
        """True when the tree changed since the last wait (events drained), else False
        after timeout_s."""
        if self.fd < 0 or not self.watched:
            select.select([], [], [], max(0.0, timeout_s))
            return False
        if not select.select([self.fd], [], [], max(0.0, timeout_s))[0]:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> StateWatch:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
