"""A tests/e2e Lithos tree for the chaos and security tests, with its own cgroup name.

Owns: naming (the tree's cgroup-name says which suite made it: `lt-chaos-<tag>.slice`,
`lt-sec-<tag>.slice`, so a leftover names its maker) and a last sweep after the e2e
clean-up: the top `<cgroup-name>` directory of every hierarchy, which lithos_tree keeps
after SIGTERM (like Lithos), is removed, with the empty groups below it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from tests.e2e.conftest import Lithos, _cmdline_has, _unmount_below, _wait_gone


def make_tree(prefix: str) -> Lithos:
    root = Path(tempfile.mkdtemp(prefix=f"lt-{prefix}-", dir="/tmp"))
    root.chmod(0o755)
    try:
        env = Lithos(root)
        name = f"lt-{prefix}-{env.tag}.slice"
        env.master.write_text(env.master.read_text().replace(env.cgroup_name, name))
        env.cgroup_name = name
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return env


def destroy(env: Lithos) -> None:
    """Lithos.cleanup's steps, with the cgroup sweep limited to this tree's groups.

    (Lithos.cleanup's rglob over all of /sys/fs/cgroup raises FileNotFoundError when
    another tree removes a group meanwhile, and then skips the rest of its clean-up.)
    Every process left in this tree's cgroups is this test's (a knot orphaned by a
    dead lithos_tree, its service): killed and waited for by pid.
    """
    knots = env.recorded_pids()
    try:
        if env.proc is not None and env.proc.poll() is None:
            env.stop()
            if env.proc.poll() is None:
                env.proc.kill()
                env.proc.wait()
        for pid in knots:  # only pids this tree's broker recorded as its knots
            with contextlib.suppress(ProcessLookupError):
                if _cmdline_has(pid, b"knot"):
                    os.kill(pid, signal.SIGKILL)
        for pid in knots:
            _wait_gone(pid)
        for pid in _cgroup_pids(env.cgroup_name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
    finally:
        # A task that has exited still pins its cgroup until its parent (here, outside
        # the test: init) reaps it, and the kernel says nothing when that happens: this
        # is the one bounded retry of the suite, in clean-up only.
        for _ in range(100):
            if not _sweep(env.cgroup_name):
                break
            time.sleep(0.02)
        _unmount_below(env.root)
        shutil.rmtree(env.root, ignore_errors=True)


def _groups(name: str) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/{name}"))


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for group in _groups(name):
        with contextlib.suppress(OSError):
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in procs.read_text().split())
    return pids


def _sweep(name: str) -> bool:
    """Removes this tree's groups, deepest first; True when some remain."""
    for group in _groups(name):
        with contextlib.suppress(OSError):
            subs = [p for p in group.rglob("*") if p.is_dir()]
            for sub in sorted(subs, key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()
    return bool(_groups(name))
