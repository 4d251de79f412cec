"""lithos_switch --wait and lithos_ps --monitor wake on the tree's changes
(supervisor.statewatch), not on a clock: with their clock periods made endless,
they still see a change (E-33, E-34)."""

from __future__ import annotations

import io
import os
import signal
import threading
from contextlib import redirect_stderr, redirect_stdout

import pytest

from supervisor import ps, statewatch, switch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

APP = """
executable: /bin/sh
arguments: ["-c", "echo ready $LITHOS_NAME; exec sleep 1000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
"""
ENDLESS = 10_000.0


def start(lithos, instances: int) -> None:
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.sandbox("w", processes=(
        f"a: {{image: app.v1, config: /config/app.yaml, instances: {instances}}}\n"))
    lithos.start()
    for i in range(instances):
        lithos.wait_stdio("w", rf"ready w/a\.{i}$")


def test_switch_wait_is_woken_by_the_tree_e33(lithos, monkeypatch) -> None:
    start(lithos, 1)
    monkeypatch.setattr(switch, "RECHECK_S", ENDLESS)  # only a change can wake it
    woken: list[bool] = []
    real_wait = statewatch.StateWatch.wait

    def wait(self: statewatch.StateWatch, timeout_s: float) -> bool:
        woken.append(real_wait(self, timeout_s))
        return woken[-1]

    monkeypatch.setattr(statewatch.StateWatch, "wait", wait)
    new = lithos.root / "new.yaml"
    new.write_text("a: {image: app.v1, config: /config/app.yaml, instances: 3}\n")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = switch.main(["-C", str(lithos.master), "--wait", "--timeout", "120", "w",
                            str(new)])
    assert code == 0, err.getvalue()
    assert sorted(lithos.running()) == ["w/a.0", "w/a.1", "w/a.2"]
    assert woken and all(woken), woken  # each wait ended on a change, none on its timeout


def test_ps_monitor_redraws_when_an_instance_dies_e34(lithos, monkeypatch) -> None:
    start(lithos, 1)
    knot = lithos.running()["w/a.0"]
    service = lithos.service_pid(knot)
    monkeypatch.setattr(ps, "MONITOR_PERIOD_S", ENDLESS)  # no screen but on a change
    ready = threading.Event()

    class Watch(statewatch.StateWatch):
        def wait(self, timeout_s: float) -> bool:
            ready.set()  # the watch is made: a change from now on is seen
            return super().wait(timeout_s)

    monkeypatch.setattr(ps, "StateWatch", Watch)
    screens = ps.monitor(lithos.runtime, str(lithos.master))
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(next(screens)), daemon=True)
    thread.start()
    assert ready.wait(30)
    os.kill(service, signal.SIGKILL)  # the knot exits; the broker restarts the instance
    thread.join(120)
    assert got and "w/a.0" in got[0], got
    screens.close()
