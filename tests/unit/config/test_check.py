"""lithos_check end to end (2.4) on a temp tree: exit codes, --json, --check-container."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.config.check import main

REPO = Path(__file__).resolve().parents[3]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protocol.config.check", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_clean_tree_exits_0(host_tree: Path) -> None:
    result = run("-C", str(host_tree / "etc/master.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verbose_prints_host(host_tree: Path) -> None:
    result = run("-v", "--config", str(host_tree / "etc/master.yaml"))
    assert result.returncode == 0, result.stderr
    assert "Hostname is " in result.stdout and "IPAddr is " in result.stdout


def test_broken_tree_names_file_and_key(host_tree: Path) -> None:
    image_cfg = host_tree / "images/web.v1/config/main.yaml"
    image_cfg.write_text(image_cfg.read_text().replace("user-id: 10", "user-id: 0")
                         .replace("size: 10Mi", "size: 10m"))
    result = run("-C", str(host_tree / "etc/master.yaml"))
    assert result.returncode == 1
    assert "main.yaml: volumes./tmp.size: 10m" in result.stderr
    assert "use 10M or 10Mi" in result.stderr


def test_every_error_is_reported_json(host_tree: Path) -> None:
    (host_tree / "etc/sandboxes/web.yaml").write_text(
        (host_tree / "etc/sandboxes/web.yaml").read_text().replace("[8000-8100]", "[9000]"))
    image_cfg = host_tree / "images/web.v1/config/main.yaml"
    image_cfg.write_text(image_cfg.read_text().replace("user-id: 10", "user-id: 0"))
    (host_tree / "etc/sandboxes/db.yaml").write_text("allow-users: []\n")
    (host_tree / "etc/sandboxes/cache.yaml").write_text("allow-users: [1]\nbogus: 1\n")
    result = run("-C", str(host_tree / "etc/master.yaml"), "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)
    assert all({"file", "key", "value", "message"} <= set(p) for p in problems)
    found = {(Path(p["file"]).name, p["key"]) for p in problems}
    assert ("cache.yaml", "bogus") in found
    assert ("db.yaml", "allow-users") in found
    assert ("db.yaml", "allow-groups") in found
    assert ("web.yaml", "django.variables.port") in found        # 8080 not in [9000]
    assert any(k == "user-id" for _, k in found)


def test_clean_json_is_empty_list(host_tree: Path) -> None:
    result = run("-C", str(host_tree / "etc/master.yaml"), "--json")
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_alternate_config(host_tree: Path) -> None:
    alt = host_tree / "alt.yaml"
    alt.write_text("django: {image: web.v1, config: /config/main.yaml, "
                   "variables: {port: '8080', mode: medium}}\n")
    result = run("-C", str(host_tree / "etc/master.yaml"), "-T", "web",
                 "--alternate-config", str(alt))
    assert result.returncode == 1 and "mode" in result.stderr and str(alt) in result.stderr
    assert run("-C", str(host_tree / "etc/master.yaml"), "--alternate-config",
               str(alt)).returncode == 2
    assert main(["-C", str(host_tree / "etc/master.yaml"), "--sandbox", "nope"]) == 1


def test_image_escape_is_contained(host_tree: Path) -> None:
    procs = host_tree / "etc/processes/web.yaml"
    procs.write_text(procs.read_text().replace("/config/main.yaml", "/../../../etc/passwd"))
    result = run("-C", str(host_tree / "etc/master.yaml"))
    assert result.returncode == 1
    assert "..'" in result.stderr or "ENOENT" in result.stderr


def test_check_container(tmp_path: Path, host_tree: Path) -> None:
    good = host_tree / "images/web.v1/config/main.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("executable: /x\narguments: ['@{nope}']\nenviron: {P: 'x@{lithos:pid}'}\n")
    assert main(["--check-container", str(good)]) == 0
    result = run("--check-container", str(good), "--check-container", str(bad), "--json")
    assert result.returncode == 1
    keys = {p["key"] for p in json.loads(result.stdout)}
    assert keys == {"arguments[0]", "environ.P"}


@pytest.mark.parametrize("args", [["--bogus"], ["-C"], ["--check-container"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert main(args) == 2


def test_missing_master_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(tmp_path / "none.yaml")]) == 1
    assert "none.yaml" in capsys.readouterr().err


def test_e42_builtin_variables_pass(tmp_path: Path) -> None:
    """E-42 / decision 3: @{lithos:name}, @{lithos:config_filename}, @{lithos:pid} pass."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("executable: /x\narguments: ['@{lithos:name}', '@{lithos:config_filename}']\n"
                   "environ: {PID: '@{lithos:pid}'}\n")
    assert main(["--check-container", str(cfg)]) == 0
