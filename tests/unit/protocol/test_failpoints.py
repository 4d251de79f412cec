"""protocol/failpoints.py: parsing, counts, hand-over, and that every point is placed
and documented (issue 11)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import failpoints

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    failpoints.arm("")
    yield
    failpoints.arm("")


def test_parse_accepts_actions_and_counts() -> None:
    text = "broker.start.after_spawn=kill, supervisor.start.after_reply=exit@3,"
    assert failpoints.parse(text) == {
        "broker.start.after_spawn": ("kill", 1),
        "supervisor.start.after_reply": ("exit", 3),
    }
    assert failpoints.parse("") == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("broker.nowhere=kill", "'broker.nowhere=kill': expected <point>=<action>[@N]"),
        ("broker.start.after_spawn", "expected <point>=<action>[@N]"),
        ("broker.start.after_spawn=boom", "action 'boom' is not one of kill, exit"),
        ("broker.start.after_spawn=kill@0", "@0 must be a positive hit number"),
        ("broker.start.after_spawn=kill@x", "@x must be a positive hit number"),
    ],
)
def test_bad_values_are_one_clear_error(text: str, says: str) -> None:
    with pytest.raises(failpoints.FailpointError) as err:
        failpoints.parse(text)
    assert str(err.value).startswith("LITHOS_FAILPOINTS: ")
    assert says in str(err.value)


def test_arm_from_environ_reads_once_and_removes_the_variable() -> None:
    env = {failpoints.ENV: "broker.reap.after_wait=kill@2", "PATH": "/bin"}
    failpoints.arm_from_environ(env)
    assert env == {"PATH": "/bin"}
    assert failpoints.pending("broker.") == "broker.reap.after_wait=kill@2"


def test_count_goes_down_per_hit_and_passes_on_what_is_left() -> None:
    failpoints.arm("broker.reap.after_wait=kill@3,supervisor.start.after_reply=exit")
    failpoints.hit("broker.reap.after_wait")
    failpoints.hit("broker.start.after_spawn")  # not armed: nothing
    assert failpoints.pending("broker.") == "broker.reap.after_wait=kill@2"
    assert failpoints.pending("supervisor.") == "supervisor.start.after_reply=exit@1"


def test_hand_over_disarms_here() -> None:
    failpoints.arm("supervisor.start.after_reply=kill,broker.start.after_spawn=kill")
    assert failpoints.hand_over("supervisor.") == "supervisor.start.after_reply=kill@1"
    assert failpoints.hand_over("supervisor.") == ""
    failpoints.hit("supervisor.start.after_reply")  # handed over: does not fire here
    assert failpoints.pending("broker.") == "broker.start.after_spawn=kill@1"


def _run(points: str, hits: int) -> subprocess.CompletedProcess[str]:
    code = ("from protocol import failpoints\nfailpoints.arm_from_environ()\n"
            f"for i in range({hits}):\n    print(i, flush=True)\n"
            "    failpoints.hit('broker.reap.after_wait')\n")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={failpoints.ENV: points}, check=False)  # fmt: skip


@pytest.mark.parametrize(("action", "status"), [("kill", -9), ("exit", failpoints.EXIT_CODE)])
def test_a_point_fires_on_its_hit(action: str, status: int) -> None:
    done = _run(f"broker.reap.after_wait={action}@2", 5)
    assert done.returncode == status
    assert done.stdout.split() == ["0", "1"]
    assert f"failpoint broker.reap.after_wait: {action}" in done.stderr


def test_unarmed_hits_do_nothing() -> None:
    done = _run("", 3)
    assert done.returncode == 0 and done.stdout.split() == ["0", "1", "2"]


def test_every_point_is_placed_once_and_documented() -> None:
    placed: dict[str, int] = {}
    for part in ("broker", "supervisor", "protocol", "knot"):
        for path in (REPO / part).rglob("*.py"):
            for name in re.findall(r"failpoints\.hit\(\"([\w.]+)\"\)", path.read_text()):
                placed[name] = placed.get(name, 0) + 1
    assert placed == dict.fromkeys(failpoints.POINTS, 1)
    doc = (REPO / "docs" / "reliability.md").read_text()
    for name in failpoints.POINTS:
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["-m", "broker.main", "-C", "/nonexistent/master.yaml"], "Fatal error: "),
        (["-m", "supervisor", "--config", "/nonexistent", "--fd", "0"],
         "supervisor: Fatal error: "),
    ],
)
def test_lithos_tree_and_supervisor_refuse_a_bad_value(argv: list[str], prefix: str) -> None:
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          env={failpoints.ENV: "broker.start.after_spawn=crash"}, check=False)
    assert done.returncode == 1
    assert done.stderr == (f"{prefix}LITHOS_FAILPOINTS: 'broker.start.after_spawn=crash': "
                           "action 'crash' is not one of kill, exit\n")  # fmt: skip
