"""The names lithos gives things: sandboxes, processes and their instances (T-51).

Owns the one grammar every part checks names against, so that lithos_check, the
supervisor, the wire codec and the broker can never disagree about a name:
a sandbox or process name is 1-64 of `[A-Za-z0-9_-]` (it becomes part of file,
cgroup and instance names), and an instance is `<sandbox>/<process>.<index>` with
a decimal index below 1000000 and no leading zero, e.g. `web/django.3`. Pure.
"""

from __future__ import annotations

import re

from protocol.structs import dataclass

MAX_NAME_CHARS = 64
NAME_PATTERN = rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}"
INDEX_PATTERN = r"0|[1-9][0-9]{0,5}"
NAME_RE = re.compile(NAME_PATTERN)
INSTANCE_RE = re.compile(rf"({NAME_PATTERN})/({NAME_PATTERN})\.({INDEX_PATTERN})")
NAME_RULE = f"1-{MAX_NAME_CHARS} of letters, digits, '_' and '-'"


def is_name(text: str) -> bool:
    """A valid sandbox or process name."""
    return NAME_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class InstanceName:
    """An instance's name in parts: `web/django.1` is (web, django, 1)."""

    sandbox: str
    process: str
    index: int

    def __str__(self) -> str:
        return f"{self.sandbox}/{self.process}.{self.index}"

    @property
    def entry(self) -> tuple[str, str]:
        """(sandbox, process): the process-config entry this instance belongs to."""
        return (self.sandbox, self.process)


def instance_name(sandbox: str, process: str, index: int) -> str:
    return str(InstanceName(sandbox, process, index))


def parse_instance_name(text: str) -> InstanceName:
    """`web/django.3` -> InstanceName("web", "django", 3). Raises: ValueError."""
    m = INSTANCE_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text[:200]!r} is not an instance name SANDBOX/PROCESS.N "
            f"(names of {NAME_RULE}, N a decimal below 1000000)"
        )
    return InstanceName(m.group(1), m.group(2), int(m.group(3)))
