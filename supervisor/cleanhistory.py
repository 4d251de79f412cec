"""lithos_clean's pure part: the config-log history (X-CLEAN-3) and durations.

Owns: parsing config-log lines (`<rfc3339> <json map>`), choosing which past
process configs still count as used (--versions-min/--versions-max,
--history-days), and `--keep-recent` durations (`1h`, `2days 3h`, `90s`).
Rules: pure; the clock comes in as `now` (unix seconds). Versions are runs of
equal configs, newest first; a broken line is a version of its own (all
broken lines equal each other) and, if kept, makes the image dir unreliable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime

from protocol.structs import dataclass

BROKEN = "<broken>"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a config log: where it is, its time and the images it names."""

    file_index: int  # 0: <sandbox>.log, n: <sandbox>.log.n
    line_no: int  # 1-based
    time: float | None  # None: broken line
    images: frozenset[str] | None  # None: broken line

    @property
    def key(self) -> object:
        return BROKEN if self.images is None else self.images


@dataclass(slots=True)
class Version:
    """A run of equal configs: `first` and `last` are its oldest and newest times."""

    images: frozenset[str] | None
    first: float | None
    last: float | None
    files: set[int]
    where: str  # "<file>:<line>" of its newest line, for warnings


def parse_line(text: str, file_index: int, line_no: int) -> LogLine:
    stamp, _, body = text.strip().partition(" ")
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a map")
        images = frozenset(str(entry["image"]) for entry in doc.values())
    except (ValueError, KeyError, TypeError):
        return LogLine(file_index, line_no, None, None)
    return LogLine(file_index, line_no, when, images)


def versions(lines_newest_first: Iterable[tuple[LogLine, str]]) -> list[Version]:
    """Group consecutive equal configs (newest first) into versions."""
    out: list[Version] = []
    last_key: object = None
    for line, where in lines_newest_first:
        if out and line.key == last_key:
            v = out[-1]
            v.first = line.time if line.time is not None else v.first
            v.files.add(line.file_index)
            continue
        out.append(Version(line.images, line.time, line.time, {line.file_index}, where))
        last_key = line.key
    return out


def select(found: Sequence[Version], now: float, days: float | None,
           vmin: int, vmax: int) -> list[Version]:
    """The versions still counted as used, newest first.

    At most `vmax`; with `days`, older versions are dropped while more than
    `vmin` remain. A version counts as recent while it was current after the
    cutoff: the newest one always, an older one until its successor started.
    """
    kept = list(found[:vmax])
    if days is None:
        return kept
    cutoff = now - days * 86400
    while len(kept) > vmin:
        n = len(kept) - 1
        successor_start = kept[n - 1].first if n > 0 else now
        if successor_start is not None and successor_start >= cutoff:
            break
        kept.pop()
    return kept


_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_PART = re.compile(r"\s*(\d+)\s*([a-z]+)")


def parse_duration(text: str) -> float:
    """`1h`, `2days 3h`, `90s` (humantime's common units) -> seconds; ValueError otherwise."""
    pos, total, parts = 0, 0.0, 0
    while pos < len(text.rstrip()):
        m = _PART.match(text, pos)
        if m is None or m.group(2) not in _UNITS:
            raise ValueError(f"{text!r} is not a duration like 1h, 30min, 2days 3h "
                             f"(units: {', '.join(sorted(set(_UNITS)))})")
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos, parts = m.end(), parts + 1
    if parts == 0:
        raise ValueError(f"{text!r} is not a duration like 1h, 30min, 2days 3h")
    return total
