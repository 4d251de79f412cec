"""Variables and instantiation (1.5): V-10..V-17, E-8, E-9, E-10, K-11."""

from __future__ import annotations

import pytest

from protocol.config import (
    ConfigError,
    ContainerConfig,
    InstantiatedContainer,
    ProcessConfig,
    SandboxConfig,
    instantiate,
    parse_container,
    parse_processes,
    parse_sandbox,
    substitute,
)
from protocol.config.instantiate import check_container

SB = b"allow-users: [1-1000]\nallow-groups: [1-1000]\nallow-tcp-ports: [8000-8100]\n"


def make(container: bytes, process: bytes = b"", sandbox: bytes = SB,
         ) -> tuple[ContainerConfig, ProcessConfig, SandboxConfig]:
    c = parse_container(b"executable: /bin/app\nuser-id: 10\ngroup-id: 10\n" + container,
                        "/img/c.yaml")
    p = parse_processes(b"app:\n  image: img\n  config: /c.yaml\n  instances: 2\n" + process,
                        "/p/sb.yaml")["app"]
    s = parse_sandbox(sandbox, "/s/sb.yaml", "sb")
    return c, p, s


def inst(container: bytes, process: bytes = b"", sandbox: bytes = SB,
         index: int = 0) -> InstantiatedContainer:
    c, p, s = make(container, process, sandbox)
    return instantiate(c, p, s, p.instance_name("sb", index), index)


def test_v12_syntax() -> None:
    values = {"x": "1", "y": "2"}
    assert substitute("a@{x}b@{ y }c", values) == ("a1b2c", [])
    assert substitute("@{x", values) == ("@{x", [])
    assert substitute("@{z}", values) == ("@{z}", ["z"])
    assert substitute("@{x}@{x}", {"x": "@{y}"}) == ("@{y}@{y}", [])   # not recursive


def test_e8_only_arguments_environ_values_and_port_keys() -> None:
    i = inst(b"""\
variables:
  port: !TcpPort
  v: !Name
arguments: ["--v=@{v}"]
environ: {"K_@{v}": "@{v}"}
tcp-ports: {"@{port}": {fd: 3}}
""", b"  variables: {port: '8080', v: abc}\n")
    assert i.executable == "/bin/app"
    c, p, s = make(b"variables:\n  v: !Name\n", b"  variables: {v: abc}\n")
    c2 = parse_container(b"executable: /bin/@{v}\nuser-id: 10\ngroup-id: 10\n"
                         b"variables:\n  v: !Name\n", "/c.yaml")
    assert instantiate(c2, p, s, "sb/app.0", 0).executable == "/bin/@{v}"
    assert i.arguments == ("--v=abc",)
    assert dict(i.environ) == {"K_@{v}": "abc"}
    assert list(i.tcp_ports) == [8080] and i.tcp_ports[8080].fd == 3


def test_e9_builtins() -> None:
    i = inst(b"""\
arguments: ["@{lithos:name}", "@{lithos:config_filename}"]
environ: {PID: "@{lithos:pid}"}
""", index=1)
    assert i.arguments == ("sb/app.1", "/c.yaml")
    assert i.pid_environ == ("PID",) and "PID" not in i.environ
    assert check_container(parse_container(
        b"executable: /x\narguments: ['@{lithos:name}']\nenviron: {P: '@{lithos:pid}'}\n",
        "c.yaml")) == []   # E-42: built-ins pass lithos_check (decision 3)


def test_e9_pid_inside_a_string_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        inst(b'environ: {PID: "pid=@{lithos:pid}"}\n')
    [p] = err.value.problems
    assert (p.file, p.key) == ("/img/c.yaml", "environ.PID") and "whole environ value" in p.message


def test_e10_activation_sorted_names() -> None:
    i = inst(b"variables:\n  b: !TcpPort {activation: systemd}\n"
             b"  a: !TcpPort {activation: systemd}\n",
             b"  variables: {b: '8001', a: '8002'}\n")
    assert i.tcp_ports[8002].fd == 3 and i.tcp_ports[8001].fd == 4
    assert i.environ["LISTEN_FDS"] == "2" and i.environ["LISTEN_FDNAMES"] == "a:b"
    assert "LISTEN_PID" in i.pid_environ


