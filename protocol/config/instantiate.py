"""Making one instance of a container: variables, ports, ids (inventory 1.5, K-11).

Owns `instantiate()` (container + process entry + sandbox + instance ->
InstantiatedContainer), `substitute()` (V-12), `instance_fingerprint()`
(the P-2 identity that drives upgrades, T-30) and `process_config_log_json()`
(the T-27 config log line). Rules: substitution happens only in arguments,
environ values and tcp-ports keys (V-13); every declared variable must have a
valid value and every `@{x}` must be declared or built in; sandbox policy
(allow-tcp-ports, allow-users/groups, maps) is enforced here so the broker
and lithos_check agree. Every problem is collected. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from protocol.structs import dataclass

from .container import ContainerConfig, TcpPortConfig
from .errors import ConfigError, Problem
from .idranges import IdRanges
from .process import ProcessConfig
from .reader import IpAddress
from .sandbox import IdMapEntry, SandboxConfig
from .vartypes import Activation, TcpPortVar
from .volumes import Persistent, Readonly, Statedir, map_dir

__all__ = ["BUILTIN_VARIABLES", "InstantiatedContainer", "check_container", "check_ids",
           "config_log_line", "instance_fingerprint", "instantiate", "map_id",
           "process_config_log_json", "references", "substitute", "volume_problems"]

PID_VAR = "lithos:pid"
BUILTIN_VARIABLES = frozenset({"lithos:name", "lithos:config_filename", PID_VAR})
LISTEN_VARS = ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")


@dataclass(frozen=True, slots=True)
class InstantiatedContainer:
    """A container config made concrete for one instance (`sb/proc.3`)."""

    name: str
    index: int
    container: ContainerConfig
    process: ProcessConfig
    executable: str
    arguments: tuple[str, ...]
    environ: Mapping[str, str]
    pid_environ: tuple[str, ...]
    """Environ keys set to the app's pid (in its pid namespace) at exec (V-15, V-17)."""
    tcp_ports: Mapping[int, TcpPortConfig]
    user_id: int
    group_id: int
    ip_address: IpAddress | None


def references(text: str) -> list[str]:
    """The trimmed names of every `@{name}` in `text`, left to right (V-12)."""
    names: list[str] = []
    start = text.find("@{")
    while start >= 0:
        end = text.find("}", start + 2)
        if end < 0:
            break
        names.append(text[start + 2:end].strip())
        start = text.find("@{", end + 1)
    return names


