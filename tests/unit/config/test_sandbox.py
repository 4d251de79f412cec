"""Sandbox config (1.2): every key, its default and a non-default value; E-38."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from protocol.config import (
    BridgedNetwork,
    ConfigError,
    IdMapEntry,
    IdRanges,
    LogLevel,
    load_sandbox,
    parse_master,
    parse_sandbox,
    process_config_path,
    sandbox_log_path,
)

FILE = "/etc/lithos/sandboxes/web.yaml"


def test_defaults() -> None:
    s = parse_sandbox(b"", FILE, "web")
    assert (s.path, s.name) == (Path(FILE), "web")
    assert s.config_file is None
    assert s.image_dir == Path("/var/lib/lithos/containers")
    assert s.image_dir_levels == 1
    assert s.used_images_list is None
    assert s.log_file is None
    assert s.log_level is None
    assert dict(s.readonly_paths) == {} and dict(s.writable_paths) == {}
    assert not s.allow_users and not s.allow_groups and not s.allow_tcp_ports
    assert s.default_user is None
    assert s.default_group == 0
    assert dict(s.additional_hosts) == {}
    assert s.uid_map == () and s.gid_map == ()
    assert s.auto_clean is True
    assert s.resolv_conf == Path("/etc/resolv.conf")
    assert s.hosts_file == Path("/etc/hosts")
    assert s.bridged_network is None
    assert s.secrets_private_key is None
    assert s.secrets_namespaces == ()
    assert s.effective_secrets_namespaces == frozenset({""})


def test_every_key_non_default() -> None:
    s = parse_sandbox(b"""\
config-file: other.yaml
image-dir: /images
image-dir-levels: 2
used-images-list: /var/used.txt
log-file: web-knot.log
log-level: info
readonly-paths: {/usr/share: /srv/share}
writable-paths: {/data: /srv/data}
allow-users: [1, 99, 1000-2000]
default-user: 1000
allow-groups: [5-6]
default-group: 5
allow-tcp-ports: [80, 8000-8010]
additional-hosts: {db.local: 10.0.0.5}
uid-map: [{inside: 0, outside: 1000, count: 1}]
gid-map: [{inside: 0, outside: 0x10, count: 1k}]
auto-clean: false
resolv-conf: /etc/resolv.alt
hosts-file: /etc/hosts.alt
bridged-network:
  bridge: br0
  network: 10.0.0.0/24
  default_gateway: 10.0.0.1
  after-setup-command: [/sbin/arping, -U, "@{container_ip}"]
secrets-private-key: /etc/lithos/key
secrets-namespaces: [project1.web, ""]
""", FILE, "web")
    assert s.config_file == "other.yaml"
    assert s.image_dir == Path("/images")
    assert s.image_dir_levels == 2
    assert s.used_images_list == Path("/var/used.txt")
    assert s.log_file == "web-knot.log"
    assert s.log_level is LogLevel.INFO
    assert dict(s.readonly_paths) == {"/usr/share": "/srv/share"}
    assert dict(s.writable_paths) == {"/data": "/srv/data"}
    assert s.allow_users == IdRanges(((1, 1), (99, 99), (1000, 2000)))
    assert 1500 in s.allow_users and 50 not in s.allow_users
    assert str(s.allow_users) == "[1, 99, 1000-2000]"
    assert s.default_user == 1000
    assert 6 in s.allow_groups and s.default_group == 5
    assert 8005 in s.allow_tcp_ports and 8011 not in s.allow_tcp_ports
    assert dict(s.additional_hosts) == {"db.local": "10.0.0.5"}
    assert s.uid_map == (IdMapEntry(0, 1000, 1),)
    assert s.gid_map == (IdMapEntry(0, 16, 1000),)
    assert s.auto_clean is False
    assert s.resolv_conf == Path("/etc/resolv.alt")
    assert s.hosts_file == Path("/etc/hosts.alt")
    assert s.bridged_network == BridgedNetwork(
        "br0", ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_address("10.0.0.1"),
        ("/sbin/arping", "-U", "@{container_ip}"))
    assert s.secrets_private_key == Path("/etc/lithos/key")
    assert s.secrets_namespaces == ("project1.web", "")


def test_bridged_network_gateway_optional_and_implicit_null() -> None:
    s = parse_sandbox(b"bridged-network: {bridge: br0, network: 10.0.0.0/24}\n", FILE, "w")
    assert s.bridged_network is not None and s.bridged_network.default_gateway is None
    assert parse_sandbox(b"bridged-network:\n", FILE, "w").bridged_network is None
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_sandbox(b"bridged-network: null\n", FILE, "w")


def test_e38_log_file_default_and_paths(tmp_path: Path) -> None:
    master = parse_master(b"default-log-dir: /logs\nprocesses-dir: /procs\n", "/m.yaml")
    s = parse_sandbox(b"", FILE, "web")
    assert sandbox_log_path(master, s) == Path("/logs/web.log")
    assert process_config_path(master, s) == Path("/procs/web.yaml")
    s2 = parse_sandbox(b"config-file: /abs/p.yaml\nlog-file: x.log\n", FILE, "web")
    assert process_config_path(master, s2) == Path("/abs/p.yaml")
    assert sandbox_log_path(master, s2) == Path("/logs/x.log")
    s3 = parse_sandbox(b"config-file: sub/p.yaml\n", FILE, "web")
    assert process_config_path(master, s3) == Path("/procs/sub/p.yaml")


def test_name_is_file_stem(tmp_path: Path) -> None:
    (tmp_path / "db-main.yaml").write_text("allow-users: [1]\n")
    s = load_sandbox(tmp_path / "db-main.yaml")
    assert s.name == "db-main" and s.path == tmp_path / "db-main.yaml"


@pytest.mark.parametrize("stem", ["my.box", "x" * 65, "wéb"])
def test_a_file_stem_that_is_no_name_is_an_error_naming_the_file(tmp_path: Path,
                                                                   stem: str) -> None:
    path = tmp_path / f"{stem}.yaml"
    path.write_text("allow-users: [1]\n")
    with pytest.raises(ConfigError, match="is not a valid sandbox name") as e:
        load_sandbox(path)
    assert str(path) in str(e.value) and repr(stem) in str(e.value)
