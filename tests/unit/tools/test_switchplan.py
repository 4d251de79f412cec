"""lithos_switch --dry-run planning (inventory 2.5): reasons per instance, sockets,
the live table from a StatusTree, and what --wait still waits for."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import messages as m
from protocol.config import load_sandbox
from protocol.records import ChildState, InstanceStatus, Pid, ProcessStatus, SandboxStatus
from supervisor.switchplan import plan_switch, unmet

APP = """
executable: /bin/sleep
arguments: ["@{mode}"]
user-id: 1000
group-id: 1000
variables:
  mode: !Choice [fast, slow]
"""
WEB = APP + """tcp-ports:
  "8080":
    fd: 3
"""


def entry(name: str, image: str = "app.v1", instances: int = 1, mode: str = "fast",
          config: str = "/config/app.yaml") -> str:
    return (f"{name}: {{image: {image}, config: {config}, instances: {instances}, "
            f"variables: {{mode: {mode}}}}}\n")


@pytest.fixture
def sandbox(tmp_path: Path):
    for image in ("app.v1", "app.v2"):
        (tmp_path / "images" / image / "config").mkdir(parents=True)
        (tmp_path / "images" / image / "config" / "app.yaml").write_text(APP)
        (tmp_path / "images" / image / "config" / "web.yaml").write_text(WEB)
    path = tmp_path / "sb.yaml"
    path.write_text(f"image-dir: {tmp_path / 'images'}\nallow-users: [0-65535]\n"
                    "allow-groups: [0-65535]\nallow-tcp-ports: [8080]\n")
    return load_sandbox(path)


def status(*running: str, down: tuple[str, ...] = ()) -> m.StatusTree:
    insts = [InstanceStatus(n, ChildState.RUNNING, Pid(100 + i), 50.0, 0, None)
             for i, n in enumerate(running)]
    insts += [InstanceStatus(n, ChildState.EXITED, None, None, 1, None) for n in down]
    return m.StatusTree(Pid(1), 60.0, (SandboxStatus("sb", None, (
        ProcessStatus("all", 1, tuple(insts)),)),))


def plan(sandbox, tmp_path: Path, old: str, new: str, live: m.StatusTree | None):
    (tmp_path / "old.yaml").write_text(old)
    (tmp_path / "new.yaml").write_text(new)
    return plan_switch(sandbox, tmp_path / "old.yaml", tmp_path / "new.yaml", live, 1000.0)


def test_reasons(sandbox, tmp_path: Path) -> None:
    old = entry("a", instances=4) + entry("b") + entry("c") + entry("d") + entry("gone")
    new = (entry("a", instances=3) + entry("b", mode="slow") + entry("c", image="app.v2")
           + entry("d", config="/config/web.yaml") + entry("e"))
    live = status("sb/a.0", "sb/a.1", "sb/a.2", "sb/a.3", "sb/b.0", "sb/c.0", "sb/d.0",
                  "sb/gone.0")
    p = plan(sandbox, tmp_path, old, new, live)
    assert [str(c) for c in p.changes] == [
        "sb/b.0: restart: variables changed",
        "sb/c.0: restart: image changed",
        "sb/d.0: restart: config, container-config changed",
        "sb/e.0: start: new process",
        "sb/a.3: stop: instances lowered 4 -> 3",
        "sb/gone.0: stop: process removed from the config",
        "sock 0.0.0.0:8080 would open",
    ]
    assert p.fresh == {"sb/b.0", "sb/c.0", "sb/d.0", "sb/e.0"}
    assert p.gone == {"sb/a.3", "sb/gone.0"}


def test_without_a_tree_the_configs_are_compared(sandbox, tmp_path: Path) -> None:
    p = plan(sandbox, tmp_path, entry("a", instances=2), entry("a", mode="slow"), None)
    assert [str(c) for c in p.changes] == ["sb/a.0: restart: variables changed",
                                           "sb/a.1: stop: instances lowered 2 -> 1"]


def test_container_config_edited_in_place(sandbox, tmp_path: Path) -> None:
    old = entry("a")
    (tmp_path / "old.yaml").write_text(old)
    live = status("sb/a.0")
    before = plan(sandbox, tmp_path, old, old, live)
    assert before.changes == []
    # the plan compares the configs on disk: edit the image's file between the two reads
    (tmp_path / "images" / "app.v2" / "config" / "app.yaml").write_text(APP + "kill-timeout: 9\n")
    p = plan(sandbox, tmp_path, old, entry("a", image="app.v2"), live)
    assert [str(c) for c in p.changes] == ["sb/a.0: restart: container-config, image changed"]


def test_down_instance_is_restarted_with_the_new_spec(sandbox, tmp_path: Path) -> None:
    p = plan(sandbox, tmp_path, entry("a"), entry("a", mode="slow"), status(down=("sb/a.0",)))
    assert p.wanted == {"sb/a.0"}


def test_broken_new_config_keeps_everything(sandbox, tmp_path: Path) -> None:
    p = plan(sandbox, tmp_path, entry("a"), "a: {image: nope}\n", status("sb/a.0"))
    assert len(p.changes) == 1
    assert p.changes[0].subject == "sb"
    assert "config failed to load, keeping 1 instance(s)" in p.changes[0].text
    assert p.gone == set()


def test_unmet() -> None:
    from supervisor.switchplan import SwitchPlan

    p = SwitchPlan([], frozenset({"sb/a.0", "sb/b.0", "sb/c.0"}), frozenset({"sb/b.0"}),
                   frozenset({"sb/old.0"}))
    live = status("sb/a.0", "sb/b.0", "sb/old.0")  # all up 50 s
    assert unmet(p, live, "sb", since_s=10.0) == [
        "sb/b.0: not restarted yet", "sb/c.0: not running", "sb/old.0: still running"]
    assert unmet(p, live, "sb", since_s=60.0) == [
        "sb/c.0: not running", "sb/old.0: still running"]


def test_unmet_a_knot_recorded_with_the_new_fingerprint_is_done() -> None:
    """A switch pushed before the tree applied the previous one: the plan (made against
    the installed file) says restart, but the knot already runs the new config."""
    from supervisor.switchplan import SwitchPlan

    p = SwitchPlan([], frozenset({"sb/b.0"}), frozenset({"sb/b.0"}), frozenset(),
                   {"sb/b.0": "fp-new"})
    live = status("sb/b.0")
    pid = int(live.sandboxes[0].processes[0].instances[0].pid or 0)
    assert unmet(p, live, "sb", 10.0, {"sb/b.0": (pid, "fp-old")}) == [
        "sb/b.0: not restarted yet"]
    assert unmet(p, live, "sb", 10.0, {"sb/b.0": (pid + 1, "fp-new")}) == [
        "sb/b.0: not restarted yet"]  # the record of another knot
    assert unmet(p, live, "sb", 10.0, {"sb/b.0": (pid, "fp-new")}) == []
