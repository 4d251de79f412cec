"""Standard modules the daemons import but never use, loaded only if something does.

The broker and the supervisor live as long as the host, and every module they import
stays in their memory (issue #10: broker + supervisor <= 25 MB PSS). `dataclasses`
imports `inspect` (which imports `ast`, `dis`, `tokenize`...: about 1.3 MB per
process) for one call: `inspect.signature` to write the docstring of a dataclass
that has none. Ours all have one (tests/unit/protocol/test_lazy.py checks), so `inspect` is
never used, and `defer("inspect")` before the first `import dataclasses` keeps it
unloaded: the name is bound to a module object that loads the real module the first
time one of its attributes is read. Anything that does use it still gets the whole
module, a little later: the only change is when. Likewise `traceback` (with linecache,
tokenize, textwrap: about 0.45 MB), which logging imports for formatting exceptions:
the daemons' formatters use protocol/logs.py exception_text instead. And `selectors`,
which socket imports for sendfile only (protocol/loop.py uses select.epoll).

`keep_out` goes one step further for an optional accelerator the daemons never use:
PyYAML's libyaml binding, `yaml._yaml` (with its Cython runtime, about 0.2 MB per
process). yaml imports it in a `try` and falls back to its pure-Python classes, which
are all lithos composes with (protocol/config/yamlload.py LithosLoader).

Rules: `for_daemons()` makes both calls for the daemons, first thing in their packages
(`broker/__init__.py`, `supervisor/__init__.py`), before anything imports the modules;
a module already imported is left as it is. Defer only modules the daemons never use: one first used
after the supervisor's privilege drop is imported as its account, and where the
interpreter is readable by root only (/root/.pyenv here) that import fails.
"""

from __future__ import annotations

import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is read.

    Not importlib.util.LazyLoader: its module loads on any attribute, and a plain
    `import inspect` of a module already in sys.modules reads `__spec__` (CPython
    checks whether it is still initializing), so it would load at once. Here the
    dunders the import system reads are real attributes; only a missing one loads.
    """

    def __getattr__(self, attr: str) -> object:
        # As the import system would have: this same object, already in sys.modules,
        # becomes the module (so every holder of it sees one module), then reads on.
        spec = self.__spec__
        assert spec is not None and spec.loader is not None  # set by defer()
        self.__class__ = types.ModuleType  # type: ignore[assignment]  # no more stand-in
        spec.loader.exec_module(self)
        return getattr(self, attr)


def defer(name: str) -> None:
    """Puts a stand-in for `name` in sys.modules that imports it on first use."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return  # not installed: a later import raises as it would have
    stand_in = importlib.util.module_from_spec(spec)  # __file__, __loader__... as usual
    stand_in.__class__ = _Deferred
    sys.modules[name] = stand_in


def keep_out(name: str) -> None:
    """Makes `import name` raise ImportError, as if it were not installed.

    Only for a module whose importers expect it may be missing and that the daemons
    never need (yaml._yaml). A module already imported is left as it is.
    """
    if name not in sys.modules:
        sys.modules[name] = None  # type: ignore[assignment]  # "not importable", to imports


def for_daemons() -> None:
    """What both daemons' packages call first (the list above, in one place)."""
    for name in ("inspect", "traceback", "selectors"):
        defer(name)
    keep_out("yaml._yaml")  # libyaml's binding: LithosLoader is pure Python
