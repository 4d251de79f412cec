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
    The directory must exist: the original did not create it either.
    """
    account = b.options.supervisor_account
    for path in metric_paths(b.master.runtime_dir, b.options.metrics_base).values():
        try:
            fd = _open_plain_file(path)
        except OSError as e:
            hint = " (its directory must exist)" if e.errno == errno.ENOENT else ""
            log.warning("%s: %s%s (metrics will not be published there)", path, e.strerror, hint)
            continue
        try:
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o644)
        except OSError as e:
            log.warning("%s: %s (metrics will not be published there)", path, e.strerror)
        finally:
            os.close(fd)


def _open_plain_file(path: Path) -> int:
    """An fd of the regular, singly linked file at path: the existing one (its
    counters are kept, whoever owned it: e.g. a former supervisor-user), else a new
    one. Anything else at that name (a symlink, a FIFO, a hard link to another file)
    is unlinked and replaced, with a warning: the name is ours by configuration,
    and handing its target to the supervisor-user would give away a file that is
    not. An existing file is opened without O_CREAT (fs.protected_regular refuses
    root an O_CREAT open of a file it chowned away in a sticky directory such as
    /tmp); O_NONBLOCK, so that a FIFO cannot block us. Raises: OSError."""
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO with no reader
            raise
        problem = "a symbolic link" if e.errno == errno.ELOOP else "not a regular file"
    else:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        os.close(fd)
        problem = "not a regular file" if not stat.S_ISREG(st.st_mode) else (
            f"a file with {st.st_nlink} hard links")
    log.warning("%s: %s; replacing it with a new metrics file", path, problem)
    os.unlink(path)
    return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)


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
