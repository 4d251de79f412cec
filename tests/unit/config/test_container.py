"""Container config (1.4, 1.4.1, 1.4.2): every key, default and non-default; E-6."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from protocol.config import (
    Activation,
    ChoiceVar,
    ConfigError,
    DottedNameVar,
    HostsFile,
    IdMapEntry,
    Kind,
    NameVar,
    Persistent,
    Readonly,
    ResolvConf,
    Statedir,
    TcpPortConfig,
    TcpPortVar,
    Tmpfs,
    map_dir,
    parse_container,
)

FILE = "/images/web/config/main.yaml"


def test_defaults() -> None:
    c = parse_container(b"executable: /bin/true\n", FILE)
    assert c.path == Path(FILE)
    assert c.kind is Kind.DAEMON
    assert dict(c.variables) == {} and dict(c.volumes) == {}
    assert c.metadata is None
    assert c.user_id is None and c.group_id is None
    assert c.memory_limit == 0x7FFFFFFFFFFFFFFF
    assert c.fileno_limit == 1024
    assert c.cpu_shares == 1024
    assert c.restart_timeout == 1
    assert c.kill_timeout == 5
    assert c.executable == "/bin/true"
    assert c.arguments == ()
    assert dict(c.environ) == {} and dict(c.secret_environ) == {}
    assert c.secret_environ_file is None
    assert c.workdir == "/"
    assert c.resolv_conf == ResolvConf(None, True)
    assert c.hosts_file == HostsFile(None, True, None, None)
    assert not c.hosts_file.effective_localhost and not c.hosts_file.effective_public_hostname
    assert c.uid_map == () and c.gid_map == ()
    assert c.stdout_stderr_file is None
    assert c.interactive is False and c.restart_process_only is False
    assert c.normal_exit_codes == ()
    assert dict(c.tcp_ports) == {}


def test_every_key_non_default() -> None:
    c = parse_container(b"""\
kind: CommandOrDaemon
variables:
  port: !TcpPort
  sock: !TcpPort {activation: systemd}
  prio: !Choice [high, low]
  name: !Name
  host: !DottedName
metadata: {team: web, n: 1, tags: [a, b]}
volumes:
  /tmp: !Tmpfs {size: 100Mi, mode: 0o1777}
  /state: !Statedir {path: /sub, mode: 0o700, user: 1, group: 2}
  /data: !Persistent {path: /data, mkdir: true, mode: 0o755, user: 3, group: 4}
  /usr/share: !Readonly /share
user-id: 1000
group-id: 1001
memory-limit: 1Gi
fileno-limit: 64k
cpu-shares: 512
restart-timeout: 10
kill-timeout: 0
executable: /usr/bin/python3
arguments: [-m, app, 60]
environ: {LANG: C.UTF-8, N: 1}
secret-environ: {A: v2:xxx, B: [v2:y, v2:z]}
workdir: /app
resolv-conf: {mount: true, copy-from-host: false}
hosts-file: {mount: false, copy-from-host: false, localhost: true, public-hostname: false}
uid-map: [{inside: 0, outside: 1000, count: 2}]
gid-map: [{inside: 0, outside: 1000, count: 2}]
stdout-stderr-file: /log/out.log
interactive: true
restart-process-only: true
normal-exit-codes: [0, 42]
tcp-ports:
  8080: {fd: 4, host: 127.0.0.1, listen-backlog: 1000, reuse-addr: false, reuse-port: true,
         set-non-block: true, external: true}
