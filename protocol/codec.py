"""The codec: message objects <-> one msgpack datagram `[type, id, body]`.

Owns: the wire form of every message, the closed registry of type tags, and the
limits (bytes per datagram, lengths, fds per message). Rules: this is the only
module that imports msgpack; it performs no I/O (fds are plain ints here and the
caller owns them); decoding anything raises ProtocolViolation and nothing else;
decoding checks exact field names and types (no unknown, missing or duplicate
field; bool is not int; ints fit in int64; floats are finite; no ext types).
Encoding is liberal only where Python is (an int where a float is declared, an
IntEnum where an int is) and raises ValueError/TypeError for a local mistake.
Must not import os, socket, time or subprocess.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import types
from collections.abc import Callable, Sequence

import msgpack  # type: ignore[import-untyped,unused-ignore]  # no stubs published

from protocol.errors import ProtocolViolation
from protocol.messages import MESSAGE_TYPES, Kind, Message
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    ToWire = Callable[[Any], Any]
    FromWire = Callable[[Any], Any]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_LARGE_MESSAGE_BYTES = 1024 * 1024  # Snapshot, StatusTree, PlanSwitch...
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MAP_LEN = 32  # more than the fields of any message or record
MAX_FDS = max(cls.FDS for cls in MESSAGE_TYPES)

REGISTRY: dict[str, type[Message]] = {cls.__name__: cls for cls in MESSAGE_TYPES}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded datagram: the message, its request id, the fds that came with it."""

    message: Message
    request_id: int
    fds: tuple[int, ...]


# --- the schema, compiled once from the dataclasses' type hints ----------------------


def _kind(value: object) -> str:
    """The wire kind of a decoded value, for error messages (lists are maps here)."""
    if type(value) is list:
        return "map"
    if type(value) is tuple:
        return "array"
    return type(value).__name__


def _int_from(value: Any) -> int:
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolViolation(f"expected an int64, got {_kind(value)} {value!r:.40}")
    return value


