"""broker.published.prepare_metric_files / remove_metric_files: the files the
supervisor writes, at `$CANTAL_PATH.*` or `<runtime-dir>/metrics.*` (X-M1, X-M7).
A file the broker cannot make or may not hand over is a warning, never a crash."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker import published
from broker.daemon import Account
from broker.startup import metrics_location
from protocol.config import parse_master

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


def test_what_is_not_a_plain_file_of_ours_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / "m.meta")  # would block an open without O_NONBLOCK
    (tmp_path / "elsewhere").write_bytes(b"secret")
    os.link(tmp_path / "elsewhere", tmp_path / "m.values")
    with caplog.at_level(logging.WARNING):
        published.prepare_metric_files(  # type: ignore[arg-type]
            fake_broker(tmp_path, str(tmp_path / "m"))
        )
    assert "m.meta: No such device or address" in caplog.text  # a FIFO without reader
    assert "m.values: has 2 hard links (metrics will not be published there)" in caplog.text
    assert (tmp_path / "elsewhere").read_bytes() == b"secret"


@requires_root
def test_someone_elses_file_is_not_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "m.values"
    other.write_bytes(b"theirs")
    os.chown(other, 4242, 4242)
    with caplog.at_level(logging.WARNING):
        published.prepare_metric_files(  # type: ignore[arg-type]
            fake_broker(tmp_path, str(tmp_path / "m"))
        )
    assert "m.values: owned by uid 4242, not root or the supervisor-user" in caplog.text
    assert other.stat().st_uid == 4242


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
