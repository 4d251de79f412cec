"""The start-up of the lithos_tree daemon (inventory 2.1 and 3.1), after broker/main.py.

Start-up in order: master config, devfs-dir check (T-3), directories (M-1),
logging, pid file (T-5), child subreaper, own cgroup (T-6), then the loop
(broker/server.py). A re-exec (SIGQUIT...) comes back through here with the
resume state in LITHOS_RESUME_FD. Fatal errors print `Fatal error: <msg>` and
exit 1, as the original.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from broker import reexec
from broker.cgroups import CgroupError, CgroupLayout, detect
from broker.configs import ConfigCache
from broker.daemon import (
    PR_SET_CHILD_SUBREAPER,
    StartupError,
    lookup_account,
    make_master_dirs,
    prctl,
    write_pid_file,
)
from broker.server import Broker, Options
from protocol import failpoints
from protocol.config import ConfigError, MasterConfig, load_master
from protocol.loghandlers import StderrHandler
from protocol.logs import parse_level, resolve_level, setup_logging
from protocol.metricpaths import cantal_path, metrics_base, supervisor_environ

log = logging.getLogger("lithos_tree")


def metrics_location(master: MasterConfig) -> str:
    """X-M1, T-8: the metric files' base, from our environment and working directory
    (a re-exec keeps both, so the files stay put; no self re-exec is needed:
    protocol/metricpaths.py). A relative CANTAL_PATH is used, with a warning."""
    base = metrics_base(master, os.environ, os.getcwd())
    if (value := cantal_path(os.environ)) is not None and value != base:
        log.warning("CANTAL_PATH=%r is a relative path: the metric files are %s.values "
                    "and %s.meta (from lithos_tree's working directory)", value, base, base)
    return base


def run(config: str, log_stderr: bool, log_level: str | None) -> int:
    """The daemon, from its options (broker/main.py) to its exit status."""
    resume = reexec.take_resume_state()
    try:
        failpoints.arm_from_environ()
    except failpoints.FailpointError as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        return 1
    try:
        master = load_master(config)
    except ConfigError as e:
        print(f"Fatal error: Error reading master config: {e}", file=sys.stderr)
        return 1
    try:
        if not master.devfs_dir.is_dir():
            raise StartupError(
                f"devfs-dir: {master.devfs_dir} must exist and contain device nodes "
                f"(create it with `lithos_mkdev {master.devfs_dir}`; {master.path})"
            )
        make_master_dirs(master)
        level = resolve_level(log_level, None, master.log_level.value if master.log_level else None)
        setup_logging(
            log_file=master.log_file,
            level=level,
            log_stderr=log_stderr,
            syslog_facility=master.syslog_facility,
            syslog_ident=master.syslog_app_name,
        )
        write_pid_file(master.runtime_dir / "master.pid")
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        account = lookup_account(master.supervisor_user)
        cgroups: CgroupLayout | None = None
        if master.cgroup_name is not None:
            cgroups = detect(master.cgroup_controllers)
            cgroups.enter(master.cgroup_name, os.getpid())
    except (StartupError, CgroupError, OSError) as e:
        handlers = logging.getLogger().handlers
        if not any(isinstance(h, StderrHandler) for h in handlers):  # --log-stderr prints it
            print(f"Fatal error: {e}", file=sys.stderr)
        if handlers:  # else logging's last resort would print it again
            log.error("Fatal error: %s", e)
        return 1
    supervisor_args = []
    if log_level and parse_level(log_level) is not None:
        supervisor_args += ["--log-level", log_level]
    base = metrics_location(master)
    options = Options(
        Path(config),
        account,
        [*supervisor_args, "--metrics-base", base],
        log_stderr,
        log_level if parse_level(log_level) is not None else None,
        metrics_base=base,
        supervisor_env=supervisor_environ(os.environ, base),
    )
    broker = Broker(ConfigCache(master), options, resume)
    log.warning("lithos_tree started (pid %d%s)", os.getpid(), ", re-exec" if resume else "")
    try:
        broker.start(cgroups)
        broker.run()
    finally:
        broker.close()
    log.warning("lithos_tree exits: every container has stopped")
    return 0
