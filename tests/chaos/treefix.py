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
    finally:
        for group in Path("/sys/fs/cgroup").glob(f"*/{env.cgroup_name}"):
            with contextlib.suppress(OSError):
                subs = [p for p in group.rglob("*") if p.is_dir()]
                for sub in sorted(subs, key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()
        _unmount_below(env.root)
        shutil.rmtree(env.root, ignore_errors=True)
