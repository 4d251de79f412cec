"""A start the broker refuses for a config error is not retried in a hot loop (T-33,
T-35): with restart-timeout 0 the supervisor must not ask again and again at once
(each refusal costs both processes CPU and writes two log lines)."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# Valid on its own, so the supervisor asks; only the broker's policy refuses it
# (the volume is not in the sandbox's writable-paths).
BROKEN = """
executable: /bin/sleep
arguments: ["100000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
volumes:
  /data: !Persistent {path: /not-mapped}
"""
REFUSAL = r"denied StartInstance from supervisor .*not-mapped"
MAX_REFUSALS_IN_3S = 10


def test_config_error_refusal_is_not_retried_in_a_hot_loop(chaos_tree) -> None:
    chaos_tree.image("bad.v1", {"bad.yaml": BROKEN})
    chaos_tree.sandbox("bad", "", "bad: {image: bad.v1, config: /config/bad.yaml}\n")
    chaos_tree.start()
    mark = chaos_tree.mark()
    chaos_tree.wait_for(REFUSAL, 20.0, mark)
    first = next(i for i, line in enumerate(chaos_tree.log.lines[mark:], mark)
                 if "denied StartInstance" in line)  # fmt: skip
    # At most MAX_REFUSALS_IN_3S more refusals in the 3 s after the first one.
    deadline = time.monotonic() + 3.0
    seen = 0
    while seen <= MAX_REFUSALS_IN_3S and (left := deadline - time.monotonic()) > 0:
        try:
            chaos_tree.wait_for(REFUSAL, left, first + 1)
        except AssertionError:
            break  # quiet until the deadline: no hot loop
        first = next(i for i, line in enumerate(chaos_tree.log.lines[first + 1:], first + 1)
                     if "denied StartInstance" in line)  # fmt: skip
        seen += 1
    assert seen <= MAX_REFUSALS_IN_3S, f"more than {MAX_REFUSALS_IN_3S} refusals in 3 s"