""", FILE)
    assert c.kind is Kind.COMMAND_OR_DAEMON
    assert dict(c.variables) == {"port": TcpPortVar(), "sock": TcpPortVar(Activation.SYSTEMD),
                                 "prio": ChoiceVar(("high", "low")), "name": NameVar(),
                                 "host": DottedNameVar()}
    assert c.metadata == {"team": "web", "n": "1", "tags": ("a", "b")}
    assert dict(c.volumes) == {
        "/tmp": Tmpfs(104857600, 0o1777), "/state": Statedir("/sub", 0o700, 1, 2),
        "/data": Persistent("/data", True, 0o755, 3, 4), "/usr/share": Readonly("/share")}
    assert (c.user_id, c.group_id) == (1000, 1001)
    assert c.memory_limit == 2**30 and c.fileno_limit == 64000 and c.cpu_shares == 512
    assert (c.restart_timeout, c.kill_timeout) == (10, 0)
    assert c.arguments == ("-m", "app", "60")
    assert dict(c.environ) == {"LANG": "C.UTF-8", "N": "1"}
    assert dict(c.secret_environ) == {"A": ("v2:xxx",), "B": ("v2:y", "v2:z")}
    assert c.workdir == "/app"
    assert c.resolv_conf == ResolvConf(True, False)
    assert c.hosts_file == HostsFile(False, False, True, False)
    assert c.hosts_file.effective_localhost and not c.hosts_file.effective_public_hostname
    assert c.uid_map == (IdMapEntry(0, 1000, 2),) == c.gid_map
    assert c.stdout_stderr_file == "/log/out.log"
    assert c.interactive and c.restart_process_only
    assert c.normal_exit_codes == (0, 42)
    assert dict(c.tcp_ports) == {"8080": TcpPortConfig(
        4, ipaddress.IPv4Address("127.0.0.1"), 1000, False, True, True, True)}


def test_volume_defaults() -> None:
    c = parse_container(b"""\
executable: /x
volumes:
  /a: !Tmpfs
  /b: !Statedir
  /c: !Persistent {}
  /d: !Tmpfs {}
""", FILE)
    assert dict(c.volumes) == {"/a": Tmpfs(104857600, 0o777), "/b": Statedir("/", 0o777, 0, 0),
                               "/c": Persistent("/", False, 0o777, 0, 0),
                               "/d": Tmpfs(104857600, 0o777)}


def test_tcp_port_defaults() -> None:
    c = parse_container(b"executable: /x\ntcp-ports: {80: {fd: 0}}\n", FILE)
    assert c.tcp_ports["80"] == TcpPortConfig(0, ipaddress.IPv4Address("0.0.0.0"), 128,
                                              True, False, False, False)


@pytest.mark.parametrize(("text", "value"), [
    ("100Mi", 104857600), ("0o700", 448), ("1k", 1000), ("1_000", 1000), ("0x10", 16),
    ("0b101", 5), ("+7", 7), (" 5 ", 5), ("2M", 2_000_000), ("1G", 10**9), ("1ki", 1024),
    ("1Gi", 2**30),
])
def test_e6_units(text: str, value: int) -> None:
    c = parse_container(f"executable: /x\nvolumes: {{/t: !Tmpfs {{size: '{text}'}}}}\n".encode(),
                        FILE)
    assert c.volumes["/t"] == Tmpfs(value, 0o777)


@pytest.mark.parametrize(("yaml_text", "key", "needle"), [
    (b"volumes: {/t: !Tmpfs {size: 100m}}", "volumes./t.size", "use 100M or 100Mi"),
    (b"restart-timeout: 1.5", "restart-timeout", "fractions"),
])
def test_e6_rejected(yaml_text: bytes, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_container(b"executable: /x\n" + yaml_text + b"\n", FILE)
    [p] = err.value.problems
    assert (p.file, p.key) == (FILE, key) and needle in p.message


def test_map_dir_v4() -> None:
    table = {"/a": "/srv/a", "/ab": "/srv/ab"}
    assert map_dir("/a/b", table) == "/srv/a/b"
    assert map_dir("/ab", table) == "/srv/ab"
    assert map_dir("/abc", table) is None
    # lexicographic order, first match: "/" sorts first and wins (as Lithos does)
    assert map_dir("/a/b", {"/a": "/srv/a", "/": "/srv/root"}) == "/srv/root/a/b"
    assert map_dir("/x", {"/a": "/srv"}) is None
