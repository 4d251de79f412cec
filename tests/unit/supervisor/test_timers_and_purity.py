"""The timer heap, and the rule that the supervisor's decision modules stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from supervisor.timers import TimerHeap

PURE = ["events", "lifecycle", "metrics", "plan", "timers", "vocabulary"]
BANNED = {"os", "socket", "time", "subprocess", "select", "selectors", "signal.signal"}


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    path = Path(__file__).parents[3] / "supervisor" / f"{module}.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & BANNED, f"supervisor/{module}.py imports {imported & BANNED}"
    assert len(path.read_text().splitlines()) <= 400


def test_pop_due_in_deadline_order_inclusive() -> None:
    h: TimerHeap[str] = TimerHeap()
    assert h.next_deadline() is None and h.timeout_s(0.0) is None
    h.push(5.0, "b")
    h.push(1.0, "a")
    h.push(5.0, "c")
    assert h.next_deadline() == 1.0 and h.timeout_s(0.5) == 0.5 and h.timeout_s(9.0) == 0.0
    assert h.pop_due(0.99) == []
    assert h.pop_due(5.0) == ["a", "b", "c"]  # due when deadline <= now; ties in push order
    assert len(h) == 0


def test_identical_entries_are_not_duplicated() -> None:
    h: TimerHeap[str] = TimerHeap()
    h.push(2.0, "web/django.0")
    h.push(2.0, "web/django.0")
    h.push(3.0, "web/django.0")
    assert len(h) == 2
    assert h.pop_due(10.0) == ["web/django.0", "web/django.0"]
    h.push(2.0, "web/django.0")  # may be pushed again once popped
    assert len(h) == 1


def test_keys_need_not_be_comparable() -> None:
    h: TimerHeap[frozenset[int]] = TimerHeap()
    h.push(1.0, frozenset({1}))
    h.push(1.0, frozenset({2}))
    assert h.pop_due(1.0) == [frozenset({1}), frozenset({2})]
