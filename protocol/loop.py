"""The event loop of the two daemons (broker and supervisor).

One epoll, signals through a wakeup fd, timers in a heap. Rules:
- Idle means zero wakeups: `select` blocks until an fd is ready, a signal
  arrives or the nearest timer is due; nothing polls.
- Signal handlers only wake the loop (the C handler writes the signal number to
  the wakeup pipe); callbacks run from `run_once`, never inside a handler.
- Time is `time.monotonic()`; a deadline is an absolute monotonic value.
- Callbacks may add and remove readers and timers while the loop runs.
This module imports nothing of the broker or the supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import field
from types import FrameType

from protocol.structs import dataclass

Callback = Callable[[], None]
SignalCallback = Callable[[int], None]


@dataclass(order=True, slots=True)
class Timer:
    """A pending call; `cancel()` makes the loop skip it."""

    deadline: float
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing: the wakeup fd carries the signal."""


class Loop:
    """A single-threaded epoll loop with signals and timers.

    select.epoll itself, not the selectors module: a dict of callbacks is all the loop
    needs, and the daemons defer selectors (protocol/lazy.py; socket imports it only
    for sendfile), which keeps about 0.1 MB out of each.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._signal_callbacks: dict[int, SignalCallback] = {}
        self._old_handlers: dict[int, object] = {}
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup_fd = -2
        self._stopped = False

    # -- fds -------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Calls `callback()` whenever `fd` is readable. Raises: KeyError if it is already
        watched, OSError if it is not an open fd."""
        if fd in self._readers:
            raise KeyError(f"fd {fd} is already watched")
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        """Stops watching `fd`; one that is not watched, or already closed, is fine."""
        if self._readers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):  # closed: the kernel dropped it already
                self._epoll.unregister(fd)

    # -- timers ----------------------------------------------------------

    def call_at(self, deadline: float, callback: Callback) -> Timer:
        """Calls `callback()` once `time.monotonic()` >= deadline."""
        timer = Timer(deadline, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def call_later(self, delay_s: float, callback: Callback) -> Timer:
        return self.call_at(time.monotonic() + delay_s, callback)

    def pending_timers(self) -> int:
        return sum(1 for t in self._timers if not t.cancelled)

    # -- signals ---------------------------------------------------------

    def on_signal(self, signum: int, callback: SignalCallback) -> None:
        """Calls `callback(signum)` from the loop after `signum` arrives."""
        if self._old_wakeup_fd == -2:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
            self.add_reader(self._wakeup_r, self._drain_signals)
        if signum not in self._old_handlers:
            self._old_handlers[signum] = signal.signal(signum, _ignore)
        self._signal_callbacks[signum] = callback

    def _drain_signals(self) -> None:
        while True:
            try:
                data = os.read(self._wakeup_r, 256)
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                callback = self._signal_callbacks.get(signum)
                if callback is not None:
                    callback(signum)

    # -- running ---------------------------------------------------------

    def stop(self) -> None:
        """Makes `run()` return after the current iteration."""
        self._stopped = True

    def run(self) -> None:
        """Runs until `stop()` is called."""
        self._stopped = False
        while not self._stopped:
            self.run_once()

    def run_once(self, max_wait_s: float | None = None) -> None:
        """Waits for one batch of events (or the nearest timer) and runs them."""
        timeout = self._timeout(max_wait_s)
        try:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries epoll_wait
            events = []
        for fd, _mask in events:
            callback = self._readers.get(fd)  # None: an earlier callback removed it
            if callback is not None:
                callback()
        self._run_due_timers()

    def _timeout(self, max_wait_s: float | None) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        timeout: float | None = None
        if self._timers:
            timeout = max(0.0, self._timers[0].deadline - time.monotonic())
        if max_wait_s is not None:
            timeout = max_wait_s if timeout is None else min(timeout, max_wait_s)
        return timeout

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    def close(self) -> None:
        """Restores signal handlers and the previous wakeup fd; closes the pipe."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._old_handlers.clear()
        if self._old_wakeup_fd != -2:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = -2
        self._readers.clear()
        self._epoll.close()
        for fd in (self._wakeup_r, self._wakeup_w):
            try:
                os.close(fd)
            except OSError as e:  # pragma: no cover
                if e.errno != errno.EBADF:
                    raise
        self._wakeup_r = self._wakeup_w = -1
