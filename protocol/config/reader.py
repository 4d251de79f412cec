"""Turning checked YAML nodes into typed values, collecting every problem.

Owns the value rules shared by the four configs: key spelling (Q-2: snake_case
or dashed; `_`-prefixed keys ignored, Q-3; unknown keys are errors with a
close-spelling hint), merge keys `<<` and `!*Unpack` (Q-10), implicit vs.
explicit null (Q-6), booleans (Q-5), humannum numbers (Q-7), plain scalars
(Q-8) and ranges (Q-13). Rule: a parser either returns a value or records a
Problem in the Ctx and raises Invalid; callers carry on with the next key so
one load reports every problem. Works on nodes only; never constructs objects
with PyYAML.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError, Problem, show_value
from .idranges import IdRanges
from .yamlload import STD_PREFIX, compose_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")
    Parser = Callable[["Ctx", Node, str], T]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NULL_TAG = STD_PREFIX + "null"
MERGE_TAG = STD_PREFIX + "merge"
UNPACK_TAG = "!*Unpack"


class Invalid(Exception):
    """Internal: the problem is already recorded in the Ctx; skip this value."""


class Ctx:
    """The problems found so far in one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def error(self, key: str, node: Node | None, message: str, value: str | None = None) -> None:
        shown = describe(node) if value is None and node is not None else (value or "")
        line = int(node.start_mark.line) + 1 if node is not None else 0
        column = int(node.start_mark.column) + 1 if node is not None else 0
        self.problems.append(Problem(self.file, key, shown, message, line, column))

    def fail(self, key: str, node: Node | None, message: str, value: str | None = None) -> Invalid:
        """Record a problem and return Invalid for the caller to raise."""
        self.error(key, node, message, value)
        return Invalid()

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(sorted(self.problems, key=lambda p: p.line))


def describe(node: Node) -> str:
    tag = "" if node.tag.startswith(STD_PREFIX) else node.tag + " "
    if isinstance(node, ScalarNode):
        return (tag + show_value(str(node.value))).strip() if node.value or not tag else tag.strip()
    return tag + ("[...]" if isinstance(node, SequenceNode) else "{...}")


