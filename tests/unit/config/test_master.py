"""Master config (1.1): every key, its default and a non-default value; E-1..E-5, E-37."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import (
    DEFAULT_CGROUP_CONTROLLERS,
    ConfigError,
    LogLevel,
    list_sandboxes,
    load_master,
    parse_master,
)

FILE = "/etc/lithos/master.yaml"


def test_e1_empty_master_gives_every_default() -> None:
    m = parse_master(b"", FILE)
    assert m.path == Path(FILE)
    assert m.sandboxes_dir == Path("/etc/lithos/sandboxes")
    assert m.processes_dir == Path("/etc/lithos/processes")
    assert m.runtime_dir == Path("/run/lithos")
    assert m.state_dir == Path("/run/lithos/state")
    assert m.mount_dir == Path("/run/lithos/mnt")
    assert m.devfs_dir == Path("/var/lib/lithos/dev")
    assert m.cgroup_name == "lithos.slice"
    assert m.cgroup_controllers == ()
    assert m.effective_cgroup_controllers == DEFAULT_CGROUP_CONTROLLERS
    assert m.default_log_dir == Path("/var/log/lithos")
    assert m.config_log_dir == Path("/var/log/lithos/config")
    assert m.stdio_log_dir == Path("/var/log/lithos/stderr")
    assert m.log_file == Path("/var/log/lithos/master.log")
    assert m.log_level is LogLevel.WARN
    assert m.syslog_facility is None
    assert m.syslog_app_name == "lithos"
    assert m.supervisor_user == "nobody"


def test_e1_missing_master_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_master(tmp_path / "master.yaml")
    assert str(tmp_path / "master.yaml") in str(err.value)


def test_every_key_non_default() -> None:
    m = parse_master(b"""\
sandboxes-dir: sb
processes-dir: /srv/procs
runtime-dir: /run/lt
state-dir: st
mount-dir: /abs/mnt
devfs-dir: /dev2
cgroup-name: my.slice
cgroup-controllers: [name, memory]
default-log-dir: /logs
config-log-dir: /logs/cfg
stdio-log-dir: /logs/stdio
log-file: tree.log
log-level: DEBUG
syslog-facility: LOG_LOCAL3
syslog-app-name: lt
supervisor-user: lithos
""", "/cfg/master.yaml")
    assert m.sandboxes_dir == Path("/cfg/sb")
    assert m.processes_dir == Path("/srv/procs")
    assert m.runtime_dir == Path("/run/lt")
    assert m.state_dir == Path("/run/lt/st")
    assert m.mount_dir == Path("/abs/mnt")
    assert m.devfs_dir == Path("/dev2")
    assert m.cgroup_name == "my.slice"
    assert m.cgroup_controllers == ("name", "memory")
    assert m.effective_cgroup_controllers == ("name", "memory")
    assert m.default_log_dir == Path("/logs")
    assert m.config_log_dir == Path("/logs/cfg")
    assert m.stdio_log_dir == Path("/logs/stdio")
    assert m.log_file == Path("/logs/tree.log")
    assert m.log_level is LogLevel.DEBUG
    assert m.syslog_facility == "local3"
    assert m.syslog_app_name == "lt"
    assert m.supervisor_user == "lithos"


def test_e2_relative_paths_anchor_at_master_dir_not_cwd(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/master.yaml").write_text("sandboxes-dir: ./s\nprocesses-dir: p\n"
                                              "log-file: sub/m.log\n")
    monkeypatch.chdir("/")
    m = load_master(tmp_path / "etc/master.yaml")
    assert m.sandboxes_dir == tmp_path / "etc/s"
    assert m.processes_dir == tmp_path / "etc/p"
    assert m.log_file == Path("/var/log/lithos/sub/m.log")
    assert m.path == tmp_path / "etc/master.yaml"


def test_e3_cgroup_name_null_and_empty_controllers() -> None:
    m = parse_master(b"cgroup-name: null\ncgroup-controllers: []\n", FILE)
    assert m.cgroup_name is None
    assert m.effective_cgroup_controllers == DEFAULT_CGROUP_CONTROLLERS
    assert parse_master(b"cgroup-name: ~\n", FILE).cgroup_name is None


def test_e3_implicit_null_means_default() -> None:
    """Q-6: `key:` with nothing after it counts as absent."""
    assert parse_master(b"cgroup-name:\n", FILE).cgroup_name == "lithos.slice"


def test_e4_config_log_dir_null() -> None:
    assert parse_master(b"config-log-dir: null\n", FILE).config_log_dir is None


def test_e5_both_spellings_and_underscore_keys() -> None:
    assert parse_master(b"sandboxes_dir: /a\n", FILE).sandboxes_dir == Path("/a")
    assert parse_master(b"sandboxes-dir: /a\n_anchor: 1\n", FILE).sandboxes_dir == Path("/a")
    with pytest.raises(ConfigError) as err:
        parse_master(b"sandbox-dir: /a\n", FILE)
    p = err.value.problems[0]
    assert (p.file, p.key) == (FILE, "sandbox-dir")
    assert "not a known key" in p.message and "sandboxes-dir" in p.message


def test_e5_same_key_in_both_spellings_is_an_error() -> None:
    with pytest.raises(ConfigError, match="same key"):
        parse_master(b"sandboxes_dir: /a\nsandboxes-dir: /b\n", FILE)


@pytest.mark.parametrize("key", ["syslog-app-name", "syslog-name", "syslog_app_name"])
def test_e37_both_syslog_spellings_accepted(key: str) -> None:
    """E-37 and decision 1: accept the manual's syslog-name and the source's syslog-app-name."""
    assert parse_master(f"{key}: lt\n".encode(), FILE).syslog_app_name == "lt"


def test_list_sandboxes_scan_rules(tmp_path: Path) -> None:
    sb = tmp_path / "sandboxes"
    sb.mkdir()
    for name in ["web.yaml", "db.yaml", ".hidden.yaml", "old.yaml~", "x.yaml.bak",
                 "#tmp.yaml#", "other.yml", "README"]:
        (sb / name).write_text("")
    (sb / "link.yaml").symlink_to(sb / "web.yaml")
    (tmp_path / "master.yaml").write_text("")
    m = load_master(tmp_path / "master.yaml")
    assert list(list_sandboxes(m)) == ["db", "link", "web"]
    assert list_sandboxes(m)["web"] == sb / "web.yaml"


def test_list_sandboxes_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "master.yaml").write_text("")
    with pytest.raises(ConfigError, match="sandboxes-dir"):
        list_sandboxes(load_master(tmp_path / "master.yaml"))
