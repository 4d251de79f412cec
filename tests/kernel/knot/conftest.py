"""Fixtures for the knot's kernel tests: a busybox image, a devfs dir, running knots.

Every test gets: a fresh image built from /bin/busybox in a temp dir, a devfs dir
made by knot.mkdev, a mount dir and a state dir; knots started with spawn_knot
are SIGKILLed and reaped in the finalizer if still alive; and the host's
/proc/self/mountinfo must be the same after the test as before (nothing mounted
on the host), with no state dir left behind.

Every test that uses `env` runs twice: with the native pid 1 (knot/init.c, built
once per session into a temp dir by knot.initbin) and with the Python pid 1
(knot.service). LITHOS_KNOT_INIT=python or =native runs only that mode.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knot import initbin, mkdev
from knot.spawn import spawn_knot
from knot.spec import HostsFile, Kind, KnotSpec, ResolvConf

BUSYBOX = "/bin/busybox"
IMAGE_DIRS = ("bin", "etc", "tmp", "proc", "sys", "dev", "state", "data", "ro", "scratch",
              "config")


def build_image(root: Path) -> Path:
    """A minimal image: busybox applets in /bin, regular /etc/hosts and /etc/resolv.conf."""
    for d in IMAGE_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for name in applets:
        link = root / "bin" / name
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "hosts").write_text("10.9.9.9 image-hosts\n")
    (root / "etc" / "resolv.conf").write_text("nameserver 10.9.9.8\n")
    (root / "config" / "main.yaml").write_text("executable: /bin/sh\n")
    return root


@dataclasses.dataclass
class Knot:
    """One started knot, as its parent (this test process) sees it."""

    pid: int
    spec: KnotSpec
    log: Path
    stderr: Path
    status: int | None = None
    events: int | None = None
    pending: bytes = b""

    def wait(self, timeout_s: float = 20.0) -> int:
        """Waits for the knot's exit (pidfd, with a deadline); returns its exit code or -signal."""
        if self.status is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout_s)
            finally:
                os.close(pidfd)
            assert ready, f"knot {self.pid} still running after {timeout_s}s"
            _, self.status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(self.status)

    def alive(self) -> bool:
        return self.status is None and os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def log_text(self) -> str:
        return self.log.read_text()

    def stderr_text(self) -> str:
        return self.stderr.read_text()

    def read_event(self, timeout_s: float = 20.0) -> str:
        """One line the service wrote to its fd 3 (the `events` pipe), with a deadline."""
        assert self.events is not None, "start the knot with events=True"
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.events], [], [], deadline - time.monotonic())
            assert ready, f"no event within {timeout_s}s; log: {self.log_text()!r}"
            chunk = os.read(self.events, 4096)
            assert chunk, f"events pipe closed; log: {self.log_text()!r} {self.stderr_text()!r}"
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()


@dataclasses.dataclass
class Env:
    tmp: Path
    image: Path
    devfs: Path
    mount_dir: Path
    state_root: Path
    host_resolv: Path
    host_hosts: Path
    started: list[Knot]
    native_init: Path | None  # None: the Python pid 1
    fork: bool | None = None  # spawn_knot's: None lets it choose (fork with a native init)

    def spec(self, script: str, **overrides: Any) -> KnotSpec:
        name = overrides.pop("name", "test/svc.0")
        base = KnotSpec(
            name=name, kind=Kind.DAEMON,
            container_config=str(self.image / "config" / "main.yaml"),
            config_filename="/etc/lithos/processes/test.yaml",
            image_root=str(self.image), mount_dir=str(self.mount_dir),
            state_dir=str(self.state_root / name), devfs_dir=str(self.devfs),
            volumes=(),
            resolv_conf=ResolvConf(mount=None, copy_from_host=True,
                                   source=str(self.host_resolv)),
            hosts_file=HostsFile(mount=None, copy_from_host=True, localhost=False,
                                 public_hostname=False, source=str(self.host_hosts)),
            uid=0, gid=0, uid_map=(), gid_map=(), fileno_limit=1024,
            executable="/bin/sh", argv=("/bin/sh", "-c", script), environ=(),
            pid_env_vars=(), workdir="/", secrets=None, tcp_fds=(), interactive=False,
            stdout_stderr_file=None, kill_timeout_s=5, restart_timeout_s=1,
            restart_process_only=False, normal_exit_codes=())
        return dataclasses.replace(base, **overrides)

    def start(self, spec: KnotSpec, inherited_fds: dict[int, int] | None = None,
              events: bool = False, status_fd: int | None = None,
              before_setup: Any = None) -> Knot:
        """Spawns a knot; with events=True the service's fd 3 is a pipe read by read_event."""
        fds = dict(inherited_fds or {})
        events_r = -1
        if events:
            events_r, events_w = os.pipe2(os.O_CLOEXEC)
            fds[3] = events_w
            spec = dataclasses.replace(spec, tcp_fds=tuple(sorted({*spec.tcp_fds, 3})))
        log = self.tmp / f"stdio-{len(self.started)}.log"
        err = self.tmp / f"stderr-{len(self.started)}.txt"
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = spawn_knot(spec, inherited_fds=fds, stdin=null,
                             stdout=err_fd, stderr=err_fd, stdio_log=log_fd,
                             status_fd=status_fd, native_init=self.native_init,
                             fork=self.fork, before_setup=before_setup)
        finally:
            for fd in (log_fd, err_fd, null):
                os.close(fd)
            if events:
                os.close(events_w)
        knot = Knot(pid=pid, spec=spec, log=log, stderr=err,
                    events=events_r if events else None)
        self.started.append(knot)
        return knot

    def run(self, spec: KnotSpec, timeout_s: float = 20.0) -> tuple[int, Knot]:
        knot = self.start(spec)
        return knot.wait(timeout_s), knot


