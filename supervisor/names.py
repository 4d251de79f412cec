"""Instance names: `<sandbox>/<process>.<index>` (T-51), e.g. `web/django.3`.

Owns building and splitting them; pure. The broker rechecks every name it gets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InstanceName:
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


def parse_instance_name(name: str) -> InstanceName:
    """`web/django.3` -> InstanceName("web", "django", 3). Raises: ValueError."""
    sandbox, slash, rest = name.partition("/")
    process, dot, index = rest.rpartition(".")
    if not (slash and dot and sandbox and process and index.isdigit()):
        raise ValueError(f"instance name: {name!r} is not <sandbox>/<process>.<index>")
    return InstanceName(sandbox, process, int(index))
