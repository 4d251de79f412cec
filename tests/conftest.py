"""Fixtures shared by every test suite.

`requires_root` marks tests that need real kernel features; they are skipped
(not faked) when the suite is not run as root. CI runs as root. Tests marked with
one of OPT_IN (minutes-long runs; the markers are declared in pyproject.toml) are
skipped unless selected with `-m <marker>`.
"""

from __future__ import annotations

import os

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
OPT_IN = {"fuzz": "long fuzz run", "long": "a long chaos run"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = config.getoption("markexpr", "") or ""
    for marker, what in OPT_IN.items():
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=f"{what}: select it with -m {marker}")
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


def open_fds() -> set[int]:
    """The fds of this process right now (excluding the one listdir uses)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak():
    """Fails the test if it leaves an fd open that it did not find."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # listdir's own fd is closed by now; anything left is a leak.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        os.readlink(f"/proc/self/fd/{fd}") for fd in sorted(leaked)
    )


@pytest.fixture(scope="session", autouse=True)
def _native_init_cache(tmp_path_factory):  # type: ignore[no-untyped-def]
    """knot.initbin builds the native pid 1 into a temp dir, not /var/lib/lithos/init."""
    old = os.environ.get("LITHOS_INIT_CACHE")
    os.environ["LITHOS_INIT_CACHE"] = str(tmp_path_factory.mktemp("init-cache"))
    yield
    if old is None:
        os.environ.pop("LITHOS_INIT_CACHE", None)
    else:
        os.environ["LITHOS_INIT_CACHE"] = old
