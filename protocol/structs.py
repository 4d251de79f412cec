"""`dataclass`: the standard decorator, with the methods it writes per class shared.

The broker and the supervisor define about 100 dataclasses each and keep them for
the host's lifetime (issue #10: broker + supervisor <= 25 MB PSS). For every class,
dataclasses compiles `__eq__`, `__repr__` and, when frozen, `__hash__`, `__setattr__`
and `__delattr__` from source: about 8 kB of code and function objects per frozen
class, 13 kB in all. Here the class is made by dataclasses.dataclass as usual, then
those generated methods are replaced by one shared function each, which reads the
class's fields through an operator.attrgetter made once per class: 5 kB a class.
`__init__` stays generated (the codec builds every message through it).

Rules: same parameters and the same behaviour as dataclasses.dataclass (equality and
hashing over the `compare` fields, repr over the `repr` fields, FrozenInstanceError
on assignment), so `dataclasses.fields`, `replace` and `asdict` work unchanged, and
type checkers see the standard decorator. Only what dataclasses generated is replaced:
a method the class writes itself stays.
"""

from __future__ import annotations

import dataclasses
import operator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
else:

    def dataclass(cls=None, /, **params):
        """dataclasses.dataclass(cls, **params), then the generated methods shared."""

        def wrap(cls):
            return _share(dataclasses.dataclass(cls, **params))

        return wrap if cls is None else wrap(cls)


def _generated(method: object) -> bool:
    """Whether dataclasses compiled this method (its `exec` names the file <string>)."""
    method = getattr(method, "__wrapped__", method)  # __repr__ is wrapped by recursive_repr
    code = getattr(method, "__code__", None)
    return code is not None and code.co_filename == "<string>"


def _nothing(obj: object) -> tuple[()]:
    return ()


_NOTHING = staticmethod(_nothing)  # a class attribute, not a method: as attrgetter


def _share(cls: type) -> type:
    fields = dataclasses.fields(cls)
    own = cls.__dict__
    if _generated(own.get("__eq__")) or _generated(own.get("__hash__")):
        compared = [f.name for f in fields if f.compare]
        cls._structs_compared = operator.attrgetter(*compared) if compared else _NOTHING  # type: ignore[attr-defined]
    if _generated(own.get("__eq__")):
        cls.__eq__ = _eq  # type: ignore[assignment]
    if _generated(own.get("__hash__")):
        cls.__hash__ = _hash  # type: ignore[assignment]
    if _generated(own.get("__repr__")):
        cls._structs_shown = tuple(f.name for f in fields if f.repr)  # type: ignore[attr-defined]
        cls.__repr__ = _repr  # type: ignore[assignment]
    if _generated(own.get("__setattr__")):
        cls.__setattr__ = _frozen_setattr  # type: ignore[assignment]
    if _generated(own.get("__delattr__")):
        cls.__delattr__ = _frozen_delattr  # type: ignore[assignment]
    return cls


def _eq(self: object, other: object) -> object:
    if other.__class__ is self.__class__:
        key = self._structs_compared  # type: ignore[attr-defined]
        return (key(self),) == (key(other),)  # in tuples: `is` first, as dataclasses
    return NotImplemented


def _hash(self: object) -> int:
    return hash(self._structs_compared(self))  # type: ignore[attr-defined]


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._structs_shown)  # type: ignore[attr-defined]
    return f"{type(self).__qualname__}({shown})"


def _frozen_setattr(self: object, name: str, value: object) -> None:
    _refuse(self, name, "assign to")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: object, name: str) -> None:
    _refuse(self, name, "delete")
    object.__delattr__(self, name)


def _refuse(self: object, name: str, verb: str) -> None:
    """As dataclasses: a frozen class refuses every assignment; a plain subclass of
    one refuses only its fields."""
    cls = type(self)
    if "__dataclass_fields__" in cls.__dict__ or name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        raise dataclasses.FrozenInstanceError(f"cannot {verb} field {name!r}")
