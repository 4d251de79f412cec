"""Where lithos_tree publishes its metrics (X-M1, T-8): the one rule both daemons follow.

Owns the metric files' names. The broker computes the base once at start-up
(`metrics_base`, from the master config and its own environment: broker/startup.py)
and hands it to the supervisor (`--metrics-base`); both build the names with
`metric_paths`, the broker to create and remove the files, the supervisor to write
them. Pure: the working directory is a parameter.

- `CANTAL_PATH` set and non-empty (e.g. by a systemd unit): `$CANTAL_PATH.meta` and
  `$CANTAL_PATH.values`. The value is taken literally, as the original does: the
  suffix is appended to the string (`/run/cantal/lithos.1` gives
  `/run/cantal/lithos.1.values`; a trailing `/` names hidden files in that
  directory). A relative value is resolved against lithos_tree's working
  directory, which is what the original's open() did; lithos_tree never changes
  it, also not across a re-exec, so the files stay where they were. The broker
  logs a warning for it (the supervisor runs elsewhere, so it gets the absolute
  base). The directory is not created (neither did the original).
- Otherwise `<runtime-dir>/metrics.meta` and `<runtime-dir>/metrics.values`.
- `metrics.prom` (ours: Prometheus text for node_exporter's textfile collector) is
  always `<runtime-dir>/metrics.prom`: CANTAL_PATH names cantal's files only, and
  lithos_ps --monitor and lithos_switch --wait wake on its changes there
  (supervisor/statewatch.py).

No self re-exec (the original's T-8): it re-exec'd itself with CANTAL_PATH set
only so that the variable was in its /proc/<pid>/environ, where cantal-agent
finds a process's metric files. Here the supervisor writes the files, and the
broker gives it `CANTAL_PATH=<base>` in its (explicitly built) environment when
the broker's own environment has none, so exactly one lithos process names the
files (`supervisor_environ`). Knots never get it (T-50; knot/spawn.py).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from protocol.config import MasterConfig

CANTAL_ENV = "CANTAL_PATH"
CANTAL_SUFFIXES = (".meta", ".values")
PROM_SUFFIX = ".prom"
SUFFIXES = (*CANTAL_SUFFIXES, PROM_SUFFIX)  # the order the supervisor writes them


def default_base(runtime_dir: Path) -> str:
    """`<runtime-dir>/metrics`: the base when CANTAL_PATH is unset (T-8)."""
    return str(runtime_dir / "metrics")


def cantal_path(environ: Mapping[str, str]) -> str | None:
    """CANTAL_PATH from environ, or None if it is unset or empty."""
    return environ.get(CANTAL_ENV) or None


def metrics_base(master: MasterConfig, environ: Mapping[str, str], cwd: str) -> str:
    """X-M1: the absolute base of the cantal files; see the module doc."""
    value = cantal_path(environ)
    if value is None:
        return default_base(master.runtime_dir)
    if not posixpath.isabs(value):
        return posixpath.join(cwd, value)  # join, not normpath: the string stays literal
    return value


def metric_paths(runtime_dir: Path, base: str | None = None) -> dict[str, Path]:
    """Suffix -> file: `.meta`, `.values` at base (default: `<runtime-dir>/metrics`),
    `.prom` in runtime-dir."""
    cantal = default_base(runtime_dir) if base is None else base
    out = {suffix: Path(cantal + suffix) for suffix in CANTAL_SUFFIXES}
    out[PROM_SUFFIX] = runtime_dir / f"metrics{PROM_SUFFIX}"
    return out


def supervisor_environ(environ: Mapping[str, str], base: str) -> dict[str, str]:
    """What the supervisor's environment gets for cantal: `CANTAL_PATH=<base>` if the
    broker's own environment (environ) has none, else nothing (the broker's names
    the files already; two processes naming them would count them twice)."""
    return {} if cantal_path(environ) is not None else {CANTAL_ENV: base}