def test_v17_activation_conflicts() -> None:
    with pytest.raises(ConfigError) as err:
        inst(b"""\
variables:
  a: !TcpPort {activation: systemd}
environ: {LISTEN_FDS: "1"}
tcp-ports: {8005: {fd: 3}}
""", b"  variables: {a: '8001'}\n")
    keys = {p.key for p in err.value.problems}
    assert keys == {"environ.LISTEN_FDS", "tcp-ports.8005.fd"}


def test_v10_variable_types() -> None:
    with pytest.raises(ConfigError) as err:
        inst(b"""\
variables:
  p: !TcpPort
  c: !Choice [a, b]
  n: !Name
  d: !DottedName
  q: !TcpPort
""", b"  variables: {p: '70000', c: z, n: 'a b', d: 'x..y', q: '9000'}\n")
    by_key = {p.key: p for p in err.value.problems}
    assert set(by_key) == {"app.variables.p", "app.variables.c", "app.variables.n",
                           "app.variables.d", "app.variables.q"}
    assert all(p.file == "/p/sb.yaml" for p in by_key.values())
    assert "allow-tcp-ports" in by_key["app.variables.q"].message
    assert inst(b"variables:\n  n: !Name\n  d: !DottedName\n",
                b"  variables: {n: '', d: a.b-c.d_e}\n").arguments == ()


def test_undeclared_and_missing_variables() -> None:
    with pytest.raises(ConfigError) as err:
        inst(b"variables:\n  x: !Name\narguments: ['@{y}']\n")
    keys = {(p.key, p.value) for p in err.value.problems}
    assert ("app.variables", "x") in keys and ("arguments[0]", "@{y}") in keys


def test_extra_process_variables_ignored() -> None:
    assert inst(b"", b"  variables: {unused: x}\n").arguments == ()


def test_ports_allowed_unless_bridged_and_not_external() -> None:
    with pytest.raises(ConfigError, match="allow-tcp-ports"):
        inst(b"tcp-ports: {80: {fd: 3}}\n")
    bridged = SB + b"bridged-network: {bridge: br0, network: 10.0.0.0/24}\n"
    assert list(inst(b"tcp-ports: {80: {fd: 3}}\n", sandbox=bridged).tcp_ports) == [80]
    with pytest.raises(ConfigError, match="allow-tcp-ports"):
        inst(b"tcp-ports: {80: {fd: 3, external: true}}\n", sandbox=bridged)


def test_bad_and_duplicate_ports() -> None:
    with pytest.raises(ConfigError) as err:
        inst(b"variables:\n  p: !TcpPort\n"
             b"tcp-ports: {'@{p}': {fd: 3}, 8001: {fd: 3}, x: {fd: 4}}\n",
             b"  variables: {p: '8001'}\n")
    msgs = " | ".join(p.message for p in err.value.problems)
    assert "same port" in msgs and "not a port number" in msgs


@pytest.mark.parametrize("fd", [1, 2])
def test_a_port_on_stdout_or_stderr_is_a_problem_of_both_checks(fd: int) -> None:
    text = f"tcp-ports: {{8001: {{fd: {fd}}}, 8002: {{fd: 0}}, 8003: {{fd: 3}}}}\n".encode()
    want = [("/img/c.yaml", "tcp-ports.8001.fd", str(fd))]
    with pytest.raises(ConfigError) as err:
        inst(text)
    assert [(p.file, p.key, p.value) for p in err.value.problems] == want
    assert "is stdout/stderr (use 0 or a number >= 3)" in err.value.problems[0].message
    assert [(p.file, p.key, p.value) for p in check_container(make(text)[0])] == want