def join(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


def is_implicit_null(node: Node) -> bool:
    """`key:` with nothing after it: counts as absent (Q-6)."""
    return (isinstance(node, ScalarNode) and node.tag == NULL_TAG
            and node.value == "" and node.style is None)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def _plain_tag(ctx: Ctx, node: Node, key: str) -> None:
    if not node.tag.startswith(STD_PREFIX) and node.tag != UNPACK_TAG:
        raise ctx.fail(key, node, f"the tag {node.tag} is not expected here")


def mapping_items(ctx: Ctx, node: Node, key: str) -> dict[str, tuple[Node, Node]]:
    """The key -> (key node, value node) pairs, merges applied; explicit keys win."""
    if node.tag == UNPACK_TAG and isinstance(node, SequenceNode):
        unpacked: dict[str, tuple[Node, Node]] = {}
        for part in node.value:
            unpacked.update(mapping_items(ctx, part, key))
        return unpacked
    _plain_tag(ctx, node, key)
    if not isinstance(node, MappingNode):
        raise ctx.fail(key, node, "must be a mapping")
    explicit: dict[str, tuple[Node, Node]] = {}
    merged: dict[str, tuple[Node, Node]] = {}
    for knode, vnode in node.value:
        if knode.tag == MERGE_TAG:
            sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
            for source in sources:
                for text, pair in mapping_items(ctx, source, key).items():
                    merged.setdefault(text, pair)
            continue
        if not isinstance(knode, ScalarNode):
            ctx.error(key, knode, "a key must be a plain string, not a collection")
            continue
        text = str(knode.value)
        if text in explicit:
            ctx.error(join(key, text), knode, "is given twice", "")
            continue
        explicit[text] = (knode, vnode)
    return explicit | {t: p for t, p in merged.items() if t not in explicit}


def untag(node: Node) -> Node:
    """A copy of a tagged collection with its plain tag, to read its payload."""
    if isinstance(node, MappingNode):
        return MappingNode(STD_PREFIX + "map", node.value, node.start_mark, node.end_mark)
    if isinstance(node, SequenceNode):
        return SequenceNode(STD_PREFIX + "seq", node.value, node.start_mark, node.end_mark)
    assert isinstance(node, ScalarNode)
    return ScalarNode(STD_PREFIX + "str", node.value, node.start_mark, node.end_mark, node.style)


def sequence_items(ctx: Ctx, node: Node, key: str) -> list[Node]:
    """The items of a sequence, `!*Unpack` of sequences flattened."""
    if node.tag == UNPACK_TAG and isinstance(node, SequenceNode):
        return [item for part in node.value for item in sequence_items(ctx, part, key)]
    _plain_tag(ctx, node, key)
    if not isinstance(node, SequenceNode):
        raise ctx.fail(key, node, "must be a sequence (a YAML list)")
    return list(node.value)


class MapReader:
    """Reads one structure: `get`/`require` each field, then `finish` for leftovers."""

    def __init__(self, ctx: Ctx, node: Node | None, key: str) -> None:
        self.ctx = ctx
        self.key = key
        empty = node is None or is_implicit_null(node)
        self.items = {} if node is None or empty else mapping_items(ctx, node, key)
        self.node = node
        self.used: dict[str, str] = {}    # spelling -> field name
        self.known: list[str] = []
        self.spellings: dict[str, str] = {}   # every accepted spelling -> field name

    def _find(self, name: str, aliases: tuple[str, ...]) -> tuple[str, Node] | None:
        self.known.append(name.replace("_", "-"))
        for spelling in (name, name.replace("_", "-"), *aliases):
            self.spellings[spelling] = name
        for spelling in (name, name.replace("_", "-"), *aliases):
            if spelling in self.items:
                self.used[spelling] = name
                return spelling, self.items[spelling][1]
        return None

    def get(self, name: str, parse: Parser[T], default: T, aliases: tuple[str, ...] = ()) -> T:
        """The parsed value of an optional field, or `default` when absent or invalid."""
        found = self._find(name, aliases)
        if found is None or is_implicit_null(found[1]):
            return default
        try:
            return parse(self.ctx, found[1], join(self.key, found[0]))
        except Invalid:
            return default

    def require(self, name: str, parse: Parser[T], placeholder: T) -> T:
        """The parsed value of a required field (a problem is recorded when absent)."""
        found = self._find(name, ())
        if found is None or is_implicit_null(found[1]):
            self.ctx.error(join(self.key, name.replace("_", "-")), found[1] if found else self.node,
                           "is required but missing", "")
            return placeholder
        try:
            return parse(self.ctx, found[1], join(self.key, found[0]))
        except Invalid:
            return placeholder

    def finish(self) -> None:
        """Report keys nobody asked for (Q-3), and a field given in two spellings (Q-2)."""
        by_field = {field: spelling for spelling, field in self.used.items()}
        for text, (knode, _) in self.items.items():
            if text in self.used or text.startswith("_"):
                continue
            field = self.spellings.get(text, text.replace("-", "_"))
            if field in by_field:
                self.ctx.error(join(self.key, text), knode,
                               f"is the same key as {by_field[field]!r}; give it only once", "")
                continue
            close = closest(text.replace("_", "-"), self.known)
            hint = f" (did you mean {close!r}?)" if close else ""
            self.ctx.error(join(self.key, text), knode, "is not a known key" + hint, "")


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known key nearest to `word` if it looks like a typo of it: at most a third
    of the longer one's letters edited (Levenshtein); the first of equals wins.

    Not difflib: it would stay in both daemons' memory for this error path, and the
    supervisor, past its privilege drop, may not be able to import it then.
    """
    best: str | None = None
    best_edits = 0
    for key in known:
        edits = _edits(word, key)
        if 3 * edits <= max(len(word), len(key)) and (best is None or edits < best_edits):
            best, best_edits = key, edits
    return best


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: inserts, deletions and substitutions from a to b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def run_parse(data: bytes, file: str, build: Callable[[Ctx, Node | None], T]) -> T:
    """Compose `data`, run `build` on the root node, raise every problem at once.

    Raises:
        ConfigError: the file is unreadable as YAML or any value is wrong.
    """
    node = compose_text(data, file)
    ctx = Ctx(file)
    try:
        result = build(ctx, node)
    except Invalid:
        ctx.raise_if_any()
        raise ConfigError([Problem(file, "", "", "is invalid")]) from None
    ctx.raise_if_any()
    return result


# -- scalar parsers --------------------------------------------------------------

def scalar_text(ctx: Ctx, node: Node, key: str) -> str:
    _plain_tag(ctx, node, key)
    if not isinstance(node, ScalarNode):
        raise ctx.fail(key, node, "must be a single value, not a collection")
    return str(node.value)


def p_str(ctx: Ctx, node: Node, key: str) -> str:
    if is_null(node) and not is_implicit_null(node):
        raise ctx.fail(key, node, "must be a string, not null")
    text = scalar_text(ctx, node, key)
    if "\0" in text:
        raise ctx.fail(key, node, "must not contain a NUL character")
    return text


def optional(parse: Parser[T]) -> Parser[T | None]:
    """Accept an explicit null (`null`, `~`) as None (Q-6)."""
    def parse_optional(ctx: Ctx, node: Node, key: str) -> T | None:
        return None if is_null(node) else parse(ctx, node, key)
    return parse_optional


def p_bool(ctx: Ctx, node: Node, key: str) -> bool:
    text = scalar_text(ctx, node, key)
    if text in ("true", "false"):
        return text == "true"
    raise ctx.fail(key, node, "is not a boolean (write true or false)")


_NUMBER = re.compile(r"([+-]?)(0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+|[0-9_]+)(k|M|G|ki|Mi|Gi)?")
_UNITS = {"k": 1000, "M": 10**6, "G": 10**9, "ki": 1024, "Mi": 2**20, "Gi": 2**30}
_BASES = {"0x": 16, "0o": 8, "0b": 2}


def parse_humannum(text: str) -> int:
    """Parse a Numeric value (Q-7). Raises ValueError with the reason and a hint."""
    text = text.strip()
    if not text:
        raise ValueError("is empty (give a number)")
    match = _NUMBER.fullmatch(text)
    if match is None:
        bad_unit = re.fullmatch(r"[+-]?[0-9_]+\s*([A-Za-z]+)", text)
        if bad_unit and bad_unit.group(1) in ("x", "o", "b"):
            raise ValueError("has no digits after its prefix")
        if bad_unit:
            base = bad_unit.group(1)[0].upper()
            number = text[: bad_unit.start(1)].strip()
            if base in "MG":
                hint = f"use {number}{base} or {number}{base}i; units are case-sensitive"
            else:
                hint = f"use {number}k or {number}ki; units are case-sensitive"
            raise ValueError(f"has an unknown unit {bad_unit.group(1)!r} ({hint})")
        if re.fullmatch(r"[+-]?[0-9_]*\.[0-9_]*([eE][+-]?\d+)?", text):
            raise ValueError("is not a whole number (fractions are not allowed)")
        raise ValueError("is not a number (accepted: 123, 1_000, 0x7b, 0o173, 0b1111, "
                         "with optional units k, M, G, ki, Mi, Gi)")
    sign, digits, unit = match.groups()
    digits = digits.replace("_", "")
    base = _BASES.get(digits[:2], 10)
    body = digits[2:] if base != 10 else digits
    if not body:
        raise ValueError("has no digits after its prefix")
    value = int(body, base) * _UNITS.get(unit or "", 1)
    return -value if sign == "-" else value


def p_num(minimum: int = 0, maximum: int = 2**64 - 1) -> Parser[int]:
    """A Numeric field (humannum units allowed) within [minimum, maximum]."""
    def parse_num(ctx: Ctx, node: Node, key: str) -> int:
        text = scalar_text(ctx, node, key)
        try:
            value = parse_humannum(text)
        except ValueError as e:
            raise ctx.fail(key, node, str(e)) from None
        return check_range(ctx, node, key, value, minimum, maximum)
    return parse_num


def p_int(minimum: int = 0, maximum: int = 2**32 - 1) -> Parser[int]:
    """A plain Scalar integer: digits only, no units or prefixes (Q-8)."""
    def parse_int(ctx: Ctx, node: Node, key: str) -> int:
        text = scalar_text(ctx, node, key)
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ctx.fail(key, node, "is not a plain whole number (units and prefixes like "
                           "1k or 0x10 are not accepted for this key)")
        return check_range(ctx, node, key, int(text), minimum, maximum)
    return parse_int


def check_range(ctx: Ctx, node: Node, key: str, value: int, minimum: int, maximum: int) -> int:
    if value < minimum:
        raise ctx.fail(key, node, f"must be at least {minimum}")
    if value > maximum:
        raise ctx.fail(key, node, f"must be at most {maximum}")
    return value


def p_list(item: Parser[T]) -> Parser[tuple[T, ...]]:
    def parse_list(ctx: Ctx, node: Node, key: str) -> tuple[T, ...]:
        out: list[T] = []
        bad = False
        for index, child in enumerate(sequence_items(ctx, node, key)):
            try:
                out.append(item(ctx, child, f"{key}[{index}]"))
            except Invalid:
                bad = True
        if bad:
            raise Invalid()
        return tuple(out)
    return parse_list


def p_map(value: Parser[T], check_key: Callable[[str], str | None] | None = None,
          ) -> Parser[Mapping[str, T]]:
    """A mapping of string keys; `check_key` returns a complaint or None."""
    def parse_map(ctx: Ctx, node: Node, key: str) -> Mapping[str, T]:
        out: dict[str, T] = {}
        bad = False
        items = {} if is_implicit_null(node) else mapping_items(ctx, node, key)
        for text, (knode, vnode) in items.items():
            complaint = check_key(text) if check_key else None
            if complaint:
                ctx.error(join(key, text), knode, complaint, "")
                bad = True
                continue
            try:
                out[text] = value(ctx, vnode, join(key, text))
            except Invalid:
                bad = True
        if bad:
            raise Invalid()
        return MappingProxyType(out)
    return parse_map


def p_ranges(ctx: Ctx, node: Node, key: str) -> IdRanges:
    pairs: list[tuple[int, int]] = []
    bad = False
    for index, child in enumerate(sequence_items(ctx, node, key)):
        try:
            pairs.append(IdRanges.parse_item(scalar_text(ctx, child, f"{key}[{index}]")))
        except Invalid:
            bad = True
        except ValueError as e:
            ctx.error(f"{key}[{index}]", child, f"is not a range ({e}; write N or A-B)")
            bad = True
    if bad:
        raise Invalid()
    return IdRanges.from_pairs(pairs)


def p_ip(ctx: Ctx, node: Node, key: str) -> IpAddress:
    try:
        return ipaddress.ip_address(scalar_text(ctx, node, key).strip())
    except ValueError:
        raise ctx.fail(key, node, "is not an IP address (like 10.0.0.2)") from None


def p_network(ctx: Ctx, node: Node, key: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(scalar_text(ctx, node, key).strip(), strict=False)
    except ValueError:
        raise ctx.fail(key, node, "is not a network (like 10.0.0.0/24)") from None


def absolute_clean(text: str) -> str | None:
    """Why `text` is not an absolute path without `..`, or None when it is (V-3)."""
    if not text.startswith("/"):
        return "must be an absolute path (starting with /)"
    if ".." in text.split("/"):
        return "must not contain '..'"
    if "\0" in text:
        return "must not contain a NUL byte"
    return None


def p_abspath(ctx: Ctx, node: Node, key: str) -> str:
    text = p_str(ctx, node, key)
    complaint = absolute_clean(text)
    if complaint:
        raise ctx.fail(key, node, complaint)
    return text
