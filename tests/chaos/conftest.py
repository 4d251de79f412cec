"""Fixtures of the chaos tests: a lithos tree (tests/e2e's) per test, cleaned up always.

The `long` mark (tests/conftest.py: run only with `-m long`) is the 200-kill
metric storm; CI runs its shorter sibling.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.treefix import destroy, make_tree
from tests.e2e.conftest import Lithos


@pytest.fixture
def chaos_tree() -> Iterator[Lithos]:
    env = make_tree("chaos")
    try:
        yield env
    finally:
        destroy(env)