@pytest.mark.parametrize(("container", "sandbox", "needle"), [
    (b"user-id: 0\n", SB, "allow-users"),
    (b"group-id: 5000\n", SB, "allow-groups"),
    (b"uid-map: [{inside: 0, outside: 5000, count: 1}]\nuser-id: 0\n", SB, "uid-map[0]"),
    (b"uid-map: [{inside: 0, outside: 10, count: 1}]\nuser-id: 5\n", SB, "container's uid-map"),
    (b"uid-map: [{inside: 0, outside: 10, count: 1}]\n",
     SB + b"uid-map: [{inside: 0, outside: 10, count: 1}]\n", "already has uid-map"),
    (b"", SB + b"uid-map: [{inside: 0, outside: 1000, count: 1}]\n", "sandbox uid-map"),
    (b"group-id: 10\n", SB + b"gid-map: [{inside: 0, outside: 1000, count: 1}]\n",
     "sandbox gid-map"),
])
def test_k11_id_rules(container: bytes, sandbox: bytes, needle: str) -> None:
    c = parse_container(b"executable: /x\n" + (b"" if b"user-id" in container else
                                                b"user-id: 10\n") + container, "/c.yaml")
    p = parse_processes(b"a: {image: i, config: /c}\n", "/p.yaml")["a"]
    s = parse_sandbox(sandbox, "/s.yaml", "s")
    with pytest.raises(ConfigError) as err:
        instantiate(c, p, s, "s/a.0", 0)
    assert needle in str(err.value)


def test_k11_defaults_from_sandbox() -> None:
    c = parse_container(b"executable: /x\n", "/c.yaml")
    p = parse_processes(b"a: {image: i, config: /c}\n", "/p.yaml")["a"]
    s = parse_sandbox(SB + b"default-user: 7\ndefault-group: 8\n", "/s.yaml", "s")
    i = instantiate(c, p, s, "s/a.0", 0)
    assert (i.user_id, i.group_id) == (7, 8)
    with pytest.raises(ConfigError, match="no default-user"):
        instantiate(c, p, parse_sandbox(SB, "/s.yaml", "s"), "s/a.0", 0)


def test_ip_address_per_instance_and_kind_match() -> None:
    i = inst(b"", b"  ip-addresses: [10.0.0.2, 10.0.0.3]\n", index=1)
    assert str(i.ip_address) == "10.0.0.3"
    with pytest.raises(ConfigError, match="too few"):
        inst(b"", b"  ip-addresses: [10.0.0.2]\n", index=1)
    with pytest.raises(ConfigError, match="does not match kind"):
        inst(b"kind: Command\n")
    assert inst(b"kind: CommandOrDaemon\n").name == "sb/app.0"


def test_two_activated_variables_with_one_port() -> None:
    with pytest.raises(ConfigError, match="same port as variable 'a'"):
        inst(b"variables:\n  a: !TcpPort {activation: systemd}\n"
             b"  b: !TcpPort {activation: systemd}\n", b"  variables: {a: '8001', b: '8001'}\n")


def test_activation_replaces_explicit_entry_for_same_port() -> None:
    i = inst(b"variables:\n  a: !TcpPort {activation: systemd}\n"
             b"tcp-ports: {'@{a}': {fd: 7, listen-backlog: 5}}\n", b"  variables: {a: '8001'}\n")
    assert i.tcp_ports[8001].fd == 3 and i.tcp_ports[8001].listen_backlog == 128


def test_volumes_the_sandbox_does_not_allow_are_problems_of_the_container() -> None:
    """The broker's volume policy (broker/policy.py), shared so that lithos_check and
    the supervisor refuse what the broker would refuse (#11)."""
    sandbox = SB + b"readonly-paths: {/ro: /srv/ro}\nwritable-paths: {/rw: /srv/rw}\n"
    ok = b"""\
volumes:
  /a: !Readonly /ro/x
  /b: !Readonly /rw/y
  /c: !Persistent { path: /rw/z }
  /d: !Statedir { path: /s }
  /e: !Tmpfs { size: 1Mi }
"""
    assert inst(ok, sandbox=sandbox).container.volumes
    bad = b"""\
uid-map: [{inside: 0, outside: 100000, count: 100}]
gid-map: [{inside: 0, outside: 100000, count: 100}]
volumes:
  /a: !Readonly /etc
  /c: !Persistent { path: /ro/z }
  /d: !Statedir { path: /s, user: 500 }
"""
    with pytest.raises(ConfigError) as e:
        inst(bad, sandbox=sandbox)
    said = {(p.key, p.value, p.message) for p in e.value.problems if p.key.startswith("vol")}
    assert said == {
        ("volumes./a", "!Readonly /etc",
         "has no entry in readonly-paths (or writable-paths) of /s/sb.yaml"),
        ("volumes./c", "!Persistent /ro/z", "has no entry in writable-paths of /s/sb.yaml"),
        ("volumes./d", "user 500 / group 0", "is not mapped by the container's uid-map/gid-map"),
    }
