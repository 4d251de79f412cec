"""lithos_switch's install step (2.5 step 3): copy to `.tmp.<SANDBOX>`, rename over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.switch import install


def test_install_replaces_atomically_and_keeps_no_temp(tmp_path: Path) -> None:
    new, target = tmp_path / "new.yaml", tmp_path / "processes" / "sb.yaml"
    target.parent.mkdir()
    target.write_text("old\n")
    new.write_text("new\n")
    new.chmod(0o640)
    inode = target.stat().st_ino
    install(new, target, "sb")
    assert target.read_text() == "new\n"
    assert target.stat().st_ino != inode  # a rename, not a rewrite in place
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(target.parent)) == ["sb.yaml"]


def test_install_failure_leaves_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sb.yaml"
    target.write_text("old\n")
    with pytest.raises(OSError):
        install(tmp_path / "missing.yaml", target, "sb")
    assert target.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["sb.yaml"]
