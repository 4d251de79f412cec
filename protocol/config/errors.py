"""Config problems: one `Problem` per thing wrong, raised together as `ConfigError`.

Owns the error vocabulary of the four config files. Rule: a loader never stops
at the first problem it finds; it collects every problem of the file and raises
one ConfigError carrying all of them (STYLE P8: file, key, value, what is wrong).
Imports nothing of ours.
"""

from __future__ import annotations

import json

from protocol.structs import dataclass

__all__ = ["ConfigError", "Problem", "show_value"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in one config file.

    `key` is the dotted key path in the user's spelling (`volumes./data.size`);
    `value` is the offending value as written; `line` and `column` are 1-based,
    0 if unknown.
    """

    file: str
    key: str
    value: str
    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        parts = [self.file]
        if self.key:
            parts.append(self.key)
        head = ": ".join(parts)
        body = f"{self.value} {self.message}" if self.value else self.message
        where = ""
        if self.line:
            where = f" [line {self.line}" + (f", column {self.column}]" if self.column else "]")
        return f"{head}: {body}{where}"

    def as_json(self) -> dict[str, str | int]:
        """The shape of `lithos_check --json`."""
        return {"file": self.file, "key": self.key, "value": self.value,
                "message": self.message, "line": self.line, "column": self.column}


class ConfigError(Exception):
    """A config file (or several) is wrong; `.problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def show_value(text: str) -> str:
    """Render a scalar for a message: as written, quoted when it would be ambiguous."""
    if text == "" or text != text.strip() or any(c in text for c in " \t\n:#\"'"):
        return json.dumps(text, ensure_ascii=False)
    if len(text) > 80:
        return json.dumps(text[:77] + "...", ensure_ascii=False)
    return text
