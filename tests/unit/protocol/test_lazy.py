"""protocol/lazy.py: a deferred module loads on first use, once, as one module object;
and the daemons never load `inspect` or `traceback`, nor libyaml's binding (issue #10:
their fixed memory)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from protocol import lazy

REPO = Path(__file__).resolve().parents[3]
DAEMON_PACKAGES = ("broker", "supervisor", "protocol", "knot")

MODULE = """
import sys
sys.modules["{marker}"] = sys.modules.get("{marker}", 0) + 1  # counts executions
VALUE = 42
def twice(x):
    return 2 * x
"""


@pytest.fixture
def module_name(tmp_path: Path) -> Iterator[str]:
    """A fresh module on sys.path that counts how often its body ran."""
    name = f"lazy_probe_{os.getpid()}_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(marker=name + "_runs"))
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        sys.modules.pop(name + "_runs", None)


def runs(name: str) -> int:
    return sys.modules.get(name + "_runs", 0)  # type: ignore[return-value]


def test_a_deferred_module_runs_on_its_first_attribute_only(module_name: str) -> None:
    lazy.defer(module_name)
    probe = importlib.import_module(module_name)  # `import x` of the stand-in
    again = importlib.import_module(module_name)
    assert runs(module_name) == 0
    assert probe.__name__ == module_name and probe.__file__  # the dunders need no load
    assert probe.VALUE == 42
    assert runs(module_name) == 1
    assert probe.twice(4) == 8 and again.VALUE == 42
    assert runs(module_name) == 1
    assert sys.modules[module_name] is probe is again  # one module object for everyone
    assert type(probe) is type(sys)  # a plain module now


def test_from_import_of_a_deferred_module(module_name: str) -> None:
    lazy.defer(module_name)
    scope: dict[str, object] = {}
    exec(f"from {module_name} import twice", scope)  # noqa: S102 - the statement itself
    assert scope["twice"](3) == 6  # type: ignore[operator]
    assert runs(module_name) == 1


def test_defer_leaves_an_imported_or_missing_module_alone(module_name: str) -> None:
    real = importlib.import_module(module_name)
    lazy.defer(module_name)
    assert sys.modules[module_name] is real and runs(module_name) == 1
    lazy.defer("lazy_probe_not_installed")
    assert "lazy_probe_not_installed" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lazy_probe_not_installed")


def test_a_module_kept_out_does_not_import(module_name: str) -> None:
    lazy.keep_out(module_name)
    try:
        with pytest.raises(ImportError):
            importlib.import_module(module_name)
        assert runs(module_name) == 0
    finally:
        sys.modules.pop(module_name)
    real = importlib.import_module(module_name)
    lazy.keep_out(module_name)  # already imported: left alone
    assert sys.modules[module_name] is real


def daemon_modules() -> Iterator[str]:
    for package in DAEMON_PACKAGES:
        path = [str(REPO / package)]
        yield package
        for info in pkgutil.walk_packages(path, prefix=package + "."):
            if not info.name.endswith(("__main__", ".fuzz")):
                yield info.name


def test_every_dataclass_has_its_own_docstring() -> None:
    """dataclasses calls inspect.signature for a class without one, which loads inspect
    and ast into the daemon for good."""
    missing = []
    for name in daemon_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and value.__module__ == name
                    and (value.__doc__ or "").startswith(value.__name__ + "(")):
                missing.append(f"{name}.{value.__name__}")
    assert missing == []


def test_the_daemons_modules_leave_inspect_traceback_selectors_unloaded() -> None:
    """Everything the broker and the supervisor import, in a fresh `python3 -S`, an
    exception logged through the daemons' line format, a turn of their loop, and a
    config composed (without libyaml's binding)."""
    site = {str(Path(m.__file__).resolve().parents[1]) for m in (yaml, msgpack)}
    code = (
        "import sys, broker.startup, supervisor.main, logging\n"
        "from protocol.logs import LineFormatter\n"
        "handler = logging.StreamHandler(sys.stderr)\n"
        "handler.setFormatter(LineFormatter())\n"
        "log = logging.getLogger('probe')\n"
        "log.addHandler(handler)\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
        "from protocol.loop import Loop\n"
        "loop = Loop(); loop.call_later(0, loop.stop); loop.run(); loop.close()\n"
        "import yaml\n"
        "from protocol.config.yamlload import compose_text\n"
        "assert compose_text(b'a: [1, !Tmpfs {size: 1}]', 'x.yaml') is not None\n"
        "assert sys.modules['yaml._yaml'] is None and not yaml.__with_libyaml__\n"
        "print(sorted(m for m in ('ast', 'dis', 'difflib', 'linecache', 'tokenize', 'textwrap')"
        " if m in sys.modules), type(sys.modules['inspect']).__name__,"
        " type(sys.modules['traceback']).__name__, type(sys.modules['selectors']).__name__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": os.pathsep.join([str(REPO), *site])},
                         cwd=REPO, check=True, timeout=60)  # fmt: skip
    assert out.stdout.split() == ["[]", "_Deferred", "_Deferred", "_Deferred"]
    assert "failed\\nTraceback (most recent call last):\\n" in out.stderr
    assert out.stderr.rstrip().endswith("ValueError: boom")
