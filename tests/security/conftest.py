"""Fixtures of the security tests: a lithos tree (tests/e2e's) per test, cleaned up always."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.treefix import destroy, make_tree
from tests.e2e.conftest import Lithos


@pytest.fixture
def sec_tree() -> Iterator[Lithos]:
    env = make_tree("sec")
    try:
        yield env
    finally:
        destroy(env)
