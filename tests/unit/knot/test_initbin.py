"""knot.initbin: init.c compiled on demand into a safe cache dir, or None."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from knot import initbin


def test_no_compiler_in_path_gives_none_and_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    path, why = initbin.build(tmp_path / "cache", path_env=str(empty))
    assert path is None and why.startswith("no C compiler (cc) in PATH ")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unsafe_cache_dir_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    path, why = initbin.build(cache)
    assert path is None and "not writable by group or others" in why and "drwxrwxrwx" in why


def test_unsafe_parent_dir_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    path, why = initbin.build(parent / "cache")
    assert path is None and why.startswith(f"{parent}: must be owned by uid")


def test_built_once_atomically_then_reused(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "cache"
    path, why = initbin.build(cache)
    if path is None:
        pytest.skip(f"no compiler or static libc here: {why}")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755           # created root-owned 0755
    assert path.parent == cache and path.name == initbin.binary_name(initbin.SOURCE.read_bytes())
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert [p.name for p in cache.iterdir()] == [path.name]      # no temporary left
    before = path.stat().st_mtime_ns
    assert initbin.build(cache, path_env="/nonexistent") == (path, "")  # cached: no cc needed
    assert path.stat().st_mtime_ns == before
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert os.access(path, os.X_OK)


def test_binary_name_changes_with_the_source() -> None:
    assert initbin.binary_name(b"a") != initbin.binary_name(b"b")


def test_missing_source_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(initbin, "SOURCE", tmp_path / "init.c")
    path, why = initbin.build(tmp_path / "cache")
    assert path is None and why == f"{tmp_path}/init.c: No such file or directory"