def _int_to(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return int(value)


def _float_from(value: Any) -> float:
    if type(value) is not float or not math.isfinite(value):
        raise ProtocolViolation(f"expected a finite float, got {_kind(value)} {value!r:.40}")
    return value


def _float_to(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a float, got {type(value).__name__}")
    return float(value)


def _exact(tp: type) -> tuple[ToWire, FromWire]:
    def to_wire(value: Any) -> Any:
        if type(value) is not tp:
            raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
        return value

    def from_wire(value: Any) -> Any:
        if type(value) is not tp:
            raise ProtocolViolation(f"expected {tp.__name__}, got {_kind(value)} {value!r:.40}")
        return value

    return to_wire, from_wire


def _enum(cls: type[enum.Enum]) -> tuple[ToWire, FromWire]:
    members = {member.value: member for member in cls}
    value_type = type(next(iter(members)))  # str or int; checked before the lookup
    accepted = ", ".join(repr(value) for value in members)

    def to_wire(value: Any) -> Any:
        if not isinstance(value, cls):
            raise TypeError(f"expected {cls.__name__}, got {type(value).__name__}")
        return value.value

    def from_wire(value: Any) -> Any:
        member = members.get(value) if type(value) is value_type else None
        if member is None:
            raise ProtocolViolation(f"{value!r:.40} is not a {cls.__name__} (accepted: {accepted})")
        return member

    return to_wire, from_wire


def _optional(inner: tuple[ToWire, FromWire]) -> tuple[ToWire, FromWire]:
    inner_to, inner_from = inner

    def to_wire(value: Any) -> Any:
        return None if value is None else inner_to(value)

    def from_wire(value: Any) -> Any:
        return None if value is None else inner_from(value)

    return to_wire, from_wire


def _sequence(inner: tuple[ToWire, FromWire]) -> tuple[ToWire, FromWire]:
    inner_to, inner_from = inner

    def to_wire(value: Any) -> Any:
        if not isinstance(value, tuple | list):
            raise TypeError(f"expected a tuple, got {type(value).__name__}")
        return [inner_to(item) for item in value]

    def from_wire(value: Any) -> Any:
        if type(value) is not tuple:
            raise ProtocolViolation(f"expected an array, got {_kind(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(inner_from(item))
            except ProtocolViolation as error:
                raise ProtocolViolation(f"[{index}]: {error}") from None
        return tuple(items)

    return to_wire, from_wire


def _record(cls: type) -> tuple[ToWire, FromWire]:
    """A dataclass: a map with exactly its field names, in any order."""
    fields = [(f.name, _compile(_hint(cls, f.name))) for f in dataclasses.fields(cls)]
    from_wire_of = {name: conv[1] for name, conv in fields}
    expected = ", ".join(from_wire_of) or "no fields"

    def to_wire(value: Any) -> Any:
        if type(value) is not cls:
            raise TypeError(f"expected {cls.__name__}, got {type(value).__name__}")
        body = {}
        for name, (field_to, _) in fields:
            try:
                body[name] = field_to(getattr(value, name))
            except (TypeError, ValueError) as error:
                raise type(error)(f"{cls.__name__}.{name}: {error}") from None
        return body

    def from_wire(value: Any) -> Any:
        if type(value) is not list:  # object_pairs_hook: a map is a list of pairs
            raise ProtocolViolation(f"expected a map of {cls.__name__}, got {_kind(value)}")
        kwargs: dict[str, Any] = {}
        for key, item in value:
            field_from = from_wire_of.get(key)
            if field_from is None:
                raise ProtocolViolation(
                    f"{cls.__name__}: unknown field {key!r:.40} (expected: {expected})"
                )
            if key in kwargs:
                raise ProtocolViolation(f"{cls.__name__}: field {key!r} given twice")
            try:
                kwargs[key] = field_from(item)
            except ProtocolViolation as error:
                raise ProtocolViolation(f"{cls.__name__}.{key}: {error}") from None
        if len(kwargs) != len(fields):
            missing = ", ".join(name for name, _ in fields if name not in kwargs)
            raise ProtocolViolation(f"{cls.__name__}: missing field(s) {missing}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as error:
            raise ProtocolViolation(f"{cls.__name__}: {error}") from None

    return to_wire, from_wire


def _hint(cls: type, name: str) -> object:
    """The annotation of field `name`, evaluated where the class that declares it was
    defined: what typing.get_type_hints gives, without typing in the daemons' memory
    (protocol/hints.py). Annotations are builtins, `X | None`, `tuple[X, ...]`, ours."""
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if name in annotations:
            text = annotations[name]
            if not isinstance(text, str):
                return text
            return eval(text, vars(sys.modules[klass.__module__]))  # our own source's
    raise TypeError(f"protocol.codec: {cls.__name__}.{name} has no annotation")


def _compile(hint: Any) -> tuple[ToWire, FromWire]:
    """The converters of one type hint; the supported hints are exactly these."""
    supertype = getattr(hint, "__supertype__", None)  # a NewType such as Pid
    if supertype is not None:
        return _compile(supertype)
    if isinstance(hint, types.UnionType):
        args = hint.__args__
        if len(args) == 2 and type(None) in args:
            return _optional(_compile(next(a for a in args if a is not type(None))))
    elif isinstance(hint, types.GenericAlias) and hint.__origin__ is tuple:
        args = hint.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_compile(args[0]))
    elif hint is int:
        return _int_to, _int_from
    elif hint is float:
        return _float_to, _float_from
    elif hint in (str, bytes, bool):
        return _exact(hint)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _record(hint)
    raise TypeError(f"protocol.codec: unsupported type hint {hint!r}")


_BODY: dict[type[Message], tuple[ToWire, FromWire]] = {cls: _record(cls) for cls in MESSAGE_TYPES}


# --- frames -------------------------------------------------------------------------


def _check_request_id(kind: Kind, request_id: int) -> str | None:
    """Why request_id is wrong for a message of this kind, or None."""
    if kind is Kind.EVENT:
        return None if request_id == 0 else f"request id {request_id} on an event (must be 0)"
    if 1 <= request_id <= INT64_MAX:
        return None
    return f"request id {request_id} (must be 1..{INT64_MAX})"


def encode(message: Message, request_id: int, max_bytes: int | None = None) -> bytes:
    """One datagram for message; the caller sends exactly type(message).FDS fds with it.

    max_bytes defaults to the default Decoder's limit for the message's type.
    Raises ValueError or TypeError for a message this side should not send.
    """
    cls = type(message)
    if REGISTRY.get(cls.__name__) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered message type")
    if type(request_id) is not int:
        raise TypeError(f"{cls.__name__}: request id {request_id!r} is not an int")
    if why := _check_request_id(cls.KIND, request_id):
        raise ValueError(f"{cls.__name__}: bad {why}")
    body = _BODY[cls][0](message)
    data: bytes = msgpack.packb([cls.__name__, request_id, body], use_bin_type=True)
    limit = _DEFAULT_DECODER.limit_for(cls) if max_bytes is None else max_bytes
    if len(data) > limit:
        raise ValueError(f"{cls.__name__}: {len(data)} bytes exceeds the limit of {limit}")
    return data


class Decoder:
    """Validates datagrams into Frames under fixed limits; pure and reusable."""

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_large_message_bytes: int = DEFAULT_MAX_LARGE_MESSAGE_BYTES,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_large_message_bytes = max(max_large_message_bytes, max_message_bytes)

    @property
    def max_datagram_bytes(self) -> int:
        """The largest datagram any message may be (a receive buffer needs one more)."""
        return self.max_large_message_bytes

    def limit_for(self, cls: type[Message]) -> int:
        """The largest datagram this decoder accepts for a message type."""
        return self.max_large_message_bytes if cls.LARGE else self.max_message_bytes

    def decode(self, data: bytes, fds: Sequence[int]) -> Frame:
        """The Frame of one datagram and the fds that came with it (not closed here).

        Raises:
            ProtocolViolation: for anything that is not exactly a valid message.
        """
        size = len(data)
        if size > self.max_large_message_bytes:
            raise ProtocolViolation(
                f"datagram of {size} bytes exceeds {self.max_large_message_bytes}"
            )
        try:
            frame = msgpack.unpackb(
                data,
                raw=False,
                use_list=False,  # arrays are tuples, maps are lists of pairs:
                object_pairs_hook=list,  # duplicate keys stay visible
                strict_map_key=True,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size,
                max_map_len=MAX_MAP_LEN,
                max_ext_len=0,
            )
        except Exception as error:  # msgpack's many kinds (ValueError, StackError...)
            raise ProtocolViolation(f"not one msgpack value: {error!r:.200}") from None
        if type(frame) is not tuple or len(frame) != 3:
            raise ProtocolViolation(f"expected [type, id, body], got {_kind(frame)}")
        tag, request_id, body = frame
        cls = REGISTRY.get(tag) if type(tag) is str else None
        if cls is None:
            raise ProtocolViolation(f"unknown message type {tag!r:.60}")
        limit = self.limit_for(cls)
        if size > limit:
            raise ProtocolViolation(f"{tag}: datagram of {size} bytes exceeds {limit}")
        if type(request_id) is not int:
            raise ProtocolViolation(f"{tag}: request id is a {_kind(request_id)}, not an int")
        if why := _check_request_id(cls.KIND, request_id):
            raise ProtocolViolation(f"{tag}: bad {why}")
        if len(fds) != cls.FDS:
            raise ProtocolViolation(f"{tag}: came with {len(fds)} fds, takes {cls.FDS}")
        message: Message = _BODY[cls][1](body)
        return Frame(message, request_id, tuple(fds))


_DEFAULT_DECODER = Decoder()


def decode(data: bytes, fds: Sequence[int] = ()) -> Frame:
    """Decoder().decode(data, fds) with the default limits.

    Raises:
        ProtocolViolation: for anything that is not exactly a valid message.
    """
    return _DEFAULT_DECODER.decode(data, fds)
