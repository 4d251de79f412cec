"""Runtime stand-ins for the few `typing` names our code uses outside annotations.

The broker and the supervisor live as long as the host, and `typing` would stay in
their memory (about 0.6 MB each, issue #10) although only type checkers need it:
every module has `from __future__ import annotations`, so annotations are strings
that nothing evaluates but protocol/codec.py, which reads builtin generics itself.
A module that needs a typing name at runtime writes

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import Generic, NewType, TypeVar
    else:
        from protocol.hints import Generic, NewType, TypeVar

so type checkers see typing's own (mypy treats any `TYPE_CHECKING` as true), and the
interpreter these. Names used only in annotations are imported under
`if TYPE_CHECKING:` alone. tests/e2e/test_imports.py checks that neither daemon
imports typing.
Rules: each stand-in does at runtime what the typing name does there, no more.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


class Generic:
    """typing.Generic at runtime: `Generic[K]` as a base is this class."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> type:
        return cls


def TypeVar(name: str, *constraints: object, bound: object = None) -> str:  # noqa: N802
    """typing.TypeVar at runtime: only Generic[...] sees it, and ignores it."""
    return name


class NewType:
    """typing.NewType at runtime: calling it is the identity; `Pid | None` is the
    supertype's union (`int | None`), which is all protocol/codec.py reads of it."""

    def __init__(self, name: str, supertype: type) -> None:
        self.__name__ = self.__qualname__ = name
        self.__supertype__ = supertype

    def __call__(self, value: object) -> object:
        return value

    def __or__(self, other: object) -> object:
        return self.__supertype__ | other

    def __ror__(self, other: object) -> object:
        return other | self.__supertype__

    def __repr__(self) -> str:
        return self.__name__


def assert_never(value: NoReturn) -> NoReturn:
    """typing.assert_never: type checkers prove it unreachable; at runtime it raises."""
    raise AssertionError(f"Expected code to be unreachable, but got: {value!r}")
