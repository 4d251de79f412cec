"""supervisor.statewatch: the CLIs wake when the tree writes in its runtime dir."""

from __future__ import annotations

from pathlib import Path

from supervisor.statewatch import StateWatch


def test_wakes_on_what_the_tree_writes_and_drains(tmp_path: Path) -> None:
    (tmp_path / "children").mkdir()
    values = tmp_path / "metrics.values"
    values.write_bytes(b"\0" * 8)
    with StateWatch(tmp_path) as watch:
        assert watch.watched == [tmp_path, tmp_path / "children"]
        assert watch.wait(0) is False  # nothing changed yet
        with values.open("r+b") as f:  # the supervisor updates the values in place
            f.write(b"\1")
        assert watch.wait(30) is True
        assert watch.wait(0) is False  # drained
        (tmp_path / "children" / "x.json").write_text("{}")  # a knot started
        assert watch.wait(30) is True
        (tmp_path / "children" / "x.json").unlink()  # ... and exited
        assert watch.wait(30) is True
    assert watch.fd == -1


def test_a_source_that_cannot_be_watched_is_a_plain_timeout(tmp_path: Path) -> None:
    with StateWatch(tmp_path / "absent") as watch:
        assert watch.watched == []
        assert watch.wait(0.01) is False
