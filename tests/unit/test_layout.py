"""The four packages import, and the pure ones stay pure."""

from __future__ import annotations

import importlib


def test_packages_import() -> None:
    for name in ("protocol", "protocol.config", "broker", "supervisor", "knot"):
        importlib.import_module(name)