def _mountinfo(under: Path) -> list[str]:
    """Host mounts whose mount point or source path is under `under`, without mount ids.

    Only our own paths: other suites may mount things on this host meanwhile.
    """
    lines = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if any(str(under) in f for f in fields[3:5]):
            lines.append(" ".join(fields[3:]))
    return sorted(lines)


@pytest.fixture(scope="session")
def devfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("devfs") / "dev"
    mkdev.make_devfs(str(root))
    yield root
    shutil.rmtree(root)


INIT_MODES = [m for m in initbin.MODES if os.environ.get(initbin.MODE_ENV, m) == m]


@pytest.fixture(scope="session")
def native_init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """knot/init.c compiled once per session (CI has cc and a static libc: tests/run).

    Without them the native-mode tests are skipped, unless LITHOS_KNOT_INIT=native asks
    for that mode explicitly: then they fail.
    """
    path, why = initbin.build(tmp_path_factory.mktemp("init-cache"))
    if path is None and os.environ.get(initbin.MODE_ENV) != "native":
        pytest.skip(f"native pid 1 cannot be built here: {why}")
    assert path is not None, why
    return path


@pytest.fixture(params=INIT_MODES)
def init_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(tmp_path: Path, devfs: Path, tmp_path_factory: pytest.TempPathFactory,
        init_mode: str, request: pytest.FixtureRequest) -> Iterator[Env]:
    native = (request.getfixturevalue("native_init_binary") if init_mode == "native"
              else None)
    base = tmp_path_factory.getbasetemp()
    before = _mountinfo(base)
    image = build_image(tmp_path / "image")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "state").mkdir()
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    hosts = tmp_path / "host-hosts"
    hosts.write_text("192.0.2.1 host-one")
    e = Env(tmp=tmp_path, image=image, devfs=devfs, mount_dir=tmp_path / "mnt",
            state_root=tmp_path / "state", host_resolv=resolv, host_hosts=hosts, started=[],
            native_init=native)
    try:
        yield e
    finally:
        for knot in e.started:
            if knot.status is None:
                os.kill(knot.pid, signal.SIGKILL)  # our unreaped child: it exists
                knot.wait()
            if knot.events is not None:
                os.close(knot.events)
        # The broker removes state dirs when a knot dies (E-30); here the test does.
        for knot in e.started:
            shutil.rmtree(knot.spec.state_dir, ignore_errors=True)
        shutil.rmtree(tmp_path, ignore_errors=True)
        assert _mountinfo(base) == before, "a knot test left a mount on the host"


@pytest.fixture
def start(env: Env, init_mode: str, native_init_binary: Path) -> Any:
    """start(mode, spec, **Env.start's keywords): a knot started the way `mode` says
    ("spawn": the native init posix_spawned, "fork": forked, "python": the Python pid 1);
    for tests that run every mode themselves (they run once, under the native init mode)."""
    if init_mode != "native":
        pytest.skip("runs every mode itself")

    def start_in(mode: str, spec: KnotSpec, **kw: Any) -> Knot:
        env.native_init = None if mode == "python" else native_init_binary
        env.fork = {"spawn": None, "fork": True, "python": False}[mode]
        return env.start(spec, **kw)

    return start_in
