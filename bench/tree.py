"""The lithos_tree contender: the whole path, supervisor -> broker -> knot.

Owns a lithos config made for the bench (master, one sandbox, one process config
with `instances: N`, the container config inside the bench image) and one
`python3 -m broker.main` run per start. lithos_tree hands the service no pipe, so
the payload is lbfifo: it opens /ready/fifo (a !Persistent volume on a host dir
allowed by the sandbox's writable-paths) and writes its byte; the harness holds
the fifo open for reading. Rules: the tree is stopped with SIGTERM (its own
shutdown), then everything left is SIGKILLed by pid, and the cgroups the broker
made (named after the harness's pid) are removed.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import select
import shutil
import signal
import sys
from pathlib import Path

from bench.contenders import Contender
from bench.env import PAYLOAD_FIFO, BenchEnv, BenchError, children, rollup_kb

CGROUP_ROOT = Path("/sys/fs/cgroup")
REPO = Path(__file__).resolve().parents[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


class LithosTree(Contender):
    """`python3 -m broker.main -C master.yaml` (lithos_tree) with N instances of one
    process; ready when every service wrote to the fifo. restart-timeout 0."""

    name = "lithos tree"
    can_restart = True

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.runs = 0
        self.broker = -1
        self.fifo = -1
        self.root = env.tmp / "tree"
        self.cgroup_name = f"lithos-bench-{os.getpid()}.slice"
        self.init_cache = env.tmp / "init"
        self.extra_env: dict[str, str] = {}  # e.g. NOTIFY_SOCKET (bench/treeops.py)
        self.python = sys.executable  # the tree's interpreter (bench/daemonmem.py --python)

    def missing(self) -> str | None:
        try:
            import broker.main  # noqa: F401
            import knot.spawn  # noqa: F401
        except ImportError:
            return "lithos tree: not available on this branch (no broker.main or knot.spawn)"
        return None

    def prepare(self) -> None:
        from knot import initbin, mkdev

        e = self.env
        # The native pid 1 is compiled once per source version and cached (in production
        # under /var/lib/lithos/init); build it now, so no timed run includes the compile
        # (about 0.3 s of `cc -O2 -static` on the broker's first start).
        path, why = initbin.build(self.init_cache)
        if path is None:
            raise BenchError(f"lithos tree: native pid 1: {why}")
        # Byte-compiled, as `pip install` leaves lithos: the supervisor runs as nobody and
        # cannot write __pycache__, and each module compiled from source at every start
        # leaves its daemon about 1 MB bigger (BENCHMARKS.md, "Broker and supervisor memory").
        for package in ("broker", "supervisor", "knot", "protocol"):
            compileall.compile_dir(REPO / package, quiet=1)
        os.chmod(e.tmp, 0o755)  # the supervisor runs as nobody and reads the configs
        for d in ("sandboxes", "processes", "ready", "log"):
            (self.root / d).mkdir(parents=True)
        mkdev.make_devfs(str(self.root / "dev"))
        fifo = self.root / "ready" / "fifo"
        os.mkfifo(fifo, 0o666)
        # O_RDWR: the harness is always a writer too, so reads never see EOF and
        # the services' opens never block.
        self.fifo = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        self.ready_fd = self.fifo
        (self.root / "master.yaml").write_text(
            "sandboxes-dir: ./sandboxes\nprocesses-dir: ./processes\n"
            f"runtime-dir: {self.root}/run\ndevfs-dir: {self.root}/dev\n"
            f"default-log-dir: {self.root}/log\nconfig-log-dir: {self.root}/log/config\n"
            f"stdio-log-dir: {self.root}/log/stderr\ncgroup-name: {self.cgroup_name}\n"
            "log-level: warn\n")
        (self.root / "sandboxes" / "bench.yaml").write_text(
            f"image-dir: {e.tmp}\nallow-users: [0]\nallow-groups: [0]\n"
            f"writable-paths:\n  /ready: {self.root}/ready\n")
        (e.image / "config" / "svc.yaml").write_text(
            "kind: Daemon\nuser-id: 0\ngroup-id: 0\n"
            "volumes:\n  /data: !Tmpfs { size: 16Mi }\n  /ready: !Persistent { path: /ready }\n"
            f"executable: {PAYLOAD_FIFO}\narguments: []\nrestart-timeout: 0\n")

    def _start_tree(self, instances: int) -> None:
        if self.broker > 0:
            raise BenchError("lithos tree: already running")
        (self.root / "processes" / "bench.yaml").write_text(
            f"svc:\n  image: {self.env.image.name}\n  config: /config/svc.yaml\n"
            f"  instances: {instances}\n")
        self.runs += 1
        # The broker finds the native pid 1 (knot.initbin) built by prepare() in the
        # run's temp dir, not in the host's /var/lib/lithos/init.
        self.broker = self.env.spawn([self.python, "-m", "broker.main", "-C",
                                      str(self.root / "master.yaml"), "--log-stderr"],
                                     ready_fd=False,
                                     extra_env={"LITHOS_INIT_CACHE": str(self.init_cache),
                                                **self.extra_env})

    def start_one(self, hold: bool) -> None:
        raise BenchError("lithos tree: measured only from cold (many) and on restart")

    def start_many(self, n: int) -> None:
        self._start_tree(n)

    def start_restarting(self) -> int:
        self._start_tree(1)
        return self.broker

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    def control_pids(self) -> list[int]:
        """The broker and the supervisor (every child of the broker that is not a knot)."""
        if self.broker < 0:
            return []
        return [self.broker] + [p for p in children(self.broker)
                                if "lithos_knot" not in _cmdline(p)]

    def control_kb(self) -> tuple[int, int]:
        """PSS and USS of the broker and the supervisor together, in kB.

        USS (private pages) is what per-container state grows; PSS also moves
        when more knots share the interpreter's pages.
        """
        pss = uss = 0
        for pid in self.control_pids():
            r = rollup_kb(pid)
            pss += r.get("Pss", 0)
            uss += r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
        return pss, uss

    def cleanup(self) -> None:
        if self.broker > 0:
            self._stop_broker()
        self.env.kill_all()
        self._remove_cgroups()
        shutil.rmtree(self.root / "run", ignore_errors=True)

    def _stop_broker(self) -> None:
        pid, self.broker = self.broker, -1
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # lithos_tree's own shutdown stops the containers
            select.select([pidfd], [], [], 10.0)
        finally:
            os.close(pidfd)

    def _remove_cgroups(self) -> None:
        for top in CGROUP_ROOT.glob(f"*/{self.cgroup_name}"):
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def close(self) -> None:
        if self.fifo >= 0:
            fd, self.fifo = self.fifo, -1
            os.close(fd)
