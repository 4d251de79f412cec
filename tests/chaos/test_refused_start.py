"""A start the broker refuses for a config error is not retried in a hot loop (T-33,
T-35): with restart-timeout 0 the supervisor must not ask again and again at once
(each refusal costs both processes CPU and writes two log lines)."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

BROKEN = """
executable: /bin/sleep
arguments: ["100000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
tcp-ports:
  "@{undeclared}":
    fd: 3
"""
REFUSAL = r"denied StartInstance from supervisor .*undeclared"
MAX_REFUSALS_IN_3S = 10

BUG = (
    "supervisor/lifecycle.py: a StartRefused for a config problem with restart-timeout 0 "
    "goes STARTING -> BACKOFF ('config problem; restart now') -> STARTING at once: about "
    "1000 refused StartInstance a second, 100% CPU in the supervisor and the broker and a "
    "flood of log lines. T-33: an instance whose config fails to load is absent until the "
    "configs change; suggested fix: do not retry a config-error refusal before a Reload/"
    "re-exec, or retry it on a back-off (1 s, doubling, at most 60 s)"
)


@pytest.mark.xfail(strict=True, reason=BUG)
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
