"""protocol.loop: readers, timers and signals wake the loop; nothing polls."""

from __future__ import annotations

import os
import signal
import time

import pytest

from protocol.loop import Loop


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def test_timers_run_in_deadline_order(loop: Loop) -> None:
    seen: list[str] = []
    now = time.monotonic()
    loop.call_at(now + 0.002, lambda: seen.append("b"))
    loop.call_at(now, lambda: seen.append("a"))
    cancelled = loop.call_at(now + 0.001, lambda: seen.append("x"))
    cancelled.cancel()
    loop.call_at(now + 0.003, loop.stop)
    loop.run()
    assert seen == ["a", "b"]
    assert loop.pending_timers() == 0


def test_reader_callback(loop: Loop) -> None:
    r, w = os.pipe()
    got: list[bytes] = []

    def on_read() -> None:
        got.append(os.read(r, 10))
        loop.remove_reader(r)
        loop.stop()

    loop.add_reader(r, on_read)
    os.write(w, b"hi")
    loop.run()
    os.close(r)
    os.close(w)
    assert got == [b"hi"]


def test_signal_reaches_callback_and_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    loop = Loop()
    got: list[int] = []
    loop.on_signal(signal.SIGUSR1, lambda s: (got.append(s), loop.stop()))
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.run()
    loop.close()
    assert got == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == before


def test_idle_loop_blocks_until_deadline(loop: Loop) -> None:
    # With no fds and no timers, run_once waits the whole max_wait_s.
    start = time.monotonic()
    loop.run_once(max_wait_s=0.05)
    assert time.monotonic() - start >= 0.049


def test_a_reader_removed_by_an_earlier_callback_of_the_batch_is_not_called(loop: Loop) -> None:
    pipes = [os.pipe() for _ in range(2)]
    called: list[int] = []

    def on_read(i: int) -> None:
        called.append(i)
        for r, _ in pipes:  # whichever runs first removes both
            loop.remove_reader(r)

    for i, (r, w) in enumerate(pipes):
        loop.add_reader(r, lambda i=i: on_read(i))
        os.write(w, b"x")
    loop.run_once(max_wait_s=5)
    assert len(called) == 1
    for fds in pipes:
        for fd in fds:
            os.close(fd)


def test_readers_are_watched_once_and_removing_is_forgiving(loop: Loop) -> None:
    r, w = os.pipe()
    loop.add_reader(r, lambda: None)
    with pytest.raises(KeyError):
        loop.add_reader(r, lambda: None)
    os.close(r)  # closed before removal: the kernel already dropped it
    loop.remove_reader(r)
    loop.remove_reader(r)  # not watched any more
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, lambda: None)  # not an open fd
