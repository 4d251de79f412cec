"""Fixtures of the logging tests: a private logger per test, detached afterwards."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pytest

_serial = itertools.count()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A fresh logger that does not propagate to root; its handlers are closed after."""
    lg = logging.getLogger(f"lithos_test.logs{next(_serial)}")
    lg.propagate = False
    yield lg
    for handler in list(lg.handlers):
        lg.removeHandler(handler)
        handler.close()
