"""broker/status.py: the status tree behind lithos_ps (E-34), from plain inputs."""

from __future__ import annotations

from dataclasses import dataclass

from broker.children import Child
from broker.status import History, status_tree
from protocol.errors import Denied
from protocol.records import ChildState, DenyCode, LastExit


@dataclass
class Proc:
    instances: int
    kind_value: str = "Daemon"

    @property
    def kind(self) -> object:
        return type("K", (), {"value": self.kind_value})()


class Configs:
    """The three ConfigCache methods status_tree reads."""

    def __init__(self, sandboxes: dict[str, dict[str, Proc] | str]) -> None:
        self.sandboxes = sandboxes

    def sandbox_names(self) -> dict[str, str]:
        return dict.fromkeys(self.sandboxes, "")

    def sandbox(self, name: str) -> str:
        return name

    def processes(self, sandbox: str) -> dict[str, Proc]:
        found = self.sandboxes.get(sandbox, {})
        if isinstance(found, str):
            raise Denied(DenyCode.CONFIG_ERROR, found)
        return found


def child(instance: str, pid: int, started: float) -> Child:
    return Child(instance, pid, 1, "v1:x", 0.0, started)


def test_running_exited_and_wanted_by_sandbox_and_process() -> None:
    configs = Configs({"web": {"app": Proc(2), "cmd": Proc(0, "Command")}, "db": {}})
    history = {"web/app.0": History(starts=3), "web/app.1": History(starts=1, last_exit=LastExit(
        0, None, False, 1.0))}
    tree = status_tree(configs, [child("web/app.0", 42, 10.0)], history, now=15.0)  # type: ignore[arg-type]
    assert [s.name for s in tree] == ["db", "web"]
    (app,) = tree[1].processes
    assert (app.name, app.instances_wanted) == ("app", 2)
    running, exited = app.instances
    assert (running.instance, running.state, running.pid, running.uptime_s,
            running.restarts) == ("web/app.0", ChildState.RUNNING, 42, 5.0, 2)
    assert (exited.instance, exited.state, exited.pid) == ("web/app.1", ChildState.EXITED, None)


def test_a_broken_sandbox_keeps_its_running_children_beside_the_error() -> None:
    configs = Configs({"web": "web.yaml: instances: -1 is not a number of 0..1000"})
    tree = status_tree(configs, [child("web/app.0", 7, 0.0), child("old/x.0", 8, 0.0)],  # type: ignore[arg-type]
                       {}, now=1.0)
    assert [s.name for s in tree] == ["old", "web"]
    web = tree[1]
    assert web.config_error is not None and "instances" in web.config_error
    assert [i.instance for p in web.processes for i in p.instances] == ["web/app.0"]
