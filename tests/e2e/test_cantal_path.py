"""CANTAL_PATH end to end (X-M1, T-8, T-50): a systemd unit that sets CANTAL_PATH
for cantal-agent finds lithos_tree's metrics at `$CANTAL_PATH.values`/`.meta`, also
after a re-exec; no knot or service sees the variable; without it the files are
`<runtime-dir>/metrics.*` and the supervisor's environment names them for
cantal-agent (what the original's self re-exec did)."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from supervisor.statewatch import StateWatch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

APP = """
executable: /bin/sh
arguments: [-c, 'echo "up $LITHOS_NAME"; echo "cantal=[${CANTAL_PATH-unset}]"; exec sleep 1000']
user-id: 1000
group-id: 1000
restart-timeout: 0
"""


def read_metrics(base: str) -> dict[str, int]:
    """X-M2, X-M3: dotted name -> value, parsed from `base.meta` and `base.values`."""
    meta = Path(base + ".meta").read_text().splitlines()
    values = Path(base + ".values").read_bytes()
    assert len(values) % 4096 == 0
    out = {}
    for i, line in enumerate(meta):
        head, _, body = line.partition(": ")
        d = json.loads(body)
        fmt = "<Q" if head.startswith("counter") else "<q"
        out[f"{d['group']}.{d['metric']}"] = struct.unpack_from(fmt, values, i * 8)[0]
    return out


def wait_metrics(base: str, want: dict[str, int], timeout_s: float = 20.0) -> dict[str, int]:
    """The metrics once they include `want` (inotify on the directory, no polling):
    the supervisor publishes just after the event a test waits for."""
    deadline = time.monotonic() + timeout_s
    with StateWatch(Path(base).parent) as watch:
        while True:
            try:
                got = read_metrics(base)
            except (OSError, ValueError, AssertionError, struct.error):
                got = {}
            if all(got.get(k) == v for k, v in want.items()):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{base}: metrics {got} do not include {want}")
            watch.wait(left)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_metrics_at_cantal_path_and_not_passed_on(lithos) -> None:
    cantal = lithos.root / "cantal"
    cantal.mkdir()
    base = str(cantal / "lithos.main")  # the suffix is appended, not replacing ".main"
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("app", "", "app: {image: app.v1, config: /config/app.yaml}\n")
    lithos.start(env={"CANTAL_PATH": base})
    lithos.wait_stdio("app", r"^up app/app\.0$")
    lithos.wait_stdio("app", r"^cantal=\[unset\]$")  # T-50: the service has none

    # The files are there, with the manual's metrics, and not in runtime-dir.
    assert sorted(p.name for p in cantal.iterdir()) == ["lithos.main.meta", "lithos.main.values"]
    first = wait_metrics(base, {"containers.running": 1})
    assert first["master.containers"] == 1 and first["master.sandboxes"] == 1
    assert first["processes.app.app.started"] == 1 and first["master.restarts"] == 1
    assert not (lithos.runtime / "metrics.values").exists()
    assert not (lithos.runtime / "metrics.meta").exists()
    assert "lithos_containers_running 1" in (lithos.runtime / "metrics.prom").read_text()

    # Only lithos_tree names the files: not its knot, not the service, not the
    # supervisor (the broker's own environment already does).
    ((_, knot),) = lithos.running().items()
    assert environ_of(lithos.pid)["CANTAL_PATH"] == base
    for pid in (knot, lithos.service_pid(knot), lithos.supervisor_pid()):
        assert "CANTAL_PATH" not in environ_of(pid), pid

    # A re-exec keeps CANTAL_PATH in our environment: the same files, counters kept.
    mark = lithos.mark()
    lithos.proc.send_signal(signal.SIGQUIT)
    lithos.wait_for(r"supervisor ready:", start=mark)
    again = wait_metrics(base, {"master.restarts": 2})
    assert again["processes.app.app.started"] == 1  # adopted, not restarted
    assert not (lithos.runtime / "metrics.values").exists()

    assert lithos.stop() == 0
    assert list(cantal.iterdir()) == []  # X-M7: a clean exit removes them


def test_without_cantal_path_the_supervisor_names_the_runtime_files(
    lithos, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T-8 without a self re-exec: the writer's environment names the files."""
    monkeypatch.delenv("CANTAL_PATH", raising=False)
    lithos.start()
    base = str(lithos.runtime / "metrics")
    wait_metrics(base, {"master.restarts": 1})
    assert environ_of(lithos.supervisor_pid())["CANTAL_PATH"] == base
    assert "CANTAL_PATH" not in environ_of(lithos.pid)
    assert lithos.stop() == 0


def test_a_missing_cantal_directory_is_a_warning_not_a_crash(lithos) -> None:
    base = str(lithos.root / "nowhere" / "lithos")
    lithos.start(env={"CANTAL_PATH": base})
    lithos.wait_for(rf"{base}\.values: No such file or directory \(its directory must exist\)")
    assert lithos.proc.poll() is None
    assert (lithos.runtime / "metrics.prom").exists()
    assert lithos.stop() == 0
