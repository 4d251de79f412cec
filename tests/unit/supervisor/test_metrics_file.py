"""supervisor.metrics_file writes what supervisor.metrics renders, in place."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from protocol.metricpaths import metric_paths
from supervisor.metrics import Metrics, cantal_meta, cantal_offset
from supervisor.metrics_file import MetricsFiles


def test_publish_writes_in_place_and_only_existing_files(tmp_path: Path) -> None:
    metrics = Metrics([("web", "app")])
    metrics.configure([("web", "app")], sandboxes=1, containers=2)
    files = MetricsFiles(tmp_path)
    files.publish(metrics.samples())
    assert not any(p.exists() for p in metric_paths(tmp_path).values())  # never creates

    for p in metric_paths(tmp_path).values():
        p.touch()
    inode = os.stat(tmp_path / "metrics.values").st_ino
    samples = metrics.samples()
    files.publish(samples)
    values = (tmp_path / "metrics.values").read_bytes()
    assert len(values) % 4096 == 0
    offset = cantal_offset(samples, "master.containers")
    assert struct.unpack_from("=q", values, offset)[0] == 2
    assert (tmp_path / "metrics.meta").read_bytes() == cantal_meta(samples)
    assert b"master" in (tmp_path / "metrics.prom").read_bytes()
    assert os.stat(tmp_path / "metrics.values").st_ino == inode  # updated in place


def test_the_cantal_files_at_the_brokers_base_and_prom_in_runtime_dir(tmp_path: Path) -> None:
    """X-M1: with CANTAL_PATH (the broker's --metrics-base), .meta and .values are
    `$CANTAL_PATH.meta`/`.values`; metrics.prom stays in runtime-dir."""
    runtime, cantal = tmp_path / "run", tmp_path / "cantal"
    runtime.mkdir()
    cantal.mkdir()
    base = str(cantal / "lithos.v1")
    for p in metric_paths(runtime, base).values():
        p.touch()
    metrics = Metrics([("web", "app")])
    metrics.configure([("web", "app")], sandboxes=1, containers=2)
    samples = metrics.samples()
    MetricsFiles(runtime, base).publish(samples)
    assert (cantal / "lithos.v1.meta").read_bytes() == cantal_meta(samples)
    assert len((cantal / "lithos.v1.values").read_bytes()) == 4096
    assert b"master" in (runtime / "metrics.prom").read_bytes()
    assert sorted(p.name for p in runtime.iterdir()) == ["metrics.prom"]
    assert MetricsFiles(runtime, base).read_previous()["master.containers"] == 2
