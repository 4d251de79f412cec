"""lithos_tree: the root broker (inventory 2.1 and 3.1).

Start-up in order: arguments, master config, devfs-dir check (T-3), directories
(M-1), logging, pid file (T-5), child subreaper, own cgroup (T-6), then the
loop (broker/server.py). A re-exec (SIGQUIT...) comes back through here with the
resume state in LITHOS_RESUME_FD. Fatal errors print `Fatal error: <msg>` and
exit 1, as the original.
"""

from __future__ import annotations

import argparse
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
from protocol.config import ConfigError, load_master
from protocol.logs import parse_level, resolve_level, setup_logging

log = logging.getLogger("lithos_tree")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lithos_tree",
        description="The lithos daemon: supervises every configured container.",
        epilog="Signals: SIGQUIT/SIGHUP/SIGUSR1/SIGUSR2 re-execute it in place (containers "
        "keep running, configs are re-read); SIGTERM stops every container and exits; "
        "SIGINT exits after the containers (which got the terminal's SIGINT) have stopped.",
    )
    p.add_argument("-C", "--config", default="/etc/lithos/master.yaml", help="master config")
    p.add_argument("--log-stderr", action="store_true", help="also log to stderr")
    p.add_argument("--log-level", help="error, warn, info, debug or trace")
    p.add_argument("--version", action="version", version="lithos 0.1.0")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resume = reexec.take_resume_state()
    try:
        failpoints.arm_from_environ()
    except failpoints.FailpointError as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        return 1
    try:
        master = load_master(args.config)
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
        level = resolve_level(
            args.log_level, None, master.log_level.value if master.log_level else None
        )
        setup_logging(
            log_file=master.log_file,
            level=level,
            log_stderr=args.log_stderr,
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
        print(f"Fatal error: {e}", file=sys.stderr)
        if logging.getLogger().handlers:  # else logging's last resort would print it again
            log.error("Fatal error: %s", e)
        return 1
    supervisor_args = []
    if args.log_level and parse_level(args.log_level) is not None:
        supervisor_args += ["--log-level", args.log_level]
    options = Options(Path(args.config), account, supervisor_args, args.log_stderr,
                      args.log_level if parse_level(args.log_level) is not None else None)
    broker = Broker(ConfigCache(master), options, resume)
    log.warning("lithos_tree started (pid %d%s)", os.getpid(), ", re-exec" if resume else "")
    try:
        broker.start(cgroups)
        broker.run()
    finally:
        broker.close()
    log.warning("lithos_tree exits: every container has stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
