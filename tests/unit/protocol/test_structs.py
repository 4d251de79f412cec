"""protocol/structs.py behaves as dataclasses.dataclass (issue #10: shared methods),
class by class: the same class made by both decorators, compared on what users see."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol import structs


def make(decorator: Callable[..., object], **params: object) -> dict[str, type]:
    """The same handful of classes, made with `decorator`."""

    @decorator(**params)
    class Point:
        """Two compared fields, one only shown, one neither."""

        x: int
        y: float
        label: str = dataclasses.field(default="", compare=False)
        secret: str = dataclasses.field(default="", repr=False, compare=False)

    @decorator(**params)
    class Empty:
        """No fields at all."""

    @decorator(**params)
    class One:
        """One field: equality must still see `nan is nan` as dataclasses does."""

        value: float

    @decorator(**params)
    class Own:
        """Writes its own __repr__ and __eq__: those stay."""

        x: int

        def __repr__(self) -> str:
            return "own"

        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = object.__hash__

    @decorator(**params)
    class Child(Point):
        """A dataclass subclass adds a compared field."""

        z: int = 0

    return {"Point": Point, "Empty": Empty, "One": One, "Own": Own, "Child": Child}


VARIANTS = [dict(frozen=True, slots=True), dict(slots=True), dict(frozen=True), dict(),
            dict(eq=False), dict(frozen=True, slots=True, repr=False)]  # fmt: skip


def observed(classes: dict[str, type]) -> list[object]:
    nan = float("nan")
    P, E, One, W, C = (classes[k] for k in ("Point", "Empty", "One", "Own", "Child"))  # noqa: N806
    a, b, c = P(1, 2.0, "a", "s"), P(1, 2.0, "b", "t"), P(2, 2.0)
    out: list[object] = [
        *(repr(obj).split(".")[-1].split(" at 0x")[0] for obj in (a, E(), W(1), C(1, 2.0, z=3))),
        a == b, a != b, a == c, a == (1, 2.0), E() == E(), One(nan) == One(nan),
        W(1) == W(2), C(1, 2.0) == C(1, 2.0), C(1, 2.0) == C(1, 2.0, z=1), C(1, 2.0) == P(1, 2.0),
        P.__eq__(a, 3), P.__hash__ is None, [f.name for f in dataclasses.fields(C)],
        dataclasses.asdict(a), dataclasses.replace(a, x=5) == P(5, 2.0),
        copy.copy(a) == a, copy.deepcopy(C(1, 2.0)) == C(1, 2.0),
    ]  # fmt: skip
    if P.__hash__ is not None:
        out += [hash(a) == hash(b), hash(E()) == hash(E()), hash(C(1, 2.0)) == hash(C(1, 2.0))]
    if P.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        # (Not a new name on the class itself: with slots, dataclasses' own __setattr__
        # raises TypeError there, a bug of its class re-creation; ours says frozen.)
        for obj, name in ((a, "x"), (a, "label"), (C(1, 2.0), "z"), (C(1, 2.0), "x")):
            with pytest.raises(dataclasses.FrozenInstanceError) as set_error:
                setattr(obj, name, 1)
            with pytest.raises(dataclasses.FrozenInstanceError) as del_error:
                delattr(obj, name)
            out += [str(set_error.value), str(del_error.value)]
    return out


@pytest.mark.parametrize("params", VARIANTS, ids=str)
def test_shared_methods_behave_as_the_generated_ones(params: dict[str, object]) -> None:
    assert observed(make(structs.dataclass, **params)) == observed(
        make(dataclasses.dataclass, **params))


def test_a_plain_subclass_of_a_frozen_class_may_set_its_own_attributes() -> None:
    for decorator in (structs.dataclass, dataclasses.dataclass):
        Point = make(decorator, frozen=True)["Point"]  # noqa: N806

        class Plain(Point):  # type: ignore[valid-type,misc]
            pass

        p = Plain(1, 2.0)
        p.note = "ok"
        assert p.note == "ok"
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.x = 2


def test_the_generated_methods_are_shared_and_own_ones_kept() -> None:
    classes = make(structs.dataclass, frozen=True, slots=True)
    for name in ("Point", "Empty", "One", "Child"):
        cls = classes[name]
        assert cls.__eq__ is structs._eq and cls.__hash__ is structs._hash
        assert cls.__repr__ is structs._repr and cls.__setattr__ is structs._frozen_setattr
    own = classes["Own"]
    assert own.__eq__ is not structs._eq and own.__repr__(own(1)) == "own"


def test_instances_pickle() -> None:
    Point = make(structs.dataclass, frozen=True, slots=True)["Point"]  # noqa: N806
    structs_point = Point(1, 2.0)
    # A local class cannot be pickled by name; the state functions are what matters.
    state = structs_point.__getstate__()
    clone = object.__new__(Point)
    clone.__setstate__(state)
    assert clone == structs_point
    assert pickle.loads(pickle.dumps(1)) == 1


def test_the_packages_take_dataclass_from_structs() -> None:
    """A module that took the standard decorator would cost its classes 8 kB each."""
    root = Path(__file__).resolve().parents[3]
    offenders = [str(path.relative_to(root))
                 for package in ("broker", "supervisor", "protocol", "knot")
                 for path in (root / package).rglob("*.py")
                 if path.name != "structs.py"
                 and re.search(r"^from dataclasses import .*\bdataclass\b|@dataclasses\.dataclass",
                               path.read_text(), re.M)]  # fmt: skip
    assert offenders == []
