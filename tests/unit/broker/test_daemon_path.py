"""broker.pyexec.daemon_path: the broker's daemon and the supervisor run `python3 -S`
and still import everything they need from wherever the front found it
(site-packages, a venv's, PYTHONPATH's), without the start-up work of `site` and
the .pth files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker.pyexec import daemon_path

REPO = Path(__file__).resolve().parents[3]


def test_a_site_less_interpreter_imports_the_supervisor_with_our_path(tmp_path: Path) -> None:
    probe = ("import sys, supervisor.main, yaml, msgpack; "
             "print('site' in sys.modules, supervisor.main.__file__)")
    # As the broker's daemon: -S -P from anywhere, only our path given.
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": daemon_path()}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    site_loaded, where = done.stdout.split()
    assert site_loaded == "False"
    assert where.startswith(str(REPO))


def test_the_path_is_absolute_and_has_no_duplicates() -> None:
    entries = daemon_path().split(os.pathsep)
    assert all(os.path.isabs(p) for p in entries)
    assert len(entries) == len(set(entries))
    # yaml comes from one of them (site-packages or a venv's), as in the broker.
    import yaml

    assert any(yaml.__file__.startswith(p + os.sep) for p in entries)
