"""What lithos_tree leaves on disk for others to read: metric files and the config log.

Owns <runtime-dir>/metrics.{meta,values,prom} (made here, root's directory,
chowned to supervisor-user, who only writes them in place; removed on a clean
exit, X-M1, X-M6, X-M7) and the lines appended to config-log-dir (T-27: one per
sandbox, at start and at each reload). Rules: a failure here is logged and never
stops the broker; nothing here reads what others wrote.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

from protocol.config import ConfigError, process_config_log_json
from protocol.configlog import append_config_log
from protocol.errors import Denied

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)

METRIC_SUFFIXES = (".meta", ".values", ".prom")  # supervisor/metrics_file.py writes them


def prepare_metric_files(b: Broker) -> None:
    """Creates <runtime-dir>/metrics.{meta,values,prom} for the supervisor to write.

    The supervisor may not create files in runtime-dir (root's); it only
    writes these in place (supervisor/metrics_file.py), so cantal's mmap and
    the counters of a previous supervisor survive (X-M1, X-M6).
    """
    account = b.options.supervisor_account
    for suffix in METRIC_SUFFIXES:
        path = b.master.runtime_dir / f"metrics{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                os.fchown(fd, account.uid, account.gid)
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("%s: %s (metrics will not be published there)", path, e.strerror)


def remove_metric_files(b: Broker) -> None:
    """X-M7: a clean exit removes the metric files."""
    for suffix in METRIC_SUFFIXES:
        with contextlib.suppress(OSError):
            (b.master.runtime_dir / f"metrics{suffix}").unlink()


def log_configs(b: Broker) -> None:
    """T-27: one line per sandbox with its process config, at start and reload."""
    if b.master.config_log_dir is None:
        return
    now = datetime.datetime.now(datetime.UTC)
    try:
        names = b.configs.sandbox_names()
    except ConfigError as e:
        log.error("config log: %s", e)
        return
    for name in names:
        try:
            processes = b.configs.processes(b.configs.sandbox(name))
        except Denied:
            continue  # reported by the supervisor; nothing good to log
        error = append_config_log(b.master.config_log_dir, name,
                                  process_config_log_json(processes), now)  # fmt: skip
        if error is not None:
            log.error("%s", error)
