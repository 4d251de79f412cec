"""`IdRanges`: the `allow-users`, `allow-groups` and `allow-tcp-ports` value (Q-13).

A list of `N` or `A-B` items (inclusive, 0..2**32-1) parsed once into sorted
pairs. Pure; imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.structs import dataclass

__all__ = ["IdRanges"]

U32_MAX = 2**32 - 1


def _u32(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    value = int(text)
    if value > U32_MAX:
        raise ValueError(f"{value} is larger than {U32_MAX}")
    return value


@dataclass(frozen=True, slots=True)
class IdRanges:
    """Inclusive ranges of ids (or ports); `x in ranges` tests membership."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse_item(cls, text: str) -> tuple[int, int]:
        """Parse `N` or `A-B`. Raises ValueError with a reason."""
        if "-" in text:
            start_text, _, end_text = text.partition("-")
            start, end = _u32(start_text), _u32(end_text)
            if start > end:
                raise ValueError(f"range start {start} is after its end {end}")
            return start, end
        value = _u32(text)
        return value, value

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]]) -> IdRanges:
        return cls(tuple(sorted(pairs)))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return any(start <= value <= end for start, end in self.ranges)

    def covers(self, start: int, end: int) -> bool:
        """True when [start, end] lies inside a single range (K-11 map checks)."""
        return any(a <= start and end <= b for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __str__(self) -> str:
        items = [str(a) if a == b else f"{a}-{b}" for a, b in self.ranges]
        return "[" + ", ".join(items) + "]"
