"""Publishing the metrics: the cantal files and a Prometheus text file.

Owns the supervisor's only writes. The files live in root's directories
(runtime-dir, or CANTAL_PATH's), so the broker creates them and hands them to the
supervisor-user (broker/published.py); the supervisor only opens existing files,
never creates or renames one. Their names are protocol/metricpaths.py's: the
`.meta` and `.values` at the base the broker gives (`$CANTAL_PATH` or
`<runtime-dir>/metrics`; X-M1..X-M3: 8-byte values in host order, padded to 4096,
updated in place so cantal's mmap sees them) and `<runtime-dir>/metrics.prom`
(Prometheus text exposition, for node_exporter's textfile collector). Writes are
skipped when nothing changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from protocol import failpoints
from protocol.metricpaths import metric_paths
from supervisor.metrics import Kind, Sample, cantal_meta, cantal_values, prometheus_text

log = logging.getLogger(__name__)


class MetricsFiles:
    """Writes samples into the pre-created metric files; errors are logged once.

    base: the cantal files' base from the broker (`--metrics-base`); None is
    `<runtime-dir>/metrics`.
    """

    def __init__(self, runtime_dir: Path, base: str | None = None) -> None:
        self.paths = metric_paths(runtime_dir, base)
        self._last: dict[str, bytes] = {}
        self._failed: set[str] = set()
        self._meta = b""
        self._meta_names: tuple[tuple[str, str, Kind], ...] | None = None

    def read_previous(self) -> dict[str, int]:
        """Dotted name -> value from the existing .meta and .values, or {} if unreadable."""
        try:
            meta = self.paths[".meta"].read_text()
            values = self.paths[".values"].read_bytes()
        except (OSError, UnicodeDecodeError):
            return {}
        out: dict[str, int] = {}
        for i, line in enumerate(meta.splitlines()):
            head, _, body = line.partition(": ")
            try:
                d = json.loads(body)
                fmt = "<Q" if head.startswith("counter") else "<q"
                out[f"{d['group']}.{d['metric']}"] = struct.unpack_from(fmt, values, i * 8)[0]
            except (ValueError, KeyError, TypeError, struct.error):
                return {}
        return out

    def publish(self, samples: Sequence[Sample]) -> None:
        # The meta (the names and types) changes only with the config: render it then.
        names = tuple((s.group, s.metric, s.kind) for s in samples)
        if names != self._meta_names:
            self._meta, self._meta_names = cantal_meta(samples), names
        self._write(".meta", self._meta)
        failpoints.hit("supervisor.metrics.during_publish")
        self._write(".values", cantal_values(samples))
        self._write(".prom", prometheus_text(samples).encode())

    def _write(self, suffix: str, data: bytes) -> None:
        if self._last.get(suffix) == data:
            return
        path = self.paths[suffix]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if suffix not in self._failed:
                log.warning("metrics: %s: %s (not published)", path, e.strerror)
                self._failed.add(suffix)
            return
        try:
            if os.fstat(fd).st_size != len(data):
                os.ftruncate(fd, len(data))
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            self._last[suffix] = data
            self._failed.discard(suffix)
        except OSError as e:
            if suffix not in self._failed:
                log.warning("metrics: writing %s: %s", path, e.strerror)
                self._failed.add(suffix)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
