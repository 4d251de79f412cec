"""Issue 2: the installed `lithos_check` passes the bundled example and names the
file and the key of a broken copy. Runs against the console script installed next
to this interpreter (tests/run installs lithos into its venv first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
DEMO_ROOT = Path("/run/lithos-demo")


@pytest.fixture
def installed_check() -> str:
    script = Path(sys.executable).parent / "lithos_check"
    if not script.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{script} is missing: tests/run must `pip install .` into its venv")
        pytest.skip("lithos is not installed next to this interpreter (run tests/run)")
    return str(script)


@pytest.fixture
def demo_tree(tmp_path: Path):
    if DEMO_ROOT.exists():
        pytest.skip(f"{DEMO_ROOT} exists: is the demo running?")
    subprocess.run([sys.executable, str(REPO / "examples/demo/build.py"), str(DEMO_ROOT)],
                   check=True, cwd=REPO, capture_output=True)  # fmt: skip
    try:
        yield
    finally:
        shutil.rmtree(DEMO_ROOT, ignore_errors=True)


def test_installed_lithos_check_on_the_example(
    installed_check: str, demo_tree, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    master = REPO / "examples/demo/master.yaml"
    ok = subprocess.run([installed_check, "-C", str(master)], capture_output=True, text=True,
                        cwd="/")  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr

    broken = tmp_path / "demo"
    shutil.copytree(REPO / "examples/demo", broken)
    bad = broken / "processes/demo.yaml"
    bad.write_text(bad.read_text().replace("instances: 3", "instances: many"))
    res = subprocess.run([installed_check, "-C", str(broken / "master.yaml")],
                         capture_output=True, text=True, cwd="/")  # fmt: skip
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert str(bad) in out and "instances" in out and "many" in out
