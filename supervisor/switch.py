"""lithos_switch: replace a sandbox's process config safely, then reload (2.5, E-33).

Owns the CLI. Order: check the new config with lithos_check's own code (in
process: `--sandbox SANDBOX --alternate-config NEW_CONFIG`); on any problem
refuse (exit 1), the old file untouched. Then copy NEW_CONFIG to
`<target dir>/.tmp.<SANDBOX>`, fsync it, rename it over the target (atomic)
and fsync the directory. Then ask lithos_tree to reload: Reload on the
control socket, or SIGQUIT to the pid in master.pid (the original's way);
no daemon is a warning and exit 0. `--dry-run` only prints the plan
(supervisor.switchplan) against the live tree; `--wait` waits, with a
deadline, until GetStatus shows the plan done, asking again each time the tree
changes (supervisor.statewatch: inotify on what the tree writes), at the latest
every RECHECK_S.
Exit codes: 0 done (or no daemon), 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from protocol import messages as m
from protocol.config import (
    ConfigError,
    list_sandboxes,
    load_master,
    load_sandbox,
    process_config_path,
)
from protocol.config import check as lithos_check
from supervisor import control
from supervisor.statewatch import StateWatch
from supervisor.switchplan import SwitchPlan, plan_switch, recorded, unmet

VERSION = "lithos_switch (lithos 0.1.0, Lithos v0.18.4 compatible)"
RECHECK_S = 5.0  # --wait asks again after this long without a change seen
EXAMPLES = """examples:
  lithos_switch web /tmp/web.yaml              check, install and reload
  lithos_switch --dry-run web /tmp/web.yaml    print what would start, stop, restart
  lithos_switch --wait --timeout 30 web /tmp/web.yaml
                                               ... and wait until the tree got there
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lithos_switch", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a new process config for a sandbox, install it atomically "
                    "and make lithos_tree reload.")
    p.add_argument("-C", "--config", "--master", dest="config", type=Path,
                   default=Path("/etc/lithos/master.yaml"),
                   help="master config (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="say each step")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan against the running tree; change nothing")
    p.add_argument("--wait", action="store_true",
                   help="wait until the running tree matches the new config")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long --wait waits (default %(default)s)")
    p.add_argument("sandbox", metavar="SANDBOX")
    p.add_argument("new_config", metavar="NEW_CONFIG", type=Path)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def _say(text: str) -> None:
    print(f"lithos_switch: {text}", file=sys.stderr)


def install(new: Path, target: Path, sandbox: str) -> None:
    """Copy `new` next to `target` as `.tmp.<sandbox>`, fsync, rename over `target`."""
    tmp = target.parent / f".tmp.{sandbox}"
    try:
        shutil.copyfile(new, tmp)
        shutil.copymode(new, tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def reload(runtime_dir: Path) -> bool:
    """Ask lithos_tree to reload; False (with a warning) when none runs."""
    try:
        reply = control.request(runtime_dir, m.Reload())
    except control.NoDaemon:
        pass  # the original's way below: SIGQUIT to the pid in master.pid
    except control.ControlError as e:
        _say(f"warning: {e}; falling back to SIGQUIT")
    else:
        if isinstance(reply, m.ReloadOk):
            for error in reply.config_errors:
                _say(f"warning: lithos_tree keeps the last good config: {error}")
            return True
    try:
        pid = control.read_master_pid(runtime_dir)
    except control.NoDaemon as e:
        _say(f"warning: {e}")
        return False
    if not control.pid_alive(pid):
        _say(f"warning: Process with pid {pid} is not running...")
        return False
    os.kill(pid, signal.SIGQUIT)
    return True


def live_status(runtime_dir: Path) -> m.StatusTree | None:
    try:
        return control.status(runtime_dir)
    except control.NoDaemon:
        return None
    except control.ControlError as e:
        _say(f"warning: cannot read the live status: {e}")
        return None


def print_plan(plan: SwitchPlan, running: bool) -> None:
    if not running:
        print("no lithos_tree is running: as if it ran the current config")
    for change in plan.changes:
        print(change)
    if not plan.changes:
        print("nothing would change")


def wait_done(runtime_dir: Path, sandbox: str, plan: SwitchPlan, asked_at: float,
              timeout_s: float) -> list[str]:
    """GetStatus at each change of the tree until the plan is done; what is left at
    the deadline."""
    deadline = asked_at + timeout_s
    with StateWatch(runtime_dir) as watch:  # made before the first read: no change lost
        while True:
            now = time.monotonic()
            try:
                left = unmet(plan, control.status(runtime_dir), sandbox, now - asked_at,
                             recorded(runtime_dir))
            except (control.NoDaemon, control.ControlError) as e:  # e.g. it re-executes
                left = [f"lithos_tree: {e}"]
            if not left or now >= deadline:
                return left
            watch.wait(min(RECHECK_S, deadline - now))


def main(argv: list[str] | None = None) -> int:
    """Run lithos_switch; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        master = load_master(args.config)
        path = list_sandboxes(master).get(args.sandbox)
        if path is None:
            print(f"Fatal error: {master.sandboxes_dir}: no sandbox {args.sandbox!r} "
                  f"(no {args.sandbox}.yaml there)", file=sys.stderr)
            return 1
        sandbox = load_sandbox(path)
    except ConfigError as e:
        print(f"Fatal error: {e}", file=sys.stderr)
        return 1
    target = process_config_path(master, sandbox)
    code = lithos_check.main(["-C", str(args.config), "--sandbox", args.sandbox,
                              "--alternate-config", str(args.new_config)])
    if code != 0:
        _say(f"configuration check failed (lithos_check exit status {code}); "
             f"{target} is unchanged")
        return 1
    status = live_status(master.runtime_dir)
    plan = plan_switch(sandbox, target, args.new_config, status, time.monotonic())
    if args.dry_run:
        print_plan(plan, status is not None)
        return 0
    try:
        install(args.new_config, target, args.sandbox)
    except OSError as e:
        print(f"Fatal error: cannot install {args.new_config} as {target}: {e}",
              file=sys.stderr)
        return 1
    if args.verbose:
        _say(f"installed {args.new_config} as {target}")
    asked_at = time.monotonic()
    try:
        reloaded = reload(master.runtime_dir)
    except OSError as e:
        print(f"Fatal error: cannot signal lithos_tree: {e}", file=sys.stderr)
        return 1
    if args.verbose and reloaded:
        _say("lithos_tree reloads")
    if not args.wait:
        return 0
    if not reloaded:
        _say("--wait: no lithos_tree runs, nothing will start")
        return 1
    left = wait_done(master.runtime_dir, args.sandbox, plan, asked_at, args.timeout)
    if left:
        _say(f"not done after {args.timeout:g}s:")
        for item in left:
            print(f"  {item}", file=sys.stderr)
        return 1
    if args.verbose:
        _say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
