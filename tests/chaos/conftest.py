"""Fixtures of the chaos tests: a lithos tree (tests/e2e's) per test, cleaned up always."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Lithos


@pytest.fixture
def chaos_tree() -> Iterator[Lithos]:
    root = Path(tempfile.mkdtemp(prefix="lt-chaos-", dir="/tmp"))
    root.chmod(0o755)
    try:
        env = Lithos(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield env
    finally:
        env.cleanup()
