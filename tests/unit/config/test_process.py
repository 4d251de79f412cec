"""Process config (1.3): keys, defaults (E-7), names (P-1), P-2 identity, T-27 log line."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from protocol.config import (
    ConfigError,
    Kind,
    check_process,
    config_log_line,
    image_path,
    instance_fingerprint,
    parse_processes,
    parse_sandbox,
    process_config_log_json,
)

FILE = "/etc/lithos/processes/web.yaml"


def test_e7_defaults() -> None:
    procs = parse_processes(b"web: {image: img.v1, config: /config/a.yaml}\n", FILE)
    p = procs["web"]
    assert (p.name, p.path) == ("web", Path(FILE))
    assert p.instances == 1
    assert p.kind is Kind.DAEMON
    assert dict(p.variables) == {}
    assert p.extra_secrets_namespaces == ()
    assert p.ip_addresses == ()


def test_every_key_non_default() -> None:
    p = parse_processes(b"""\
web:
  image: img.v2
  config: /config/b.yaml
  instances: 3
  kind: Command
  variables: {port: 8080, name: x}
  extra-secrets-namespaces: [ns1]
  ip-addresses: [10.0.0.2, 10.0.0.3]
""", FILE)["web"]
    assert (p.image, p.config, p.instances, p.kind) == ("img.v2", "/config/b.yaml", 3,
                                                         Kind.COMMAND)
    assert dict(p.variables) == {"port": "8080", "name": "x"}
    assert p.extra_secrets_namespaces == ("ns1",)
    assert p.ip_addresses == (ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("10.0.0.3"))
    assert p.instance_name("sb", 2) == "sb/web.2"


def test_empty_file_has_no_processes() -> None:
    assert dict(parse_processes(b"", FILE)) == {}


def test_command_or_daemon_not_valid_in_process() -> None:
    with pytest.raises(ConfigError, match="is not one of Daemon, Command"):
        parse_processes(b"w: {image: i, config: /c, kind: CommandOrDaemon}\n", FILE)


@pytest.mark.parametrize("name", ["web.1", "a b", "x/y", "x" * 65])
def test_p1_bad_names(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_processes(f'"{name}": {{image: i, config: /c}}\n'.encode(), FILE)
    assert err.value.problems[0].key == name


def test_p2_fingerprint_exact() -> None:
    p = parse_processes(b"w: {image: img.v1, config: /config/a.yaml, instances: 4}\n",
                        FILE)["w"]
    assert instance_fingerprint(p, 0) == (
        '{"instances":1,"image":"img.v1","config":"/config/a.yaml","kind":"Daemon"}')
    q = parse_processes(b"""\
w:
  image: img.v1
  config: /c.yaml
  variables: {b: "2", a: "1"}
  extra-secrets-namespaces: [x]
  ip-addresses: [10.0.0.2, 10.0.0.3]
""", FILE)["w"]
    assert instance_fingerprint(q, 1) == (
        '{"instances":1,"image":"img.v1","config":"/c.yaml","variables":{"a":"1","b":"2"},'
        '"extra_secrets_namespaces":["x"],"ip_address":"10.0.0.3","kind":"Daemon"}')


def test_t30_fingerprint_changes_with_image_not_instances() -> None:
    a = parse_processes(b"w: {image: v1, config: /c, instances: 1}\n", FILE)["w"]
    b = parse_processes(b"w: {image: v1, config: /c, instances: 5}\n", FILE)["w"]
    c = parse_processes(b"w: {image: v2, config: /c, instances: 1}\n", FILE)["w"]
    assert instance_fingerprint(a, 0) == instance_fingerprint(b, 0)
    assert instance_fingerprint(a, 0) != instance_fingerprint(c, 0)


def test_t27_config_log_json() -> None:
    procs = parse_processes(b"""\
z: {image: i, config: /c, kind: Command}
a: {image: j, config: /d, instances: 2, ip-addresses: [10.0.0.2]}
""", FILE)
    line = process_config_log_json(procs)
    assert line == ('{"a":{"instances":2,"image":"j","config":"/d","ip_addresses":["10.0.0.2"],'
                    '"kind":"Daemon"},"z":{"instances":1,"image":"i","config":"/c",'
                    '"kind":"Command"}}')
    assert json.loads(line)["z"]["kind"] == "Command"
    assert config_log_line(procs, 1514764800) == f"2018-01-01T00:00:00Z {line}\n"


def test_check_process_rules() -> None:
    sandbox = parse_sandbox(b"""\
image-dir: /images
image-dir-levels: 2
bridged-network: {bridge: br0, network: 10.0.0.0/24}
""", "/sb/web.yaml", "web")
    procs = parse_processes(b"""\
ok: {image: a/b, config: /c.yaml, instances: 1, ip-addresses: [10.0.0.2]}
bad: {image: ../b, config: c.yaml, instances: 2, ip-addresses: [10.1.0.2]}
""", FILE)
    assert check_process(sandbox, procs["ok"]) == []
    assert image_path(sandbox, procs["ok"]) == Path("/images/a/b")
    keys = {p.key for p in check_process(sandbox, procs["bad"])}
    assert keys == {"bad.image", "bad.config", "bad.ip-addresses[0]", "bad.ip-addresses"}


def test_duplicate_ip_addresses_name_both_positions() -> None:
    """K-35: two instances cannot share an address; the second position is reported."""
    sandbox = parse_sandbox(b"image-dir: /images\nbridged-network: {bridge: br0, "
                            b"network: 10.0.0.0/24}\n", "/sb/web.yaml", "web")
    procs = parse_processes(b"d: {image: a, config: /c, instances: 3, "
                            b"ip-addresses: [10.0.0.2, 10.0.0.3, 10.0.0.2]}\n", FILE)
    problems = check_process(sandbox, procs["d"])
    assert [(p.key, p.value) for p in problems] == [("d.ip-addresses[2]", "10.0.0.2")]
    assert "same as ip-addresses[0]" in str(problems[0])
