"""A start the broker refuses for a config error is not retried in a hot loop (T-33,
T-35): with restart-timeout 0 the supervisor must not ask again and again at once
(each refusal costs both processes CPU and writes two log lines)."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# Valid as configs, so the supervisor asks; only the broker's start finds that the
# sandbox's bridge does not exist (the supervisor cannot know).
BROKEN = """
executable: /bin/sleep
arguments: ["100000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
"""
NO_BRIDGE = "bridged-network: {bridge: lt-nosuchbr, network: 10.213.0.0/24}\n"
REFUSAL = r"denied StartInstance from supervisor .*lt-nosuchbr"
MAX_REFUSALS_IN_3S = 10


def test_config_error_refusal_is_not_retried_in_a_hot_loop(chaos_tree) -> None:
    chaos_tree.image("bad.v1", {"bad.yaml": BROKEN})
    chaos_tree.sandbox("bad", NO_BRIDGE, "bad: {image: bad.v1, config: /config/bad.yaml, "
                       "ip-addresses: [10.213.0.2]}\n")
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
