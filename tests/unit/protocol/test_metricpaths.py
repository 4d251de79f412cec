"""protocol.metricpaths: where the metric files are (X-M1, T-8, T-50)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import parse_master
from protocol.metricpaths import metric_paths, metrics_base, supervisor_environ

MASTER = parse_master(b"runtime-dir: /run/lt\n", "/etc/lithos/master.yaml")


def test_unset_or_empty_is_runtime_dir_metrics() -> None:
    """T-8: without CANTAL_PATH the original forced <runtime-dir>/metrics."""
    assert metrics_base(MASTER, {}, "/") == "/run/lt/metrics"
    assert metrics_base(MASTER, {"CANTAL_PATH": ""}, "/") == "/run/lt/metrics"
    paths = metric_paths(Path("/run/lt"))
    assert {k: str(v) for k, v in paths.items()} == {
        ".meta": "/run/lt/metrics.meta",
        ".values": "/run/lt/metrics.values",
        ".prom": "/run/lt/metrics.prom",
    }


@pytest.mark.parametrize(
    ("value", "meta", "values"),
    [
        ("/run/cantal/lithos", "/run/cantal/lithos.meta", "/run/cantal/lithos.values"),
        # literal: the suffix is appended, never replacing a dotted tail
        ("/run/cantal/lithos.v1", "/run/cantal/lithos.v1.meta", "/run/cantal/lithos.v1.values"),
        ("/run/cantal/", "/run/cantal/.meta", "/run/cantal/.values"),
    ],
)
def test_cantal_path_names_the_cantal_files(value: str, meta: str, values: str) -> None:
    """X-M1: `$CANTAL_PATH.meta` and `.values`; metrics.prom stays in runtime-dir."""
    base = metrics_base(MASTER, {"CANTAL_PATH": value}, "/")
    assert base == value
    paths = metric_paths(MASTER.runtime_dir, base)
    assert (str(paths[".meta"]), str(paths[".values"])) == (meta, values)
    assert str(paths[".prom"]) == "/run/lt/metrics.prom"


def test_a_relative_cantal_path_is_from_the_working_directory() -> None:
    assert metrics_base(MASTER, {"CANTAL_PATH": "var/lithos"}, "/srv") == "/srv/var/lithos"
    assert metrics_base(MASTER, {"CANTAL_PATH": "m"}, "/") == "/m"


def test_exactly_one_process_names_the_files_to_cantal() -> None:
    """The supervisor gets CANTAL_PATH only when the broker's environment has none."""
    assert supervisor_environ({}, "/run/lt/metrics") == {"CANTAL_PATH": "/run/lt/metrics"}
    assert supervisor_environ({"CANTAL_PATH": ""}, "/run/lt/metrics") == {
        "CANTAL_PATH": "/run/lt/metrics"
    }
    assert supervisor_environ({"CANTAL_PATH": "/c/l"}, "/c/l") == {}
