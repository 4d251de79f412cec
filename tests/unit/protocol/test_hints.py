"""protocol/hints.py: the runtime stand-ins for typing's names, and what running
without `typing` must not change (issue #10: the daemons never import typing).

dataclasses recognises a `ClassVar[...]` string annotation only when typing is
already in sys.modules: in a daemon, without it, `x: ClassVar[int] = 3` in a
dataclass silently becomes an instance field. So no dataclass of ours may carry
one, and every dataclass the daemons load has the same fields with typing and
without.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from protocol import hints

REPO = Path(__file__).resolve().parents[3]
DAEMON_PACKAGES = ("broker", "supervisor", "protocol", "knot")

FIELDS = """
import dataclasses, sys
if sys.argv[1] == "typing":
    import typing
import broker.main, supervisor.main, knot.main, protocol.messages, protocol.records
fields = {}
for name, module in sorted(sys.modules.items()):
    if name.split(".")[0] in sys.argv[2:]:
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and value.__module__ == name):
                fields[name + "." + value.__qualname__] = [
                    f.name for f in dataclasses.fields(value)]
print(repr(("typing" in sys.modules, fields)))
"""


def dataclass_fields(preload_typing: bool) -> tuple[bool, dict[str, list[str]]]:
    """Each dataclass the daemons load and its fields, in a fresh `python3 -S`."""
    site = {str(Path(m.__file__).resolve().parents[1]) for m in (yaml, msgpack)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", FIELDS, "typing" if preload_typing else "-",
         *DAEMON_PACKAGES],
        capture_output=True, text=True, cwd=REPO, check=True, timeout=60,
        env={"PYTHONPATH": os.pathsep.join([str(REPO), *site])})  # fmt: skip
    return ast.literal_eval(out.stdout)  # type: ignore[no-any-return]


def test_the_daemons_dataclasses_have_the_same_fields_without_typing() -> None:
    loaded, without = dataclass_fields(preload_typing=False)
    assert not loaded  # the daemons' imports leave typing out (tests/e2e/test_imports.py)
    loaded, with_typing = dataclass_fields(preload_typing=True)
    assert loaded
    assert len(without) > 50  # the messages and records at least
    assert without == with_typing
    hello = without["protocol.messages.Hello"]
    assert hello and not {"KIND", "FDS", "LARGE"} & set(hello)


def test_no_dataclass_of_ours_annotates_a_classvar_or_initvar() -> None:
    """Also in modules the daemons load late (or never): a ClassVar annotation in a
    dataclass body means a different class with typing loaded than without."""
    offenders = []
    for path in sorted(p for package in DAEMON_PACKAGES for p in (REPO / package).rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if name.endswith((".__main__", ".fuzz")):
            continue
        module = importlib.import_module(name.removesuffix(".__init__"))
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                offenders += [
                    f"{module.__name__}.{value.__qualname__}.{field}"
                    for field, hint in vars(value).get("__annotations__", {}).items()
                    if re.search(r"\b(ClassVar|InitVar)\b", str(hint))
                ]
    assert offenders == []


def test_newtype_is_the_identity_and_unions_as_its_supertype() -> None:
    pid = hints.NewType("Pid", int)
    assert pid(7) == 7 and repr(pid) == "Pid" and pid.__supertype__ is int
    assert (pid | None) == (int | None) and (None | pid) == (None | int)


def test_generic_typevar_and_assert_never() -> None:
    k = hints.TypeVar("K", bound=int)

    class Box(hints.Generic[k]):  # type: ignore[misc,valid-type]
        pass

    assert hints.Generic[k] is hints.Generic and Box.__mro__[1] is hints.Generic
    with pytest.raises(AssertionError, match="unreachable, but got: 3"):
        hints.assert_never(3)  # type: ignore[arg-type]
