"""The contenders: each builds the same container and starts the payload in it.

A contender has start_one(hold) (issue one start request; return as soon as it is
issued: the harness waits for the payload's byte), start_many(n),
start_restarting(), settle() and cleanup(). For memory, every process under the
harness that is not a payload (by its comm) counts as the runtime's own.

The container, for everyone: new mount, pid, uts and ipc namespaces; the busybox
image bind-mounted read-only as /; a tmpfs on /data; proc on /proc. Deviations
are named in each class's docstring and in BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # knot may be absent on a branch: imported where used
    from knot.spec import KnotSpec

from bench.env import PAYLOAD_HOLD, PAYLOAD_ONCE, BenchEnv, children, comm

PAYLOAD_COMMS = {"lbready", "lbonce", "lbfifo", "lbhostfifo"}


def payload(hold: bool) -> str:
    return PAYLOAD_HOLD if hold else PAYLOAD_ONCE


class Contender:
    name = "?"
    can_restart = False

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.ready_fd = -1  # where the payloads' bytes arrive; -1: the env's pipe

    def missing(self) -> str | None:
        """Why this contender cannot run here, or None."""
        return None

    def prepare(self) -> None:
        """One-time setup outside every timed region (bundles, devfs dir)."""

    def settle(self) -> None:
        """After the payloads reported ready: wait for transient launcher processes
        to exit and reap them, so that only what stays resident is left."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def start_one(self, hold: bool) -> None:
        raise NotImplementedError

    def start_many(self, n: int) -> None:
        for _ in range(n):
            self.start_one(hold=True)

    def start_restarting(self) -> int:
        """Starts one container whose service is restarted when it dies; returns the
        pid of the process that restarts it (the service is its descendant)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        self.env.kill_all()

    def close(self) -> None:
        """At the end of the run, after the last cleanup()."""


class CFloor(Contender):
    """clone + mounts + pivot_root + exec in C; pid 1 is a tiny C init (like the knot)."""

    name = "C floor"
    can_restart = True

    def start_one(self, hold: bool) -> None:
        e = self.env
        e.spawn([str(e.floor), str(e.image), str(e.mnt), payload(hold), "init"])

    def start_restarting(self) -> int:
        e = self.env
        pid = e.spawn([str(e.floor), str(e.image), str(e.mnt), PAYLOAD_HOLD, "restart"])
        os.waitpid(pid, 0)  # the outer process exits at once; pid 1 is adopted by us
        (init,) = [p for p in children(os.getpid()) if comm(p) == "lbfloor"]
        return init


class Unshare(Contender):
    """`unshare -mpfiu` running busybox sh that mounts, pivots and execs (a shell container).

    Each mount and the pivot is one fork+exec of the static busybox; the payload
    ends up as pid 1 (exec chain) and `unshare -f` stays as its waiting parent.
    """

    name = "unshare"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.exe = shutil.which("unshare") or ""  # looked up once, not in the timed region

    def missing(self) -> str | None:
        return None if self.exe else "unshare (util-linux) not found"

    def start_one(self, hold: bool) -> None:
        e = self.env
        m = str(e.mnt)
        script = (f"set -e; mount -o bind {e.image} {m}; mount -o remount,bind,ro {m}; "
                  f"mount -t tmpfs -o size=16m,nosuid,nodev tmpfs {m}/data; "
                  f"mount -t proc -o nosuid,nodev,noexec proc {m}/proc; cd {m}; "
                  f"pivot_root . tmp; umount -l /tmp; exec chroot . {payload(hold)}")
        e.spawn([self.exe, "-mpfiu", "--propagation", "private",
                 "/bin/busybox", "sh", "-c", script])


class Bwrap(Contender):
    """bubblewrap as root: its monitor and its pid-1 process stay per container."""

    name = "bwrap"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.exe = shutil.which("bwrap") or ""

    def missing(self) -> str | None:
        return None if self.exe else "bwrap not found (apt-get install bubblewrap)"

    def start_one(self, hold: bool) -> None:
        e = self.env
        e.spawn([self.exe, "--unshare-pid", "--unshare-ipc",
                 "--unshare-uts", "--ro-bind", str(e.image), "/", "--tmpfs", "/data",
                 "--proc", "/proc", "--", payload(hold)])


class Crun(Contender):
    """crun run with an OCI bundle (rootfs = the image, readonly); no cgroups
    (--cgroup-manager=disabled: the others make none either), no masked or
    read-only paths; mounts /proc, the tmpfs and a tmpfs /dev (crun fills it). Held containers use
    --detach, so no crun process stays (the harness adopts pid 1)."""

    name = "crun"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.count = 0
        self.state = env.tmp / "crun-state"
        self.detached: list[str] = []
        self.launchers: list[int] = []
        self.bundles: dict[bool, Path] = {}
        self.exe = shutil.which("crun") or ""

    def missing(self) -> str | None:
        return None if self.exe else "crun not found (apt-get install crun)"

    def _bundle(self, hold: bool) -> Path:
        if hold in self.bundles:
            return self.bundles[hold]
        bundle = self.env.tmp / f"crun-bundle-{'hold' if hold else 'once'}"
        bundle.mkdir()
        subprocess.run([self.exe, "spec"], cwd=bundle, check=True, capture_output=True)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["root"] = {"path": str(self.env.image), "readonly": True}
        cfg["process"]["args"] = [payload(hold)]
        cfg["process"]["terminal"] = False
        cfg["mounts"] = [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            # crun creates device nodes and /dev/ptmx in the rootfs's /dev: without
            # a /dev of its own it would write into the shared image (and race).
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "size=16m"]},
        ]
        linux = cfg["linux"]
        linux["namespaces"] = [{"type": t} for t in ("pid", "mount", "ipc", "uts")]
        for key in ("maskedPaths", "readonlyPaths", "resources", "cgroupsPath"):
            linux.pop(key, None)
        (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
        self.bundles[hold] = bundle
        return bundle

    def _argv(self, *args: str) -> list[str]:
        return [self.exe, "--root", str(self.state),
                "--cgroup-manager=disabled", *args]

    def prepare(self) -> None:
        self._bundle(True)
        self._bundle(False)

    def start_one(self, hold: bool) -> None:
        self.count += 1
        cid = f"lb{os.getpid()}-{self.count}"
        bundle = self._bundle(hold)
        if hold:
            self.detached.append(cid)
            argv = self._argv("run", "--detach", "--bundle", str(bundle), "--preserve-fds", "1",
                              cid)
            self.launchers.append(self.env.spawn(argv))
        else:
            self.env.spawn(self._argv("run", "--bundle", str(bundle), "--preserve-fds", "1",
                                      cid))

    def settle(self) -> None:
        for pid in self.launchers:  # `crun run --detach` exits once the container started
            os.waitpid(pid, 0)
        self.launchers.clear()
        super().settle()

    def cleanup(self) -> None:
        self.env.kill_all()
        self.launchers.clear()
        for cid in self.detached:
            subprocess.run(self._argv("delete", "--force", cid), capture_output=True,
                           check=False)
        self.detached.clear()


class LithosKnot(Contender):
    """knot.spawn.spawn_knot as the broker calls it (lithos's default): the native
    pid 1 (knot/init.c, built by knot.initbin into the run's temp dir in prepare(),
    outside every timed region) is started with posix_spawn straight into the new
    pid namespace by the caller (here the harness, which has imported knot.spawn as
    the broker has), which did the host-side setup and built the rest as ops
    (knot.plan); init.c runs them, then forks the service.

    It also does what every lithos container gets: /dev (devfs dir + devpts),
    /sys, a state dir; resolv.conf and hosts are not generated here.
    """

    name = "lithos"
    can_restart = True
    native = True  # build knot/init.c and pass it as native_init
    fork: bool | None = None  # spawn_knot's fork: None lets it choose (as the broker)

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.count = 0
        self.base: KnotSpec | None = None
        self.native_init: Path | None = None  # None: the Python pid 1

    def missing(self) -> str | None:
        try:
            import knot.spawn  # noqa: F401
        except ImportError:
            return f"{self.name}: not available on this branch (no knot.spawn)"
        if self.native and shutil.which("cc") is None:
            return f"{self.name}: no C compiler (cc) to build knot/init.c"
        return None

    def prepare(self) -> None:
        from knot import mkdev  # noqa: I001 - knot may be missing; imported when used
        from knot.spec import HostsFile, Kind, KnotSpec, ResolvConf, Volume, VolumeKind

        e = self.env
        if self.native and self.native_init is None:
            from knot import initbin

            path, why = initbin.build(e.tmp / "init-cache")
            if path is None:
                raise OSError(why)
            self.native_init = path
        if self.base is None:
            self.state = Path(tempfile.mkdtemp(prefix="knot-", dir=e.tmp))
            devfs = self.state / "dev"
            mkdev.make_devfs(str(devfs))
            self.base = KnotSpec(
                name="bench/svc.0", kind=Kind.DAEMON,
                container_config=str(e.image / "config.yaml"),
                config_filename="/etc/lithos/processes/bench.yaml",
                image_root=str(e.image), mount_dir=str(e.mnt), state_dir=str(self.state / "0"),
                devfs_dir=str(devfs),
                volumes=(Volume(kind=VolumeKind.TMPFS, target="/data", source=None,
                                size_bytes=16 << 20, mode=0o777),),
                resolv_conf=ResolvConf(mount=False, copy_from_host=False,
                                       source="/etc/resolv.conf"),
                hosts_file=HostsFile(mount=False, copy_from_host=False, localhost=False,
                                     public_hostname=False, source="/etc/hosts"),
                uid=0, gid=0, uid_map=(), gid_map=(), fileno_limit=1024,
                executable=PAYLOAD_HOLD, argv=(PAYLOAD_HOLD,), environ=(), pid_env_vars=(),
                workdir="/", secrets=None, tcp_fds=(3,), interactive=False,
                stdout_stderr_file=None, kill_timeout_s=5, restart_timeout_s=0,
                restart_process_only=False, normal_exit_codes=())

    def _spec(self, hold: bool, restart: bool) -> KnotSpec:
        assert self.base is not None, "prepare() first"
        self.count += 1
        name = f"bench/svc.{self.count}"
        return dataclasses.replace(
            self.base, name=name, state_dir=str(self.state / str(self.count)),
            executable=payload(hold), argv=(payload(hold),), restart_process_only=restart)

    def _spawn(self, spec: KnotSpec) -> int:
        from knot.spawn import spawn_knot

        e = self.env
        return spawn_knot(spec, inherited_fds={3: e.ready_w}, stdin=e.null,
                          stdout=e.errlog, stderr=e.errlog, native_init=self.native_init,
                          fork=self.fork)

    def start_one(self, hold: bool) -> None:
        self._spawn(self._spec(hold, restart=False))

    def start_restarting(self) -> int:
        return self._spawn(self._spec(True, restart=True))


class LithosForked(LithosKnot):
    """The knot forked without exec from the caller, the setup run in Python in the
    child, then the native pid 1 exec'd: lithos's default before posix_spawn, and
    still its way with LITHOS_KNOT_SPAWN=fork."""

    name = "lithos fork"
    fork = True


class LithosExec(LithosKnot):
    """The knot exec'd (`python3 -m knot.lithos_knot`: an interpreter start and the
    knot's imports), which then execs the native pid 1: lithos's default before the
    fork path, and still its way with LITHOS_KNOT_SPAWN=exec."""

    name = "lithos exec"
    fork = False


class LithosPython(LithosKnot):
    """The knot exec'd, and it stays pid 1 in Python (no native init: what a host
    without a C compiler gets). The `lithos` row of the first tables below."""

    name = "lithos python"
    native = False
    fork = False


class LithosKnotNoSite(LithosPython):
    """What-if: the exec'd Python knot, its interpreter started with -S (no site
    module, so no .pth file runs). knot.spawn.knot_argv is wrapped for the call only;
    the knot's code is unchanged. Secrets (PyNaCl, in site-packages) would not import."""

    name = "lithos -S"

    def _spawn(self, spec: KnotSpec) -> int:
        import knot.spawn

        plain = knot.spawn.knot_argv

        def with_s(*args: int | str | None) -> list[str]:
            argv = plain(*args)  # type: ignore[arg-type]
            return [argv[0], "-S", *argv[1:]]

        knot.spawn.knot_argv = with_s
        try:
            return super()._spawn(spec)
        finally:
            knot.spawn.knot_argv = plain


ALL: tuple[type[Contender], ...] = (CFloor, LithosKnot, LithosForked, LithosExec,
                                    LithosPython, LithosKnotNoSite, Unshare, Bwrap, Crun)
