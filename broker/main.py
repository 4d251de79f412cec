"""lithos_tree: the root broker (inventory 2.1 and 3.1): its command line.

Two stages in one pid. The front (any command line without DAEMON first) parses
and checks the options with argparse (--help, --version and usage errors as
every lithos tool: exit 2), then execs the daemon in place: `python3 -S -P` with
our import path and -X options (broker/pyexec.py), `-m broker.main DAEMON` and
the options in their one canonical form. The daemon parses that form by hand and
runs broker/startup.py. Why: the daemon lives as long as the host, and neither
`site` (a .pth file may import anything) nor argparse and gettext may stay in its
memory for that (issue #10). The exec keeps the pid (sd_notify, the pid file, a
caller holding it), the caller's fds and the environment (PYTHONPATH set to our
path, which reaches nothing the broker starts: the supervisor and the knots get
environments of their own). A front started with -S is a front all the same.
The re-exec of an upgrade (broker/reexec.py) repeats the daemon's command line.
"""

from __future__ import annotations

import os
import sys

from broker.pyexec import daemon_path, x_options

# First argument of the daemon's command line: the front's exec wrote the rest.
DAEMON = "--daemon-exec"
_VALUED = ("--config", "--log-level")


class UsageError(Exception):
    """The daemon's command line is not the one the front builds; says why."""


CommandLine = tuple[str, bool, str | None]  # config, log_stderr, log_level


def parse_args(argv: list[str]) -> CommandLine:
    """The front's options (exits 2 with argparse's message if they are wrong)."""
    import argparse  # the front's only: never in the daemon's memory

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
    args = p.parse_args(argv)
    return args.config, args.log_stderr, args.log_level


def daemon_argv(options: CommandLine) -> list[str]:
    """The daemon's whole command line, interpreter first, for the front's options."""
    config, log_stderr, log_level = options
    argv = [sys.executable, "-S", "-P", *x_options(), "-m", "broker.main", DAEMON,
            "--config", config]  # fmt: skip
    if log_stderr:
        argv.append("--log-stderr")
    if log_level is not None:
        argv += ["--log-level", log_level]
    return argv


def parse_daemon_args(argv: list[str]) -> CommandLine:
    """(config, log_stderr, log_level) from what daemon_argv wrote after DAEMON.

    Not argparse: it and gettext would stay in the daemon's memory (about 0.45 MB)
    for three options nobody types.
    """
    values: dict[str, str] = {}
    log_stderr = False
    rest = iter(argv)
    for arg in rest:
        if arg == "--log-stderr":
            log_stderr = True
        elif arg in _VALUED:
            value = next(rest, None)
            if value is None:
                raise UsageError(f"{arg} needs a value")
            values[arg] = value
        else:
            raise UsageError(f"unknown argument {arg!r}")
    if "--config" not in values:
        raise UsageError("--config is required")
    return values["--config"], log_stderr, values.get("--log-level")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != [DAEMON]:  # the front
        exec_argv = daemon_argv(parse_args(argv))
        env = dict(os.environ, PYTHONPATH=daemon_path())
        try:
            os.execve(sys.executable, exec_argv, env)
        except OSError as e:
            print(f"Fatal error: exec {sys.executable}: {e}", file=sys.stderr)
            return 1
    try:
        config, log_stderr, log_level = parse_daemon_args(argv[1:])
    except UsageError as e:
        print(f"lithos_tree: error: {e} (the command line of {DAEMON} is the front's: "
              "run lithos_tree without it)", file=sys.stderr)  # fmt: skip
        return 2
    from broker import startup  # the daemon's whole code, not the front's

    return startup.run(config, log_stderr, log_level)


if __name__ == "__main__":
    sys.exit(main())
