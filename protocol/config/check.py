"""lithos_check: check the configs of a host, or container configs alone (inventory 2.4).

Owns the CLI. Whole-host mode loads master, every sandbox, its process config
(or --alternate-config for --sandbox), and every container config read safely
inside its image, then instantiates every instance against the sandbox:
exactly the checks the broker makes at start, so a config that passes here
is one the broker accepts. Container mode (--check-container) checks each
file alone. Reports every problem; exit 0 when clean, 1 otherwise, 2 on
usage errors. Built-in @{lithos:*} variables pass (decision 3, E-42).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from . import (
    ConfigError,
    Kind,
    MasterConfig,
    Problem,
    ProcessConfig,
    SandboxConfig,
    check_process,
    image_path,
    instantiate,
    list_sandboxes,
    load_container,
    load_container_in_image,
    load_master,
    load_processes,
    load_sandbox,
    process_config_path,
)
from .instantiate import check_container

VERSION = "lithos_check (lithos, Lithos v0.18.4 compatible)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lithos_check", description="Check lithos configs.")
    p.add_argument("-C", "--config", default="/etc/lithos/master.yaml", type=Path,
                   help="master config (default /etc/lithos/master.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="print hostname and address")
    p.add_argument("--sandbox", "--sandbox-name", "-T", "--tree", "--subtree-name",
                   dest="sandbox", help="the sandbox --alternate-config belongs to")
    p.add_argument("--alternate-config", type=Path,
                   help="a process config to check instead of the sandbox's current one")
    p.add_argument("--check-container", action="append", type=Path, default=[],
                   metavar="FILE", help="check this container config alone (repeatable)")
    p.add_argument("--json", action="store_true", help="print problems as a JSON list")
    p.add_argument("--version", action="version", version=VERSION)
    return p


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._seen: set[Problem] = set()

    def add(self, problems: list[Problem]) -> None:
        for problem in problems:
            if problem not in self._seen:
                self._seen.add(problem)
                self.problems.append(problem)


def check_containers(files: list[Path], report: _Report) -> None:
    for file in files:
        try:
            report.add(check_container(load_container(file)))
        except ConfigError as e:
            report.add(e.problems)


def _check_entry(sandbox: SandboxConfig, process: ProcessConfig, report: _Report) -> None:
    report.add(check_process(sandbox, process))
    root = image_path(sandbox, process)
    if isinstance(root, Problem):
        return
    try:
        container = load_container_in_image(root, process.config)
    except ConfigError as e:
        report.add(e.problems)
        return
    report.add(check_container(container))
    count = process.instances if process.kind is Kind.DAEMON else 1
    for index in range(max(count, 1)):
        name = process.instance_name(sandbox.name, index)
        try:
            instantiate(container, process, sandbox, name, index)
        except ConfigError as e:
            report.add(e.problems)


def check_host(master: MasterConfig, args: argparse.Namespace, report: _Report) -> None:
    mfile = str(master.path)
    try:
        host = socket.gethostname()
        address = socket.gethostbyname(host)
        if args.verbose:
            print(f"Hostname is {host}")
            print(f"IPAddr is {address}")
    except OSError as e:
        report.add([Problem(mfile, "", "", f"this host's name or address cannot be found: {e}")])
    if not master.devfs_dir.is_dir():
        report.add([Problem(mfile, "devfs-dir", str(master.devfs_dir),
                            "does not exist (create it with lithos_mkdev)")])
    try:
        sandboxes = list_sandboxes(master)
    except ConfigError as e:
        report.add(e.problems)
        return
    if args.sandbox is not None and args.sandbox not in sandboxes:
        report.add([Problem(str(master.sandboxes_dir), "", args.sandbox,
                            "is not a sandbox here (no such .yaml file)")])
    for name, path in sandboxes.items():
        try:
            sandbox = load_sandbox(path)
        except ConfigError as e:
            report.add(e.problems)
            continue
        for key, ranges, example in (("allow-users", sandbox.allow_users, "allow-users"),
                                     ("allow-groups", sandbox.allow_groups, "allow-groups")):
            if not ranges:
                report.add([Problem(str(path), key, "[]", f"is empty: nothing may run "
                                    f"(add e.g. `{example}: [1-1000]`)")])
        alternate = args.alternate_config if args.sandbox == name else None
        pfile = alternate or process_config_path(master, sandbox)
        if alternate is None and not pfile.exists():
            print(f"lithos_check: warning: {pfile}: no process config for sandbox {name}",
                  file=sys.stderr)
            continue
        try:
            processes = load_processes(pfile)
        except ConfigError as e:
            report.add(e.problems)
            continue
        for process in processes.values():
            _check_entry(sandbox, process, report)


def main(argv: list[str] | None = None) -> int:
    """Run lithos_check; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.alternate_config is not None and args.sandbox is None:
        print("lithos_check: --alternate-config needs --sandbox", file=sys.stderr)
        return 2
    report = _Report()
    if args.check_container:
        check_containers(args.check_container, report)
    else:
        try:
            master = load_master(args.config)
        except ConfigError as e:
            report.add(e.problems)
        else:
            check_host(master, args, report)
    if args.json:
        print(json.dumps([p.as_json() for p in report.problems], indent=1))
    else:
        for problem in report.problems:
            print(problem, file=sys.stderr)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
