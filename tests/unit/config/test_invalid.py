"""Invalid configs: each names the file, the key, and says something useful (STYLE P8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocol.config import (
    ConfigError,
    parse_container,
    parse_master,
    parse_processes,
    parse_sandbox,
)
from protocol.config.reader import closest

F = "/cfg/file.yaml"
EXE = "executable: /bin/x\n"


def master(text: str) -> Any:
    return parse_master(text.encode(), F)


def sandbox(text: str) -> Any:
    return parse_sandbox(text.encode(), F, "sb")


def procs(text: str) -> Any:
    return parse_processes(text.encode(), F)


def container(text: str) -> Any:
    return parse_container((EXE + text).encode(), F)


def bare_container(text: str) -> Any:
    return parse_container(text.encode(), F)


CASES: list[tuple[Callable[[str], Any], str, str, str]] = [
    # master
    (master, "sandbox-dir: /x", "sandbox-dir", "did you mean 'sandboxes-dir'"),
    (master, "runtime-dir: run", "runtime-dir", "absolute"),
    (master, "log-level: off", "log-level", "not a log level"),
    (master, "log-level: [warn]", "log-level", "single value"),
    (master, "syslog-facility: local9", "syslog-facility", "not a syslog facility"),
    (master, "cgroup-controllers: name", "cgroup-controllers", "sequence"),
    (master, "cgroup-controllers: null", "cgroup-controllers", "sequence"),
    (master, "sandboxes-dir: ~", "sandboxes-dir", "not null"),
    (master, "syslog-name: a\nsyslog-app-name: b", "syslog-name", "same key"),
    (master, "supervisor-user: {a: 1}", "supervisor-user", "single value"),
    # sandbox
    (sandbox, "allow-users: [1-x]", "allow-users[0]", "not a range"),
    (sandbox, "allow-users: [10-1]", "allow-users[0]", "after its end"),
    (sandbox, "allow-users: [99999999999]", "allow-users[0]", "larger than"),
    (sandbox, "allow-users: 1-10", "allow-users", "sequence"),
    (sandbox, "default-user: 1k", "default-user", "units and prefixes"),
    (sandbox, "default-group: -1", "default-group", "at least 0"),
    (sandbox, "image-dir-levels: 0", "image-dir-levels", "at least 1"),
    (sandbox, "image-dir-levels: 17", "image-dir-levels", "at most 16"),
    (sandbox, "auto-clean: yes", "auto-clean", "true or false"),
    (sandbox, "auto-clean: True", "auto-clean", "true or false"),
    (sandbox, "readonly-paths: {usr: /usr}", "readonly-paths.usr", "absolute"),
    (sandbox, "writable-paths: {/data: ../x}", "writable-paths./data", "absolute"),
    (sandbox, "additional-hosts: {db: not-an-ip}", "additional-hosts.db", "IP address"),
    (sandbox, "uid-map: [{inside: 0, outside: 1}]", "uid-map[0].count", "required"),
    (sandbox, "uid-map: [{inside: 0, outside: 1, count: 0}]", "uid-map[0].count", "at least 1"),
    (sandbox, "gid-map: [{inside: 0, outside: 1, count: 1, extra: 1}]", "gid-map[0].extra",
     "not a known key"),
    (sandbox, "bridged-network: {network: 10.0.0.0/24}", "bridged-network.bridge", "required"),
    (sandbox, "bridged-network: {bridge: br0, network: 10.0.0.0/33}",
     "bridged-network.network", "not a network"),
    (sandbox, "bridged-network: {bridge: br0, network: 10.0.0.0/24, default-gateway: x}",
     "bridged-network.default-gateway", "IP address"),
    (sandbox, "bridged-network: {bridge: '', network: 10.0.0.0/24}", "bridged-network.bridge",
     "interface name"),
    (sandbox, "bridged-network: {bridge: a-very-long-bridge-name, network: 10.0.0.0/24}",
     "bridged-network.bridge", "1..15 bytes"),
    (sandbox, "allow-user: [1]", "allow-user", "did you mean 'allow-users'"),
    (sandbox, "secrets-namespaces: x", "secrets-namespaces", "sequence"),
    # processes
    (procs, "w: {image: i}", "w.config", "required"),
    (procs, "w: {config: /c}", "w.image", "required"),
    (procs, "w: {image: i, config: /c, instances: -1}", "w.instances", "at least 0"),
    (procs, "w: {image: i, config: /c, instances: many}", "w.instances", "not a number"),
    (procs, "w: {image: i, config: /c, kind: daemon}", "w.kind", "case matters"),
    (procs, "w: {image: i, config: /c, ip-addresses: [10.0.0.300]}", "w.ip-addresses[0]",
     "IP address"),
    (procs, "w: {image: i, config: /c, variables: [a]}", "w.variables", "mapping"),
    (procs, "w: {image: i, config: /c, instance: 2}", "w.instance", "did you mean 'instances'"),
    (procs, "w: [a]", "w", "mapping"),
    # container
    (bare_container, "user-id: 1", "executable", "required"),
    (container, "kind: daemon", "kind", "is not one of Daemon, Command, CommandOrDaemon"),
    (container, "user-id: -1", "user-id", "at least 0"),
    (container, "user-id: 4294967296", "user-id", "at most 4294967295"),
    (container, "memory-limit: 1GB", "memory-limit", "unknown unit"),
    (container, "memory-limit: 100m", "memory-limit", "use 100M or 100Mi"),
    (container, "fileno-limit: lots", "fileno-limit", "not a number"),
    (container, "restart-timeout: 1.5", "restart-timeout", "fractions"),
    (container, "restart-timeout: 86401", "restart-timeout", "at most 86400"),
    (container, "kill-timeout: ''", "kill-timeout", "empty"),
    (container, "arguments: --flag", "arguments", "sequence"),
    (container, "arguments: [[a]]", "arguments[0]", "single value"),
    (container, "environ: [A=1]", "environ", "mapping"),
    (container, "environ:\n  A: !Name", "environ.A", "tag !Name is not expected"),
    (container, "interactive: 1", "interactive", "true or false"),
    (container, "normal-exit-codes: [256]", "normal-exit-codes[0]", "at most 255"),
    (container, "volumes: {/tmp: !Tmpfs {size: 100m}}", "volumes./tmp.size", "100M or 100Mi"),
    (container, "volumes: {/tmp: !Tmpfs {mode: 0o2000}}", "volumes./tmp.mode", "at most 1023"),
    (container, "volumes: {/tmp: !Tmpfs {sise: 1}}", "volumes./tmp.sise", "did you mean 'size'"),
    (container, "volumes: {tmp: !Tmpfs {}}", "volumes.tmp", "absolute"),
    (container, "volumes: {/a/../b: !Tmpfs {}}", "volumes./a/../b", "'..'"),
    (container, "volumes: {/d: !Readonly data}", "volumes./d", "absolute"),
    (container, "volumes: {/d: !Persistent /db}", "volumes./d", "write !Persistent {path: /db}"),
    (container, "volumes: {/d: !Persistent {path: /a/../../etc}}", "volumes./d.path", "'..'"),
    (container, "volumes: {/d: /x}", "volumes./d", "one of the tags"),
    (container, "volumes: {/d: !TcpPort {}}", "volumes./d", "one of the tags"),
    (container, "variables:\n  p: 1", "variables.p", "one of the tags"),
    (container, "variables:\n  p: !TcpPort {activation: none}", "variables.p.activation",
     "only systemd"),
    (container, "variables:\n  p: !Name x", "variables.p", "takes no value"),
    (container, "variables:\n  p: !Choice []", "variables.p", "at least one choice"),
    (container, "variables:\n  p: !Tmpfs {}", "variables.p", "one of the tags"),
    (container, "tcp-ports: {80: {}}", "tcp-ports.80.fd", "required"),
    (container, "tcp-ports: {80: {fd: 3, host: localhost}}", "tcp-ports.80.host", "IP address"),
    (container, "tcp-ports: {80: {fd: 3, listen-backlog: 1k}}", "tcp-ports.80.listen-backlog",
     "units"),
    (container, "tcp-ports: {80: {fd: 3, reuse-port: on}}", "tcp-ports.80.reuse-port",
     "true or false"),
    (container, "resolv-conf: {copy_from_host: maybe}", "resolv-conf.copy_from_host",
     "true or false"),
    (container, "hosts-file: {localhost: yes}", "hosts-file.localhost", "true or false"),
    (container, "secret-environ: {A: x}\nsecret-environ-file: /s.yaml", "secret-environ-file",
     "mutually exclusive"),
    (container, "executable: /bin/y", "executable", "given twice"),
    (container, "workdir: ~", "workdir", "not null"),
    (container, "stdout-stderr-file: [a]", "stdout-stderr-file", "single value"),
    (container, "uid-map: {inside: 0}", "uid-map", "sequence"),
    (container, 'arguments: ["a\\0b"]', "arguments[0]", "NUL"),
    (container, "environ: {'A=B': x}", "environ.A=B", "environment variable name"),
    (container, "secret-environ: {'': x}", "secret-environ.", "environment variable name"),
    (procs, "w: {image: i, config: /c, instances: 1M}", "w.instances", "at most 65535"),
    (master, "supervisor-user: ''", "supervisor-user", "user name"),
]


@pytest.mark.parametrize(("load", "text", "key", "needle"), CASES,
                         ids=[f"{c[0].__name__}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_invalid(load: Callable[[str], Any], text: str, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(text + "\n")
    problems = err.value.problems
    assert all(p.file == F for p in problems)
    matching = [p for p in problems if p.key == key]
    assert matching, f"no problem with key {key!r} in {[str(p) for p in problems]}"
    assert any(needle in p.message for p in matching), [str(p) for p in matching]
    assert "Traceback" not in str(err.value)


def test_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        container("user-id: x\ngroup-id: y\nkill-timeout: z\nnope: 1\n")
    assert {p.key for p in err.value.problems} == {"user-id", "group-id", "kill-timeout", "nope"}
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(F + ": ") for line in lines)


def test_problem_str_shape() -> None:
    with pytest.raises(ConfigError) as err:
        procs("web: {image: i, config: /c, instances: -1}")
    assert str(err.value) == f"{F}: web.instances: -1 must be at least 0 [line 1, column 40]"
    [p] = err.value.problems
    assert (p.line, p.column) == (1, 40)


@pytest.mark.parametrize(("word", "expected"), [
    ("sandbox-dir", "sandboxes-dir"),
    ("sise", "size"),
    ("instance", "instances"),
    ("memory-limt", "memory-limit"),
    ("volumes", "volumes"),
    ("xyz", None),  # nothing near
    ("fileno", None),  # 3 of 6 letters differ: not a typo of `size`
])
def test_did_you_mean_picks_a_near_key(word: str, expected: str | None) -> None:
    known = ["sandboxes-dir", "size", "instances", "memory-limit", "volumes", "mode"]
    assert closest(word, known) == expected
