"""supervisor.metrics_file writes what supervisor.metrics renders, in place."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from supervisor.metrics import Metrics, cantal_meta, cantal_offset
from supervisor.metrics_file import MetricsFiles, metric_paths


def test_publish_writes_in_place_and_only_existing_files(tmp_path: Path) -> None:
    metrics = Metrics([("web", "app")])
    metrics.configure([("web", "app")], sandboxes=1, containers=2)
    files = MetricsFiles(tmp_path)
    files.publish(metrics.samples())
    assert not any(p.exists() for p in metric_paths(tmp_path))  # never creates

    for p in metric_paths(tmp_path):
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
