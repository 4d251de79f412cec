"""lithos_clean on a temp tree (inventory 2.7, X-CLEAN-3, X-CLEAN-6): used and unused
images from the process config, used-images-list and the config-log history;
conflicting auto-clean / image-dir-levels leave a dir alone; dry run by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor import clean
from supervisor.cleanhistory import parse_duration, parse_line, select, versions

REPO = Path(__file__).resolve().parents[3]
DAY = 86400.0


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_line(t: float, *images: str) -> str:
    doc = {f"p{n}": {"instances": 1, "image": i, "config": "/c.yaml", "kind": "Daemon"}
           for n, i in enumerate(images)}
    return f"{stamp(t)} {json.dumps(doc)}\n"


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        for d in ("sandboxes", "processes", "log", "images"):
            (root / d).mkdir()
        self.master = root / "master.yaml"
        self.master.write_text(f"config-log-dir: {root / 'log'}\n")

    def sandbox(self, name: str, text: str = "", processes: str | None = None,
                image_dir: Path | None = None) -> None:
        (self.root / "sandboxes" / f"{name}.yaml").write_text(
            f"image-dir: {image_dir or self.images}\n" + text)
        if processes is not None:
            (self.root / "processes" / f"{name}.yaml").write_text(processes)

    def image(self, name: str, age_s: float = 10 * DAY, root: Path | None = None) -> Path:
        path = (root or self.images) / name
        path.mkdir(parents=True)
        (path / "file").write_text("x")
        t = time.time() - age_s
        os.utime(path, (t, t))
        return path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.clean", "-C",
                               str(self.master), *args], cwd=REPO, text=True,
                              capture_output=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def listed(out: str) -> set[str]:
    return {line.strip('"') for line in out.splitlines()}


def test_history_used_unused_and_delete(tree: Tree) -> None:
    now = time.time()
    for name in ("v1", "v2", "v3", "v4", "other"):
        tree.image(name)
    tree.sandbox("web", processes="web: {image: v4, config: /c.yaml}\n")
    # rotated file (older) then the current log (newer)
    (tree.root / "log" / "web.log.1").write_text(
        log_line(now - 30 * DAY, "v1") + log_line(now - 20 * DAY, "v2"))
    (tree.root / "log" / "web.log").write_text(
        log_line(now - 10 * DAY, "v3") + log_line(now - 5 * DAY, "v3")
        + log_line(now - 1 * DAY, "v4"))
    used = tree.run()
    assert used.returncode == 0, used.stderr
    assert listed(used.stdout) == {str(tree.images / v) for v in ("v1", "v2", "v3", "v4")}
    # keep 7 days: v3 was current until a day ago, v2 until 10 days ago
    unused = tree.run("--unused", "-D", "7")
    assert listed(unused.stdout) == {str(tree.images / v) for v in ("other", "v1", "v2")}
    # at least 3 versions
    unused = tree.run("--unused", "-D", "7", "--vmin", "3", "--clean-logs")
    assert listed(unused.stdout) == {str(tree.images / v) for v in ("other", "v1")}
    # at most 2 versions; the rotated log is not needed then
    unused = tree.run("--unused", "--vmax", "2", "--clean-logs")
    assert listed(unused.stdout) == {str(tree.images / v) for v in ("other", "v1", "v2")} | \
        {str(tree.root / "log" / "web.log.1")}
    # nothing was deleted by the dry runs
    assert all((tree.images / v).is_dir() for v in ("v1", "v2", "v3", "v4", "other"))
    deleted = tree.run("--delete-unused", "-v", "-D", "7")
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleting" in deleted.stdout
    assert sorted(p.name for p in tree.images.iterdir()) == ["v3", "v4"]


def test_keep_recent_and_hidden_and_symlinks_are_spared(tree: Tree) -> None:
    tree.image("cur")
    tree.image("old")
    tree.image(".hidden")
    tree.image("backup~")
    (tree.images / "link").symlink_to(tree.images / "old")
    (tree.images / "file").write_text("not an image")
    tree.sandbox("web", "used-images-list: " + str(tree.root / "used.txt") + "\n",
                 processes="web: {image: cur, config: /c.yaml}\n")
    (tree.root / "used.txt").write_text("\n  cur \nbad/name\n")
    out = tree.run("--unused")
    assert listed(out.stdout) == {str(tree.images / "old")}
    assert 'Image name "bad/name"' in out.stderr
    # "old" has an old mtime, but its inode changed (ctime) just now: it is spared
    out = tree.run("--unused", "--keep-recent", "1h")
    assert out.returncode == 0 and out.stdout == ""
    out = tree.run("--unused", "--keep-recent", "0s")
    assert listed(out.stdout) == {str(tree.images / "old")}


def test_conflicting_auto_clean_marks_the_dir_bad_x_clean_6(tree: Tree) -> None:
    tree.image("a")
    tree.image("junk")
    tree.sandbox("one", processes="a: {image: a, config: /c.yaml}\n")
    tree.sandbox("two", "auto-clean: false\n")
    out = tree.run("--delete-unused")
    assert out.returncode == 0
    assert "Conflicting `auto-clean`" in out.stderr
    assert "Can't reliably find out used images" in out.stderr
    assert (tree.images / "junk").is_dir()


def test_conflicting_levels_and_missing_history_mark_dirs_bad(tree: Tree) -> None:
    other = tree.root / "other"
    tree.image("a/b", root=other)
    tree.sandbox("one", "image-dir-levels: 2\nused-images-list: /dev/null\n", image_dir=other)
    tree.sandbox("two", "used-images-list: /dev/null\n", image_dir=other)
    out = tree.run("--unused")
    assert out.stdout == "" and "Conflicting image dir levels" in out.stderr
    tree.master.write_text("config-log-dir: null\n")
    (tree.root / "sandboxes" / "two.yaml").unlink()
    tree.sandbox("one", "image-dir-levels: 2\n", image_dir=other)
    out = tree.run("--unused")
    assert out.stdout == "" and "Neither `config-log-dir` nor `used-images-list`" in out.stderr


def test_broken_line_in_kept_history_marks_the_dir_bad(tree: Tree) -> None:
    now = time.time()
    tree.image("junk")
    tree.sandbox("web", processes="")
    (tree.root / "log" / "web.log").write_text("garbage\n" + log_line(now, "x"))
    out = tree.run("--unused")
    assert out.stdout == "" and "Broken line" in out.stderr


def test_a_bad_sandbox_aborts(tree: Tree) -> None:
    (tree.root / "sandboxes" / "web.yaml").write_text("image-dir-levels: many\n")
    out = tree.run("--used")
    assert out.returncode == 1 and "Error finding out used images" in out.stderr


def test_history_selection_unit() -> None:
    lines = [parse_line(log_line(t, img), 0, n) for n, (t, img) in
             enumerate([(50.0, "c"), (40.0, "c"), (30.0, "b"), (10.0, "a")])]
    vs = versions((line, "") for line in lines)
    assert [v.images for v in vs] == [frozenset({"c"}), frozenset({"b"}), frozenset({"a"})]
    assert (vs[0].first, vs[0].last) == (40.0, 50.0)
    now = 60.0 + 0.0
    assert len(select(vs, now, None, 0, 2)) == 2
    # cutoff at 35: b was current until 40 (kept), a until 30 (dropped)
    kept = select(vs, now, (now - 35.0) / DAY, 0, 1000)
    assert [v.images for v in kept] == [frozenset({"c"}), frozenset({"b"})]
    assert len(select(vs, now, 0.0, 0, 1000)) == 1
    assert len(select(vs, now, 0.0, 3, 1000)) == 3


def test_durations() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("2days 3h") == 2 * 86400 + 3 * 3600
    assert parse_duration("90s") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert clean.debug_path(Path('/a/"b')) == '"/a/\\"b"'
