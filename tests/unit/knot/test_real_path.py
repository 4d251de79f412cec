"""knot.setup._real_path (check_inside's resolver: the kernel's, via open(O_PATH) and
/proc/self/fd) names what os.path.realpath names, for every layout check_inside meets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from knot import setup


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "image" / "data").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink("data", tmp_path / "image" / "rel")                 # relative, inside
    os.symlink(tmp_path / "outside", tmp_path / "image" / "abs")  # absolute, outside
    os.symlink("rel", tmp_path / "image" / "chain")                # a link to a link
    os.symlink("../..", tmp_path / "image" / "data" / "up")        # out by ..
    os.symlink("gone", tmp_path / "image" / "dangling")            # missing target
    os.symlink("loop", tmp_path / "image" / "loop")                # ELOOP
    os.symlink(tmp_path / "image", tmp_path / "image-link")        # the root itself a link
    return tmp_path


@pytest.mark.parametrize("path", [
    "image", "image/data", "image/rel", "image/abs", "image/chain", "image/data/up",
    "image/dangling", "image/loop", "image/missing/deeper", "image-link/rel", "image//data/",
])
def test_real_path_is_realpath(tree: Path, path: str) -> None:
    full = f"{tree}/{path}"
    assert setup._real_path(full) == os.path.realpath(full)


def test_check_inside_refuses_a_link_out(tree: Path) -> None:
    with pytest.raises(setup.SetupError, match=r"resolves to .*/outside, outside the container"):
        setup.check_inside(str(tree / "image"), "/mnt", "/abs")
    setup.check_inside(str(tree / "image-link"), "/mnt", "/chain")  # inside: no error
