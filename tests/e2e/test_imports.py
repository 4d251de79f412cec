"""What the broker and the supervisor keep imported (issue #10: broker + supervisor
memory). Each module stays in a daemon's memory for its whole life, so what a
tree does not use must not be imported: pyroute2 (about 13 MB, 280 modules) only
for bridged sandboxes, OpenSSL's libcrypto (hashlib) never, and no start-up
helpers (argparse, site's .pth files) in the supervisor.

The tree runs under `python3 -X importtime`, which the broker hands on to the
supervisor (broker/daemon.py x_options): every import of either process is a line
of the log, the broker's on its stderr as they are, the supervisor's relayed by
the broker (broker/logrelay.py) inside one of its own log lines. A host-network
sandbox with two instances is used as usual: both run, one is killed and
restarted, the status is read; then it is stopped, and nothing either process
imported until its exit may be on the list. Sizes are the bench's business
(BENCHMARKS.md, "Broker and supervisor memory"), not this test's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
"""
# -X importtime's line: "import time: <self us> | <cumulative us> | <indent><module>"
IMPORT_RE = re.compile(r"import time:\s+\d+ \|\s+\d+ \| +(\S+)$")
NEVER_IN_EITHER = (
    "pyroute2",  # broker/bridge.py, imported by the first bridged start only
    "asyncio",  # pyroute2's
    "_hashlib",  # hashlib: OpenSSL's libcrypto mapped (protocol/digest.py instead)
    "nacl",  # secrets only (protocol/secrets.py imports it where it decrypts)
    "cryptography",
    "ast",  # inspect's, which dataclasses imports for dataclasses without a docstring
    "dis",  # (protocol/lazy.py defers inspect; tests/unit/protocol/test_lazy.py)
    "difflib",  # "did you mean" is protocol/config/reader.py closest(): a late import fails
    "platform",
    "typing",  # only type checkers need it (protocol/hints.py)
    "linecache",  # traceback's, deferred: protocol/logs.py exception_text formats
    "tokenize",
    "textwrap",
)
NEVER_IN_BROKER = (  # its front parses with argparse, then execs python3 -S (broker/main.py)
    "site",
    "argparse",
    "gettext",
    "knot.main",  # knot/spawn.py: imported for a forked knot only
    "knot.service",
    "knot.caps",
)
NEVER_IN_SUPERVISOR = (
    "argparse",  # supervisor/main.py parses the broker's five options by hand
    "site",  # it runs python3 -S (broker/pyexec.py)
    "subprocess",
    "platform",
    "ctypes",  # image reads walk the path (protocol/config/image.py)
)


def start_with_importtime(lithos) -> None:  # type: ignore[no-untyped-def]
    """lithos.start(), the interpreter run with -X importtime."""
    tail = sys.modules[type(lithos).__module__].LogTail
    r, w = os.pipe()
    lithos.proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "broker.main", "-C", str(lithos.master),
         "--log-stderr", "--log-level", "debug"],
        cwd=lithos.root.parent, stdout=w, stderr=w, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)  # fmt: skip
    os.close(w)
    lithos.log = tail(r)
    lithos.wait_for(r"supervisor ready:")


def imported(lines: list[str]) -> tuple[set[str], set[str]]:
    """(the broker's modules, the supervisor's) from the tree's output."""
    broker: set[str] = set()
    supervisor: set[str] = set()
    for line in lines:
        if line.startswith("import time: self"):  # a new image: the front's exec
            broker.clear()
        match = IMPORT_RE.search(line)
        if match:  # the supervisor's lines come relayed: after the broker's log prefix
            (broker if line.startswith("import time:") else supervisor).add(match[1])
    return broker, supervisor


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names or m in names)


def test_an_unused_feature_is_not_in_the_daemons_memory(lithos) -> None:
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", "", "app: {image: app.v1, config: /config/app.yaml, instances: 2}\n")
    start_with_importtime(lithos)
    for i in range(2):
        lithos.wait_stdio("app", rf"^up app/app\.{i}$")
    mark = lithos.mark()
    os.kill(lithos.service_pid(lithos.running()["app/app.0"]), signal.SIGKILL)
    lithos.wait_for(r"app/app\.0: RUNNING -> BACKOFF", start=mark)
    lithos.wait_for(r"app/app\.0: STARTING -> RUNNING", start=mark)
    assert sorted(lithos.running()) == ["app/app.0", "app/app.1"]
    assert lithos.stop() == 0
    broker, supervisor = imported(lithos.lines_since(0))
    # The mechanism works: both processes' imports are there.
    assert "broker.server" in broker
    assert "supervisor.main" in supervisor
    assert loaded(broker, NEVER_IN_EITHER + NEVER_IN_BROKER) == []
    assert loaded(supervisor, NEVER_IN_EITHER + NEVER_IN_SUPERVISOR) == []

