"""broker.published.prepare_metric_files / remove_metric_files: the files the
supervisor writes, at `$CANTAL_PATH.*` or `<runtime-dir>/metrics.*` (X-M1, X-M7).
A file the broker cannot make or may not hand over is a warning, never a crash."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker import published
from broker.daemon import Account
from broker.startup import metrics_location
from protocol.config import parse_master
from protocol.metricpaths import metric_paths

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def fake_broker(runtime: Path, base: str | None) -> SimpleNamespace:
    account = Account("me", os.getuid(), os.getgid())
    return SimpleNamespace(master=SimpleNamespace(runtime_dir=runtime),
                           options=SimpleNamespace(supervisor_account=account,
                                                   metrics_base=base))  # fmt: skip


def test_cantal_files_at_the_base_then_removed(tmp_path: Path) -> None:
    runtime, cantal = tmp_path / "run", tmp_path / "cantal"
    runtime.mkdir()
    cantal.mkdir()
    b = fake_broker(runtime, str(cantal / "lithos"))
    published.prepare_metric_files(b)  # type: ignore[arg-type]
    assert sorted(p.name for p in cantal.iterdir()) == ["lithos.meta", "lithos.values"]
    assert sorted(p.name for p in runtime.iterdir()) == ["metrics.prom"]
    assert (cantal / "lithos.values").stat().st_mode & 0o777 == 0o644
    (cantal / "lithos.values").write_bytes(b"kept")
    published.prepare_metric_files(b)  # type: ignore[arg-type]  # a re-exec: reused
    assert (cantal / "lithos.values").read_bytes() == b"kept"
    published.remove_metric_files(b)  # type: ignore[arg-type]
    assert list(cantal.iterdir()) == [] and list(runtime.iterdir()) == []


def test_default_is_runtime_dir(tmp_path: Path) -> None:
    published.prepare_metric_files(fake_broker(tmp_path, None))  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.meta",
        "metrics.prom",
        "metrics.values",
    ]


def test_a_missing_directory_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = str(tmp_path / "nowhere" / "lithos")
    with caplog.at_level(logging.WARNING):
        published.prepare_metric_files(fake_broker(tmp_path, base))  # type: ignore[arg-type]
    assert f"{base}.meta: No such file or directory (its directory must exist)" in caplog.text
    assert (tmp_path / "metrics.prom").exists()  # the rest is still made


def test_what_is_not_a_plain_file_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO (would block an open without O_NONBLOCK), a symlink and a hard link at
    our names are replaced by new files; their targets are untouched."""
    os.mkfifo(tmp_path / "m.meta")
    (tmp_path / "elsewhere").write_bytes(b"secret")
    os.link(tmp_path / "elsewhere", tmp_path / "m.values")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.prom").symlink_to(tmp_path / "elsewhere")
    b = fake_broker(tmp_path / "run", str(tmp_path / "m"))
    with caplog.at_level(logging.WARNING):
        published.prepare_metric_files(b)  # type: ignore[arg-type]
    assert "m.meta: not a regular file; replacing it with a new metrics file" in caplog.text
    assert "m.values: a file with 2 hard links; replacing it" in caplog.text
    assert "metrics.prom: a symbolic link; replacing it" in caplog.text
    for path in metric_paths(tmp_path / "run", str(tmp_path / "m")).values():
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size == 0
    assert (tmp_path / "elsewhere").read_bytes() == b"secret"
    assert (tmp_path / "elsewhere").stat().st_uid == os.getuid()


@requires_root
def test_a_file_of_a_former_supervisor_user_is_kept_and_handed_over(tmp_path: Path) -> None:
    """Its counters survive a change of supervisor-user (X-M6)."""
    old = tmp_path / "m.values"
    old.write_bytes(b"counters")
    os.chown(old, 4242, 4242)
    b = fake_broker(tmp_path, str(tmp_path / "m"))
    b.options.supervisor_account = Account("sup", 4343, 4343)
    published.prepare_metric_files(b)  # type: ignore[arg-type]
    assert old.read_bytes() == b"counters"
    assert (old.stat().st_uid, old.stat().st_gid) == (4343, 4343)
    assert (tmp_path / "m.meta").stat().st_uid == 4343


def test_the_base_from_the_environment_a_relative_one_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    master = parse_master(b"runtime-dir: /run/lt\n", "/etc/lithos/master.yaml")
    monkeypatch.delenv("CANTAL_PATH", raising=False)
    assert metrics_location(master) == "/run/lt/metrics"
    monkeypatch.setenv("CANTAL_PATH", "/run/cantal/lithos")
    assert metrics_location(master) == "/run/cantal/lithos"
    assert caplog.text == ""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CANTAL_PATH", "lithos")
    with caplog.at_level(logging.WARNING):
        assert metrics_location(master) == f"{tmp_path}/lithos"
    assert f"CANTAL_PATH='lithos' is a relative path: the metric files are {tmp_path}/lithos" in (
        caplog.text
    )
