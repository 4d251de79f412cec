"""What lithos_tree leaves on disk for others to read: metric files and the config log.

Owns the metric files, `$CANTAL_PATH.{meta,values}` or <runtime-dir>/metrics.{meta,values},
and <runtime-dir>/metrics.prom (named by protocol/metricpaths.py; made here,
chowned to supervisor-user, who only writes them in place; removed on a clean
exit, X-M1, X-M6, X-M7) and the lines appended to config-log-dir (T-27: one per
sandbox, at start and at each reload). Rules: a failure here is logged and never
stops the broker; nothing here reads what others wrote.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import stat
from pathlib import Path

from protocol.config import ConfigError, process_config_log_json
from protocol.configlog import append_config_log
from protocol.errors import Denied
from protocol.metricpaths import metric_paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger(__name__)


def prepare_metric_files(b: Broker) -> None:
    """Creates the metric files (protocol/metricpaths.py) for the supervisor to write.

    The supervisor may not create files in runtime-dir (root's) or in CANTAL_PATH's
    directory; it only writes these in place (supervisor/metrics_file.py), so
    cantal's mmap and the counters of a previous supervisor survive (X-M1, X-M6).
    A file that exists is opened without O_CREAT (fs.protected_regular refuses
    root an O_CREAT open of a file it chowned away in a sticky directory such as
    /tmp); it must be a regular file with one link, root's or the supervisor's,
    else it is someone else's and is left alone. The directory must exist: the
    original did not create it either.
    """
    account = b.options.supervisor_account
    for path in metric_paths(b.master.runtime_dir, b.options.metrics_base).values():
        try:
            fd = _open_own(path, account.uid)
        except OSError as e:
            hint = " (its directory must exist)" if e.errno == errno.ENOENT else ""
            log.warning("%s: %s%s (metrics will not be published there)", path, e.strerror, hint)
            continue
        except _NotOurs as e:
            log.warning("%s: %s (metrics will not be published there)", path, e)
            continue
        try:
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o644)
        except OSError as e:
            log.warning("%s: %s (metrics will not be published there)", path, e.strerror)
        finally:
            os.close(fd)


class _NotOurs(Exception):
    """A metric file's name is taken by something we may not hand to the supervisor."""


def _open_own(path: Path, supervisor_uid: int) -> int:
    """An fd of the existing file at path, checked, or of a new one. Raises: OSError, _NotOurs."""
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links"
    elif st.st_uid not in (0, supervisor_uid):
        problem = f"owned by uid {st.st_uid}, not root or the supervisor-user"
    if problem is not None:
        os.close(fd)
        raise _NotOurs(problem)
    return fd


def remove_metric_files(b: Broker) -> None:
    """X-M7: a clean exit removes the metric files."""
    for path in metric_paths(b.master.runtime_dir, b.options.metrics_base).values():
        with contextlib.suppress(OSError):
            path.unlink()


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