def substitute(text: str, values: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace every `@{name}` found in `values`; return the text and the unknown names."""
    out: list[str] = []
    unknown: list[str] = []
    pos = 0
    while True:
        start = text.find("@{", pos)
        end = text.find("}", start + 2) if start >= 0 else -1
        if start < 0 or end < 0:          # an unterminated `@{` stays raw text
            out.append(text[pos:])
            return "".join(out), unknown
        name = text[start + 2:end].strip()
        out.append(text[pos:start])
        if name in values:
            out.append(values[name])
        else:
            unknown.append(name)
            out.append(text[start:end + 1])
        pos = end + 1


def _id_problems(file: str, what: str, key: str, value: int, allow: IdRanges,
                 container_map: tuple[IdMapEntry, ...], allow_name: str) -> list[Problem]:
    problems: list[Problem] = []
    if container_map:
        if not any(e.inside <= value < e.inside + e.count for e in container_map):
            problems.append(Problem(file, key, str(value), f"is not in the container's "
                                    f"{what}-map (K-11)"))
        for i, e in enumerate(container_map):
            if not allow.covers(e.outside, e.outside + e.count - 1):
                problems.append(Problem(file, f"{what}-map[{i}]",
                                        f"outside {e.outside} count {e.count}",
                                        f"is not inside {allow_name} {allow}"))
    elif value not in allow:
        problems.append(Problem(file, key, str(value), f"is not in {allow_name} {allow}"))
    return problems


def check_ids(container: ContainerConfig, sandbox: SandboxConfig) -> tuple[int, int, list[Problem]]:
    """The effective uid and gid and the K-11 problems (uid-map/gid-map, allow ranges)."""
    file = str(container.path)
    problems: list[Problem] = []
    uid = container.user_id if container.user_id is not None else sandbox.default_user
    gid = container.group_id if container.group_id is not None else sandbox.default_group
    sandbox_maps = bool(sandbox.uid_map or sandbox.gid_map)
    if sandbox_maps and (container.uid_map or container.gid_map):
        problems.append(Problem(file, "uid-map", "", "cannot be used: the sandbox "
                                f"{sandbox.path} already has uid-map/gid-map"))
    if uid is None:
        problems.append(Problem(file, "user-id", "", f"is not set and the sandbox "
                                f"{sandbox.path} has no default-user"))
        uid = 0
    else:
        problems += _id_problems(file, "uid", "user-id", uid, sandbox.allow_users,
                                 () if sandbox_maps else container.uid_map,
                                 f"allow-users ({sandbox.path})")
    problems += _id_problems(file, "gid", "group-id", gid, sandbox.allow_groups,
                             () if sandbox_maps else container.gid_map,
                             f"allow-groups ({sandbox.path})")
    checked = [("gid", gid, sandbox.gid_map)]
    if not any(p.key == "user-id" for p in problems):
        checked.append(("uid", uid, sandbox.uid_map))
    for what, value, sbmap in checked:
        if sbmap and not any(e.inside <= value < e.inside + e.count for e in sbmap):
            problems.append(Problem(file, f"{'user' if what == 'uid' else 'group'}-id",
                                    str(value), f"is not in the sandbox {what}-map "
                                    f"({sandbox.path})"))
    return uid, gid, problems


def map_id(value: int, maps: tuple[IdMapEntry, ...]) -> int | None:
    """A uid/gid inside the container as the host sees it (None: not mapped)."""
    if not maps:
        return value
    for m in maps:
        if m.inside <= value < m.inside + m.count:
            return m.outside + (value - m.inside)
    return None


def volume_problems(container: ContainerConfig, sandbox: SandboxConfig) -> list[Problem]:
    """The volumes the sandbox does not allow: a !Readonly path with no entry in
    readonly-paths (or writable-paths), a !Persistent path with none in writable-paths,
    an owner the uid-map/gid-map does not map. The broker mounts nothing of such a
    container (broker/policy.py); lithos_check and the supervisor refuse it too, so a
    switch to it keeps what runs (#11)."""
    cfile, sfile = str(container.path), str(sandbox.path)
    out = []
    for target, volume in container.volumes.items():
        key = f"volumes.{target}"
        if isinstance(volume, Readonly):
            if (map_dir(volume.path, sandbox.readonly_paths) is None
                    and map_dir(volume.path, sandbox.writable_paths) is None):
                out.append(Problem(cfile, key, f"!Readonly {volume.path}", "has no entry in "
                                   f"readonly-paths (or writable-paths) of {sfile}"))
        elif isinstance(volume, Persistent | Statedir):
            if (map_id(volume.user, container.uid_map) is None
                    or map_id(volume.group, container.gid_map) is None):
                out.append(Problem(cfile, key, f"user {volume.user} / group {volume.group}",
                                   "is not mapped by the container's uid-map/gid-map"))
            if (isinstance(volume, Persistent)
                    and map_dir(volume.path, sandbox.writable_paths) is None):
                out.append(Problem(cfile, key, f"!Persistent {volume.path}",
                                   f"has no entry in writable-paths of {sfile}"))
    return out


def instantiate(container: ContainerConfig, process: ProcessConfig, sandbox: SandboxConfig,
                name: str, index: int) -> InstantiatedContainer:
    """Substitute variables and check the result against the sandbox policy.

    Raises:
        ConfigError: listing every problem (variables, ports, ids, ip addresses).
    """
    cfile, pfile = str(container.path), str(process.path)
    problems: list[Problem] = []
    values = _variable_values(container, process, problems)
    values["lithos:name"] = name
    values["lithos:config_filename"] = process.config

    def sub(key: str, text: str) -> str:
        result, unknown = substitute(text, values)
        for ref in unknown:
            why = ("can only be a whole environ value" if ref == PID_VAR
                   else "is not a declared variable (declare it under variables:)")
            problems.append(Problem(cfile, key, f"@{{{ref}}}", why))
        return result

    arguments = tuple(sub(f"arguments[{i}]", a) for i, a in enumerate(container.arguments))
    environ: dict[str, str] = {}
    pid_environ: list[str] = []
    for key, text in container.environ.items():
        if text == "@{" + PID_VAR + "}":      # V-15: only as the whole value
            pid_environ.append(key)
        else:
            environ[key] = sub(f"environ.{key}", text)
    ports = {key: sub(f"tcp-ports.{key}", key) for key in container.tcp_ports}
    final_ports, origin = _final_ports(container, ports, values, problems)
    activated = _activated(container)
    if activated:                             # V-17: these override environ
        environ["LISTEN_FDS"] = str(len(activated))
        environ["LISTEN_FDNAMES"] = ":".join(activated)
        pid_environ.append("LISTEN_PID")
    problems += _port_policy(container, process, sandbox, values, final_ports, origin)
    uid, gid, id_problems = check_ids(container, sandbox)
    problems += id_problems
    ip: IpAddress | None = None
    if process.ip_addresses:
        if index < len(process.ip_addresses):
            ip = process.ip_addresses[index]
        else:
            problems.append(Problem(pfile, f"{process.name}.ip-addresses", "",
                                    f"has {len(process.ip_addresses)} addresses, too few for "
                                    f"instance {index}"))
    if not container.kind.matches(process.kind):
        problems.append(Problem(cfile, "kind", container.kind.value, f"does not match kind "
                                f"{process.kind.value} of {process.name} in {pfile}"))
    has_secrets = bool(container.secret_environ) or container.secret_environ_file is not None
    if has_secrets and sandbox.secrets_private_key is None:
        # The broker refuses such a start (broker/policy.py); refused here too, a
        # switch to it would stop what runs for a start that cannot succeed (#11).
        key = "secret-environ" if container.secret_environ else "secret-environ-file"
        problems.append(Problem(cfile, key, "", f"needs a secrets-private-key in the sandbox "
                                f"config {sandbox.path}, which has none"))
    problems += volume_problems(container, sandbox)
    if problems:
        raise ConfigError(problems)
    return InstantiatedContainer(
        name=name, index=index, container=container, process=process,
        executable=container.executable, arguments=arguments,
        environ=MappingProxyType(environ), pid_environ=tuple(sorted(set(pid_environ))),
        tcp_ports=MappingProxyType(dict(sorted(final_ports.items()))),
        user_id=uid, group_id=gid, ip_address=ip)


def _variable_values(container: ContainerConfig, process: ProcessConfig,
                     problems: list[Problem]) -> dict[str, str]:
    """The values of the declared variables, each checked against its type (V-10)."""
    cfile, pfile = str(container.path), str(process.path)
    values: dict[str, str] = {}
    for var, vtype in container.variables.items():
        if var not in process.variables:
            problems.append(Problem(pfile, f"{process.name}.variables", var,
                                    f"is declared in {cfile} but has no value"))
            continue
        value = process.variables[var]
        complaint = vtype.check(value)
        if complaint:
            problems.append(Problem(pfile, f"{process.name}.variables.{var}", value,
                                    f"{complaint} (declared in {cfile})"))
        values[var] = value
    return values


def _final_ports(container: ContainerConfig, substituted: Mapping[str, str],
                 values: Mapping[str, str], problems: list[Problem],
                 ) -> tuple[dict[int, TcpPortConfig], dict[int, str]]:
    """Port number -> settings after substitution and activation, and where each came from."""
    cfile = str(container.path)
    ports: dict[int, TcpPortConfig] = {}
    origin: dict[int, str] = {}
    for key, port_cfg in container.tcp_ports.items():
        text = substituted[key].strip()
        if not (text.isascii() and text.isdigit()) or int(text) > 65535:
            problems.append(Problem(cfile, f"tcp-ports.{key}", text, "is not a port number "
                                    "(0..65535) after substitution"))
            continue
        port = int(text)
        if port in ports:
            problems.append(Problem(cfile, f"tcp-ports.{key}", text, f"is the same port as "
                                    f"tcp-ports.{origin[port]}"))
            continue
        ports[port], origin[port] = port_cfg, key
    by_fd: dict[int, int] = {}
    for port, cfg in ports.items():
        if cfg.fd in by_fd:
            problems.append(Problem(cfile, f"tcp-ports.{origin[port]}.fd", str(cfg.fd),
                                    f"is also the fd of port {by_fd[cfg.fd]}"))
        by_fd.setdefault(cfg.fd, port)
    problems += _stdio_fd_problems(container) + _activation_problems(container)
    activated_ports: dict[int, str] = {}
    for k, var in enumerate(_activated(container), start=1):
        text = values.get(var, "")
        if not (text.isascii() and text.isdigit() and int(text) <= 65535):
            continue                          # already reported by _variable_values
        port = int(text)
        if port in activated_ports:
            problems.append(Problem(cfile, f"variables.{var}", text, f"is the same port as "
                                    f"variable {activated_ports[port]!r} (activation: systemd)"))
            continue
        activated_ports[port] = var
        ports[port] = TcpPortConfig(fd=2 + k)   # replaces an explicit entry (V-17)
        origin[port] = f"@{{{var}}}"
    return ports, origin


def _port_policy(container: ContainerConfig, process: ProcessConfig, sandbox: SandboxConfig,
                 values: Mapping[str, str], ports: Mapping[int, TcpPortConfig],
                 origin: Mapping[int, str]) -> list[Problem]:
    """allow-tcp-ports for TcpPort values and final ports, unless bridged and not external."""
    problems: list[Problem] = []
    allowed = sandbox.allow_tcp_ports
    bridged = sandbox.bridged_network is not None
    reported: set[int] = set()
    for var, vtype in container.variables.items():
        text = values.get(var, "")
        if isinstance(vtype, TcpPortVar) and not bridged and vtype.check(text) is None \
                and int(text) not in allowed:
            reported.add(int(text))
            problems.append(Problem(str(process.path), f"{process.name}.variables.{var}", text,
                                    f"is not in allow-tcp-ports {allowed} ({sandbox.path})"))
    for port, cfg in ports.items():
        if (not bridged or cfg.external) and port not in allowed and port not in reported:
            problems.append(Problem(str(container.path), f"tcp-ports.{origin[port]}", str(port),
                                    f"is not in allow-tcp-ports {allowed} ({sandbox.path})"))
    return problems


def _entry_json(process: ProcessConfig, ip_key: str, ips: list[str]) -> dict[str, object]:
    out: dict[str, object] = {"instances": process.instances, "image": process.image,
                              "config": process.config}
    if process.variables:
        out["variables"] = dict(sorted(process.variables.items()))
    if process.extra_secrets_namespaces:
        out["extra_secrets_namespaces"] = list(process.extra_secrets_namespaces)
    if ips:
        out[ip_key] = ips[0] if ip_key == "ip_address" else ips
    out["kind"] = process.kind.value
    return out


def instance_fingerprint(process: ProcessConfig, index: int) -> str:
    """The compact JSON identity of instance `index` (P-2); a change means restart (T-30)."""
    ips = [str(process.ip_addresses[index])] if index < len(process.ip_addresses) else []
    out = _entry_json(process, "ip_address", ips)
    out["instances"] = 1
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def process_config_log_json(processes: Mapping[str, ProcessConfig]) -> str:
    """The JSON of a whole process config for the config log line (T-27), keys sorted."""
    out = {name: _entry_json(p, "ip_addresses", [str(ip) for ip in p.ip_addresses])
           for name, p in sorted(processes.items())}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)



def check_container(container: ContainerConfig) -> list[Problem]:
    """The container-alone checks of `lithos_check --check-container` (2.4):
    every `@{x}` is declared or built in, `@{lithos:pid}` only as a whole environ
    value, and activation conflicts (V-17). Built-ins pass (decision 3, E-42)."""
    file = str(container.path)
    problems: list[Problem] = []
    known = set(container.variables) | (BUILTIN_VARIABLES - {PID_VAR})
    places = [(f"arguments[{i}]", a) for i, a in enumerate(container.arguments)]
    places += [(f"environ.{k}", v) for k, v in container.environ.items()
               if v != "@{" + PID_VAR + "}"]
    places += [(f"tcp-ports.{k}", k) for k in container.tcp_ports]
    for key, text in places:
        for ref in references(text):
            if ref == PID_VAR:
                problems.append(Problem(file, key, text, "uses @{lithos:pid}, which can only "
                                        "be a whole environ value"))
            elif ref not in known:
                problems.append(Problem(file, key, f"@{{{ref}}}", "is not a declared variable "
                                        "(declare it under variables:)"))
    return problems + _stdio_fd_problems(container) + _activation_problems(container)


def _stdio_fd_problems(container: ContainerConfig) -> list[Problem]:
    """A socket on fd 1 or 2 would replace the service's stdout/stderr: refused."""
    return [Problem(str(container.path), f"tcp-ports.{key}.fd", str(cfg.fd),
                    "is stdout/stderr (use 0 or a number >= 3)")
            for key, cfg in container.tcp_ports.items() if cfg.fd in (1, 2)]


def _activated(container: ContainerConfig) -> list[str]:
    """Variables with `activation: systemd`, sorted by name (V-17, E-10)."""
    return sorted(v for v, t in container.variables.items()
                  if isinstance(t, TcpPortVar) and t.activation is Activation.SYSTEMD)


def _activation_problems(container: ContainerConfig) -> list[Problem]:
    file = str(container.path)
    problems: list[Problem] = []
    activated = _activated(container)
    if activated:
        for listen in LISTEN_VARS:
            for where, table in (("environ", container.environ),
                                 ("secret-environ", container.secret_environ)):
                if listen in table:
                    problems.append(Problem(file, f"{where}.{listen}", "", "must not be set "
                                            "when a variable uses activation: systemd (V-17)"))
        fds = {2 + k: var for k, var in enumerate(activated, start=1)}
        for key, cfg in container.tcp_ports.items():
            if cfg.fd in fds and references(key) != [fds[cfg.fd]]:
                problems.append(Problem(file, f"tcp-ports.{key}.fd", str(cfg.fd),
                                        f"conflicts with variable {fds[cfg.fd]!r} (activation: "
                                        "systemd takes this fd; use a higher fd)"))
    return problems


def config_log_line(processes: Mapping[str, ProcessConfig], utc_seconds: int) -> str:
    """One config-log line (T-27): `<RFC3339 UTC seconds> <JSON>\n`; time is an input."""
    stamp = datetime.fromtimestamp(utc_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp} {process_config_log_json(processes)}\n"
