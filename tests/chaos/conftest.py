"""Fixtures of the chaos tests: a lithos tree (tests/e2e's) per test, cleaned up always.

Also the `long` mark: a test marked long runs only when selected with `-m long`
(the 200-kill metric storm; CI runs its shorter sibling).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.treefix import destroy, make_tree
from tests.e2e.conftest import Lithos


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: minutes-long chaos runs; select with -m long")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "long" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="a long chaos run: select it with -m long")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


@pytest.fixture
def chaos_tree() -> Iterator[Lithos]:
    env = make_tree("chaos")
    try:
        yield env
    finally:
        destroy(env)
