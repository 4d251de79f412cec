"""How the broker's daemons are exec'd: `python3 -S`, our import path, our -X options.

Owns the interpreter part of the command lines of the broker itself (its front,
broker/main.py, execs the daemon) and of the supervisor (broker/daemon.py).
Rules: no `site` in a daemon (a .pth file of site-packages may import anything,
and it would stay imported for the daemon's whole life), so the import path
`site` gave us is handed on in PYTHONPATH; nothing here imports more than os and
sys (the broker's front imports it before the exec).
"""

from __future__ import annotations

import os
import sys

# The directory holding the broker package: `-m broker.main` and `-m supervisor`
# import the same code as ours, installed or not.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def daemon_path() -> str:
    """Our own import path, for a daemon started with -S (no `site`): PYTHONPATH.

    Without `site` a fresh interpreter skips the .pth files of site-packages, which
    may import anything at every start (on some hosts certifi and importlib.resources:
    about 1 MB and 30 ms). It still needs every directory `site` gave us (site-packages,
    a virtualenv's, PYTHONPATH's), so it gets all of ours but the first (our script's
    directory or cwd, unless -P), after the package's own parent directory.
    """
    entries = sys.path if sys.flags.safe_path else sys.path[1:]
    return os.pathsep.join(
        dict.fromkeys(os.path.abspath(p) for p in [PACKAGE_PARENT, *entries] if p)
    )


def x_options() -> list[str]:
    """Our own -X options, for the daemons too: `python3 -X importtime -m broker.main`
    shows what both import (tests/e2e/test_imports.py), -X dev checks both."""
    return [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]
