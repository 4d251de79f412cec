"""lithos_switch end to end (inventory 2.5, E-33): refuses a broken config and leaves
the old file; installs atomically and reloads the live tree, which restarts only the
changed entry; exits 0 with no daemon; --dry-run plans without changing anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
REPO = Path(__file__).resolve().parents[2]

APP = """
executable: /bin/sh
arguments: ["-c", "echo ready $LITHOS_NAME @{mode}; exec sleep 1000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 2
variables:
  mode: !Choice [fast, slow]
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor.switch", *args], cwd=REPO,
                          text=True, capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def entry(name: str, image: str = "app.v1", instances: int = 1, mode: str = "fast") -> str:
    return (f"{name}: {{image: {image}, config: /config/app.yaml, instances: {instances}, "
            f"variables: {{mode: {mode}}}}}\n")


OLD = entry("a", instances=4) + entry("b") + entry("c")


@pytest.fixture
def tree(lithos):
    lithos.image("app.v1", {"app.yaml": APP})
    lithos.image("app.v2", {"app.yaml": APP})
    lithos.sandbox("sb", processes=OLD)
    return lithos


def start(lithos) -> dict[str, int]:
    lithos.start()
    names = [f"a.{i}" for i in range(4)] + ["b.0", "c.0"]
    for name in names:
        lithos.wait_stdio("sb", rf"ready sb/{name} ")
    running = lithos.running()
    assert sorted(running) == [f"sb/{n}" for n in names]
    return running


def new_file(lithos, text: str) -> Path:
    path = lithos.root / "new.yaml"
    path.write_text(text)
    return path


BROKEN = entry("a", instances=3) + "b: {image: app.v1, config: /config/app.yaml, " \
    "variables: {mode: medium}}\n"


def test_refuses_a_broken_config_and_keeps_the_old_file_e33(tree) -> None:
    target = tree.config_dir / "processes" / "sb.yaml"
    out = run("-C", str(tree.master), "sb", str(new_file(tree, BROKEN)))
    assert out.returncode == 1
    assert "medium" in out.stderr and "unchanged" in out.stderr
    assert target.read_text() == OLD
    assert not (target.parent / ".tmp.sb").exists()


def test_installs_and_exits_0_without_a_daemon_e33(tree) -> None:
    new = entry("a", instances=2)
    out = run("-C", str(tree.master), "sb", str(new_file(tree, new)))
    assert out.returncode == 0, out.stderr
    assert "Probably daemon is not running" in out.stderr
    assert (tree.config_dir / "processes" / "sb.yaml").read_text() == new


def test_switch_restarts_only_the_changed_entry(tree) -> None:
    before = start(tree)
    new = entry("a", instances=4) + entry("b", mode="slow") + entry("c")
    out = run("-C", str(tree.master), "--wait", "--timeout", "30", "sb",
              str(new_file(tree, new)))
    assert out.returncode == 0, out.stderr
    tree.wait_stdio("sb", r"ready sb/b\.0 slow")
    after = tree.running()
    assert sorted(after) == sorted(before)
    assert after["sb/b.0"] != before["sb/b.0"]
    for name in before:
        if name != "sb/b.0":
            assert after[name] == before[name], name
    assert (tree.config_dir / "processes" / "sb.yaml").read_text() == new


def test_dry_run_plans_and_changes_nothing(tree) -> None:
    before = start(tree)
    target = tree.config_dir / "processes" / "sb.yaml"
    new = entry("a", instances=3) + entry("b", mode="slow") + entry("c", image="app.v2") + \
        entry("d")
    out = run("-C", str(tree.master), "--dry-run", "sb", str(new_file(tree, new)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "sb/a.3: stop: instances lowered 4 -> 3" in lines
    assert "sb/b.0: restart: variables changed" in lines
    assert "sb/c.0: restart: image changed" in lines
    assert "sb/d.0: start: new process" in lines
    assert not any(line.startswith(("sb/a.0", "sb/a.1", "sb/a.2")) for line in lines), lines
    # a broken config: the error, and nothing planned
    bad = run("-C", str(tree.master), "--dry-run", "sb", str(new_file(tree, BROKEN)))
    assert bad.returncode == 1
    assert "medium" in bad.stderr and bad.stdout == ""
    assert target.read_text() == OLD
    assert tree.running() == before


def test_falls_back_to_sigquit_without_the_control_socket_e33(tree) -> None:
    """The original's way: with no control socket, SIGQUIT to the pid in master.pid
    re-executes lithos_tree, which re-reads the configs and restarts the changed entry."""
    before = start(tree)
    (tree.runtime / "control.sock").unlink()  # the broker keeps running; nobody can connect
    mark = tree.mark()
    new = entry("a", instances=4) + entry("b", mode="slow") + entry("c")
    out = run("-C", str(tree.master), "sb", str(new_file(tree, new)))
    assert out.returncode == 0, out.stderr
    tree.wait_for(r"re-executing lithos_tree", start=mark)
    tree.wait_stdio("sb", r"ready sb/b\.0 slow")
    after = tree.running()  # the re-executed tree opened a new control socket
    assert after["sb/b.0"] != before["sb/b.0"]
    assert after["sb/a.0"] == before["sb/a.0"] and after["sb/c.0"] == before["sb/c.0"]
