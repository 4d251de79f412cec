"""broker.daemon.supervisor_path: the supervisor runs `python3 -S` and still imports
everything it needs from wherever the broker found it (site-packages, a venv's,
PYTHONPATH's), without the start-up work of `site` and the .pth files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker.daemon import supervisor_path

REPO = Path(__file__).resolve().parents[3]


def test_a_site_less_interpreter_imports_the_supervisor_with_our_path(tmp_path: Path) -> None:
    probe = ("import sys, supervisor.main, yaml, msgpack; "
             "print('site' in sys.modules, supervisor.main.__file__)")
    # Like spawn_supervisor: -S -m from the package's parent, only our path given.
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": supervisor_path()}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    site_loaded, where = done.stdout.split()
    assert site_loaded == "False"
    assert where.startswith(str(REPO))


def test_the_path_is_absolute_and_has_no_duplicates() -> None:
    entries = supervisor_path().split(os.pathsep)
    assert all(os.path.isabs(p) for p in entries)
    assert len(entries) == len(set(entries))
    # yaml comes from one of them (site-packages or a venv's), as in the broker.
    import yaml

    assert any(yaml.__file__.startswith(p + os.sep) for p in entries)
