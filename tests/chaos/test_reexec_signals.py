"""Signals that arrive while lithos_tree re-executes itself (T-1, E-17): a second
SIGQUIT (or SIGHUP, SIGUSR1/2) sent while the new image is still starting must not
kill lithos_tree; it is one more re-exec (or nothing), and the containers run on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.security.tree import start_sleeper

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")



@pytest.mark.parametrize("second", [signal.SIGQUIT, signal.SIGHUP])
def test_signals_during_reexec_do_not_kill_lithos_tree(chaos_tree, second) -> None:
    _, knot, _ = start_sleeper(chaos_tree)
    broker, proc = chaos_tree.pid, chaos_tree.proc
    assert chaos_tree.log is not None and proc is not None
    lines = chaos_tree.log.lines
    mark = chaos_tree.mark()
    os.kill(broker, signal.SIGQUIT)
    chaos_tree.wait_for(r"re-executing lithos_tree", 20.0, mark)
    # A stream of signals, so one lands between exec and the new image's handlers;
    # it ends after 5 more re-execs (or when lithos_tree dies).
    deadline = time.monotonic() + 30.0
    while proc.poll() is None and time.monotonic() < deadline:
        if sum("re-executing lithos_tree" in line for line in lines[mark:]) >= 6:
            break
        os.kill(broker, second)
    assert proc.poll() is None, f"lithos_tree died (exit status {proc.returncode})"
    chaos_tree.wait_for(r"supervisor ready:|^<EOF>$", 30.0, chaos_tree.mark() - 1)
    assert proc.poll() is None, f"lithos_tree died (exit status {proc.returncode})"
    assert chaos_tree.running()["sec/sleep.0"] == knot
