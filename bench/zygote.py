"""What-if: knots forked from a process that has already imported the knot.

DESIGN.md weighs keeping a Python knot as pid 1 of every container. An exec'd
interpreter keeps its whole heap private (see BENCHMARKS.md); a knot forked
without exec from a pre-imported parent (a "zygote") would share that parent's
pages copy-on-write and skip the interpreter's start. This contender measures
that: the harness itself is the zygote (it has imported knot.main); the child
does what knot.spawn's child does (unshare, fds at their numbers) and then calls
knot.main.main() instead of exec'ing python. Nothing of the knot's code changes;
it uses knot.spawn's private helpers (_spec_memfd, _place_fds), so it may need
updating when they change. lithos's forked knots (contender `lithos fork`) exec
the native pid 1 after setup; this one stays a Python pid 1.
"""

from __future__ import annotations

import os
import signal

from bench.contenders import LithosKnot
from knot.spec import KnotSpec

_BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


class LithosZygote(LithosKnot):
    """The knot forked (no exec) from the pre-imported harness."""

    name = "lithos zygote"
    native = False  # the what-if as first measured: the forked knot stays pid 1 in Python

    def _spawn(self, spec: KnotSpec) -> int:
        from knot import linux
        from knot import main as knot_main
        from knot.exitcodes import EXIT_SETUP_FAILED
        from knot.spawn import _place_fds, _spec_memfd

        e = self.env
        spec_fd = _spec_memfd(spec)
        fds = {0: e.null, 1: e.errlog, 2: e.errlog, 3: e.ready_w, 4: spec_fd}
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            linux.unshare(linux.CLONE_NEWPID)  # only the next fork lands in it
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        # The harness's own signal plumbing is not the knot's.
                        signal.set_wakeup_fd(-1)
                        for signo in _BLOCKED:
                            signal.signal(signo, signal.SIG_DFL)
                        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS
                                      | linux.CLONE_NEWIPC)
                        _place_fds(fds)
                        os._exit(knot_main.main(["--name", spec.name, "--spec-fd", "4"]))
                    except BaseException:  # noqa: B036 - a forked child must never return
                        os._exit(EXIT_SETUP_FAILED)
            finally:
                linux.setns(own_pidns, linux.CLONE_NEWPID)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(own_pidns)
            os.close(spec_fd)
        return pid
