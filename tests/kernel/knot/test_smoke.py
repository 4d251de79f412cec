from __future__ import annotations

import os

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
pytestmark = requires_root


def test_service_runs_in_container(env):
    code, knot = env.run(env.spec("echo pid=$$; cat /proc/self/mountinfo; exit 7"))
    print(knot.log_text(), knot.stderr_text())
    assert code == 2
    assert "pid=2" in knot.log_text()
