"""The sandbox policy: (instance name, loaded configs) -> a StartPlan, or Denied.

Pure: no os, socket, time or subprocess. The broker's handlers load the configs
(the broker reads them itself, never from a request) and call `plan_start`;
everything the knot will do is decided here and checked against the sandbox,
which is the policy (DESIGN: Privilege and trust boundaries). Checks run in
s6-fdholderd's order: shape, then policy, then conflicts. Rules:
- The supervisor's word is never trusted for a uid, a path, a port or a limit;
  it only names `sandbox/process.N`, and N is checked against `instances`.
- Every Denied names the file, the key and the value, and what is allowed.
- The variable, port and id rules live in protocol.config.instantiate, so that
  lithos_check and the broker can never disagree; this module adds what only a
  start needs (volumes, secrets, the knot's spec).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from knot import spec as ks
from protocol.config import (
    ConfigError,
    ContainerConfig,
    InstantiatedContainer,
    IpAddress,
    Kind,
    MasterConfig,
    Persistent,
    ProcessConfig,
    Readonly,
    SandboxConfig,
    Statedir,
    TcpPortConfig,
    Tmpfs,
    check_process,
    instantiate,
    map_dir,
    map_id,
)
from protocol.errors import Denied
from protocol.names import InstanceName, parse_instance_name
from protocol.records import DenyCode
from protocol.secrets import allowed_namespaces
from protocol.structs import dataclass


@dataclass(frozen=True, slots=True)
class PortRequest:
    """One listening socket the broker provides at `fd` inside the container."""

    host: str
    port: int
    fd: int
    settings: TcpPortConfig


@dataclass(frozen=True, slots=True)
class NetPlan:
    """The network of one instance of a bridged sandbox (K-30..K-34)."""

    bridge: str
    address: IpAddress | None  # None: a netns with only lo, up (K-31)
    prefixlen: int  # of bridged-network.network
    gateway: IpAddress | None
    after_setup_command: tuple[str, ...]
    ports: tuple[PortRequest, ...]  # the non-external tcp-ports, opened inside the netns
    # Where the keys its errors name come from: bridged-network, ip-addresses, tcp-ports.
    files: tuple[tuple[str, str], ...] = ()
    # The service runs in a user namespace (uid-map/gid-map): the netns is the host
    # user namespace's, so its CAP_NET_BIND_SERVICE does not reach it (K-30).
    user_namespace: bool = False


@dataclass(frozen=True, slots=True)
class StartPlan:
    """Everything the broker does for one start, already checked."""

    name: str
    spec: ks.KnotSpec
    ports: tuple[PortRequest, ...]
    cgroup: str | None  # below the cgroup root, e.g. lithos.slice/web:app.0.scope
    memory_limit: int
    cpu_shares: int
    stdio_log: Path
    state_dir: Path
    network: NetPlan | None = None  # None: the host's network


def parse_instance(name: str) -> InstanceName:
    """`web/app.3` -> InstanceName; anything else (`..`, slashes, spaces) is Denied."""
    try:
        return parse_instance_name(name)
    except ValueError as e:
        raise Denied(DenyCode.UNKNOWN_INSTANCE, f"instance: {e}") from None


def _config_denied(err: ConfigError) -> Denied:
    return Denied(DenyCode.CONFIG_ERROR, str(err))


def check_daemon_instance(
    name: InstanceName, sandbox: SandboxConfig, processes: dict[str, ProcessConfig]
) -> ProcessConfig:
    """The process entry for `name`, which must be a Daemon with index < instances."""
    process = processes.get(name.process)
    if process is None:
        raise Denied(
            DenyCode.UNKNOWN_PROCESS,
            f"{name}: no process {name.process!r} in the process config of sandbox "
            f"{sandbox.name!r}",
        )
    if process.kind is not Kind.DAEMON:
        raise Denied(
            DenyCode.POLICY,
            f"{process.path}: {process.name}.kind: {process.kind.value} entries are run by "
            "lithos_cmd, never by the daemon",
        )
    if name.index >= process.instances:
        raise Denied(
            DenyCode.UNKNOWN_INSTANCE,
            f"{process.path}: {process.name}.instances: {process.instances}; instance "
            f"{name.index} is not configured",
        )
    return process


def resolve_volumes(
    container: ContainerConfig, sandbox: SandboxConfig, state_dir: Path
) -> tuple[ks.Volume, ...]:
    """Volumes as concrete mounts, in mount order (V-1: shortest mount point first)."""
    out = []
    cfile = container.path
    for target in sorted(container.volumes, key=lambda mp: (len(mp), mp)):
        volume = container.volumes[target]
        key = f"volumes.{target}"
        match volume:
            case Readonly(path=path):
                source = map_dir(path, sandbox.readonly_paths) or map_dir(
                    path, sandbox.writable_paths
                )
                if source is None:
                    raise Denied(
                        DenyCode.POLICY,
                        f"{cfile}: {key}: !Readonly {path} has no entry in readonly-paths "
                        f"(or writable-paths) of {sandbox.path}",
                    )
                out.append(ks.Volume(ks.VolumeKind.READONLY, target, source))
            case Persistent() | Statedir():
                user = map_id(volume.user, container.uid_map)
                group = map_id(volume.group, container.gid_map)
                if user is None or group is None:
                    raise Denied(
                        DenyCode.POLICY,
                        f"{cfile}: {key}: user {volume.user} / group {volume.group} is not "
                        "mapped by the container's uid-map/gid-map",
                    )
                if isinstance(volume, Persistent):
                    source = map_dir(volume.path, sandbox.writable_paths)
                    if source is None:
                        raise Denied(
                            DenyCode.POLICY,
                            f"{cfile}: {key}: !Persistent path {volume.path} has no entry in "
                            f"writable-paths of {sandbox.path}",
                        )
                    kind, mkdir = ks.VolumeKind.PERSISTENT, volume.mkdir
                else:
                    rel = PurePosixPath(volume.path).relative_to("/")
                    source = str(state_dir / rel) if str(rel) != "." else str(state_dir)
                    kind, mkdir = ks.VolumeKind.STATEDIR, True
                out.append(
                    ks.Volume(
                        kind, target, source, mode=volume.mode, mkdir=mkdir, user=user, group=group
                    )  # fmt: skip
                )
            case Tmpfs(size=size, mode=mode):
                out.append(ks.Volume(ks.VolumeKind.TMPFS, target, None, size_bytes=size, mode=mode))
    return tuple(out)


def _secrets(
    container: ContainerConfig, sandbox: SandboxConfig, process: ProcessConfig
) -> ks.Secrets | None:
    if not container.secret_environ and container.secret_environ_file is None:
        return None
    if sandbox.secrets_private_key is None:
        raise Denied(
            DenyCode.POLICY,
            f"{container.path}: secret-environ: the sandbox {sandbox.path} has no "
            "secrets-private-key to decrypt it with",
        )
    if container.secret_environ and container.secret_environ_file is not None:
        raise Denied(
            DenyCode.CONFIG_ERROR,
            f"{container.path}: secret-environ-file: secret-environ and secret-environ-file "
            "are mutually exclusive",
        )
    environ_file = None
    if container.secret_environ_file is not None:
        # Relative to the container config's directory inside the image (1.4).
        config_dir = PurePosixPath(process.config).parent
        environ_file = str(config_dir / container.secret_environ_file)
        if ".." in environ_file.split("/"):
            raise Denied(
                DenyCode.CONFIG_ERROR,
                f"{container.path}: secret-environ-file: {container.secret_environ_file!r} "
                "must not contain '..'",
            )
    return ks.Secrets(
        key_file=str(sandbox.secrets_private_key),
        namespaces=tuple(
            sorted(allowed_namespaces(sandbox.secrets_namespaces, process.extra_secrets_namespaces))
        ),
        environ=tuple(sorted(container.secret_environ.items())),
        environ_file=environ_file,
    )


def plan_start(
    name: str,
    master: MasterConfig,
    sandbox: SandboxConfig,
    processes: dict[str, ProcessConfig],
    container: ContainerConfig,
) -> StartPlan:
    """Everything one start of daemon instance `name` does, checked against the sandbox.

    Raises:
        Denied: naming the file, the key and the value at fault.
    """
    inst = parse_instance(name)
    process = check_daemon_instance(inst, sandbox, processes)
    problems = check_process(sandbox, process)
    if problems:
        raise _config_denied(ConfigError(problems))
    try:
        made = instantiate(container, process, sandbox, name, inst.index)
    except ConfigError as e:
        raise _config_denied(e) from None
    state_dir = master.state_dir / inst.sandbox / f"{inst.process}.{inst.index}"
    spec = build_spec(made, master, sandbox, state_dir)
    bridged = sandbox.bridged_network is not None
    ports = tuple(
        PortRequest(str(cfg.host), port, cfg.fd, cfg)
        for port, cfg in made.tcp_ports.items()
        if not bridged or cfg.external
    )
    network = plan_network(made, sandbox, user_namespace=bool(spec.uid_map or spec.gid_map))
    for p in ports + (network.ports if network is not None else ()):
        if p.fd in (1, 2):
            raise Denied(
                DenyCode.CONFIG_ERROR,
                f"{container.path}: tcp-ports.{p.port}.fd: {p.fd} is stdout/stderr "
                "(use 0 or a number >= 3)",
            )
    cgroup = None
    if master.cgroup_name is not None:
        cgroup = f"{master.cgroup_name}/{inst.sandbox}:{inst.process}.{inst.index}.scope"
    return StartPlan(
        name=name,
        spec=spec,
        ports=ports,
        cgroup=cgroup,
        memory_limit=container.memory_limit,
        cpu_shares=container.cpu_shares,
        stdio_log=master.stdio_log_dir / f"{inst.sandbox}.log",
        state_dir=state_dir,
        network=network,
    )


def plan_network(made: InstantiatedContainer, sandbox: SandboxConfig, *,
                 user_namespace: bool = False) -> NetPlan | None:
    """The instance's NetPlan in a bridged sandbox, None otherwise (K-30).

    The addresses were checked against `network` by check_process (K-35, also at
    start time: inventory rule 2); `made.ip_address` is ip-addresses[index] or None.
    """
    net = sandbox.bridged_network
    if net is None:
        return None
    inside = tuple(
        PortRequest(str(cfg.host), port, cfg.fd, cfg)
        for port, cfg in made.tcp_ports.items()
        if not cfg.external
    )
    return NetPlan(
        bridge=net.bridge,
        address=made.ip_address,
        prefixlen=net.network.prefixlen,
        gateway=net.default_gateway,
        after_setup_command=net.after_setup_command,
        ports=inside,
        files=(
            ("bridged-network", str(sandbox.path)),
            ("ip-addresses", str(made.process.path)),
            ("tcp-ports", str(made.container.path)),
        ),
        user_namespace=user_namespace,
    )


def build_spec(
    made: InstantiatedContainer, master: MasterConfig, sandbox: SandboxConfig, state_dir: Path
) -> ks.KnotSpec:
    """The knot's spec for an instantiated container (daemon or command)."""
    container, process = made.container, made.process
    use_sandbox_maps = bool(sandbox.uid_map or sandbox.gid_map)
    maps_from = sandbox if use_sandbox_maps else container
    hosts = container.hosts_file
    copy = hosts.copy_from_host
    kind = ks.Kind.DAEMON if process.kind is Kind.DAEMON else ks.Kind.COMMAND
    return ks.KnotSpec(
        name=made.name,
        kind=kind,
        container_config=str(container.path),
        config_filename=process.config,
        image_root=str(sandbox.image_dir / process.image),
        mount_dir=str(master.mount_dir),
        state_dir=str(state_dir),
        devfs_dir=str(master.devfs_dir),
        volumes=resolve_volumes(container, sandbox, state_dir),
        resolv_conf=ks.ResolvConf(
            mount=container.resolv_conf.mount,
            copy_from_host=container.resolv_conf.copy_from_host,
            source=str(sandbox.resolv_conf),
        ),
        hosts_file=ks.HostsFile(
            mount=hosts.mount,
            copy_from_host=copy,
            localhost=hosts.localhost if hosts.localhost is not None else not copy,
            public_hostname=(
                hosts.public_hostname if hosts.public_hostname is not None else not copy
            ),
            source=str(sandbox.hosts_file),
            additional_hosts=tuple(sorted(sandbox.additional_hosts.items())),
        ),
        uid=made.user_id,
        gid=made.group_id,
        uid_map=tuple(ks.IdMap(m.inside, m.outside, m.count) for m in maps_from.uid_map),
        gid_map=tuple(ks.IdMap(m.inside, m.outside, m.count) for m in maps_from.gid_map),
        fileno_limit=container.fileno_limit,
        executable=made.executable,
        argv=(made.executable, *made.arguments),
        environ=tuple(made.environ.items()),
        pid_env_vars=made.pid_environ,
        workdir=container.workdir,
        secrets=_secrets(container, sandbox, process),
        tcp_fds=tuple(sorted(cfg.fd for cfg in made.tcp_ports.values())),
        interactive=container.interactive,
        stdout_stderr_file=container.stdout_stderr_file,
        kill_timeout_s=float(container.kill_timeout),
        restart_timeout_s=float(container.restart_timeout),
        restart_process_only=container.restart_process_only,
        normal_exit_codes=container.normal_exit_codes,
        net_bind_service=sandbox.bridged_network is not None,
    )
