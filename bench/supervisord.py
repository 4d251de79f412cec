"""The supervisord contender: N long-running programs, no isolation at all.

Owns one supervisord config (N `[program:sN]` sections, autostart, autorestart,
startsecs=0, no log capture) and one `supervisord -n` run per start. supervisord
closes every fd above 2 in its children, so the payload is lbhostfifo: lbfifo
compiled with the host path of a fifo the harness holds open (O_RDWR, as for
lithos tree). It is the peer for "N services from cold" with supervision and no
containers: what isolation costs on top of a Python supervisor. Rules: stopped with
SIGKILL by pid (env.kill_all: supervisord and every program are the harness's
descendants); nothing outside the run's temp dir is written.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from bench import csrc
from bench.contenders import Contender
from bench.env import BenchEnv, BenchError


def supervisord_conf(workdir: str, program: str, n: int) -> str:
    """The config text: N programs running `program`, logs off, state in workdir."""
    lines = ["[supervisord]", "nodaemon=true", f"logfile={workdir}/supervisord.log",
             f"pidfile={workdir}/supervisord.pid", "loglevel=warn", "minfds=4096",
             f"minprocs={max(200, 2 * n)}", f"childlogdir={workdir}", ""]
    for i in range(n):
        lines += [f"[program:s{i}]", f"command={program}", "autostart=true",
                  "autorestart=true", "startsecs=0", "startretries=0",
                  "stdout_logfile=NONE", "stderr_logfile=NONE", ""]
    return "\n".join(lines)


class Supervisord(Contender):
    """`supervisord -n -c CONF` with N programs (no namespaces, no mounts)."""

    name = "supervisord"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        # The console script next to this interpreter, run by it: a pyenv shim on
        # PATH does not run under the bench's plain PATH, and `-m supervisor...`
        # from the worktree would find lithos's own supervisor package.
        self.script = Path(sys.executable).parent / "supervisord"
        self.dir = env.tmp / "supervisord"
        self.fifo = -1

    def missing(self) -> str | None:
        if not self.script.is_file():
            return "supervisord not found (pip install supervisor)"
        return None

    def prepare(self) -> None:
        self.dir.mkdir()
        fifo = self.dir / "fifo"
        os.mkfifo(fifo, 0o600)
        self.fifo = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        self.ready_fd = self.fifo
        if platform.machine() == "x86_64":
            source, flags = csrc.PAYLOAD_X86_64, ["-static", "-nostdlib", "-fno-stack-protector",
                                                  "-fno-pie", "-no-pie"]
        else:
            source, flags = csrc.PAYLOAD_PORTABLE, ["-static"]
        self.program = self.env.bin / "lbhostfifo"
        self.env._gcc(source, self.program, "-DHOLD", "-DFIFO", f'-DFIFO_PATH="{fifo}"', *flags)

    def start_one(self, hold: bool) -> None:
        raise BenchError("supervisord: measured only from cold (many)")

    def start_many(self, n: int) -> None:
        conf = self.dir / "supervisord.conf"
        conf.write_text(supervisord_conf(str(self.dir), str(self.program), n))
        self.env.spawn([sys.executable, str(self.script), "-n", "-c", str(conf)],
                       ready_fd=False)

    def close(self) -> None:
        if self.fifo >= 0:
            fd, self.fifo = self.fifo, -1
            os.close(fd)
