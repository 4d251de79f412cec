"""Variable types declared under a container config's `variables:` (V-10, V-11).

Owns TcpPortVar, ChoiceVar, NameVar, DottedNameVar and their value checks.
Each `check(value)` returns None when the value is acceptable, else the
reason. Whether a TcpPort is in allow-tcp-ports is the instantiator's job
(it needs the sandbox). Pure; imports nothing but the reader.
"""

from __future__ import annotations

import enum
import re

from yaml.nodes import MappingNode, Node, ScalarNode

from protocol.structs import dataclass

from .reader import Ctx, MapReader, is_implicit_null, p_list, p_str, untag

__all__ = ["Activation", "ChoiceVar", "DottedNameVar", "NameVar", "TcpPortVar", "Variable",
           "p_variable"]

_NAME = re.compile(r"[A-Za-z0-9_-]*")
_DOTTED = re.compile(r"[A-Za-z0-9_.-]*")


class Activation(enum.Enum):
    NONE = "none"
    SYSTEMD = "systemd"


@dataclass(frozen=True, slots=True)
class TcpPortVar:
    """`!TcpPort` (optionally `{activation: systemd}`): a port number 0..65535."""

    activation: Activation = Activation.NONE

    def check(self, value: str) -> str | None:
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > 65535:
            return "is not a TCP port (a whole number 0..65535)"
        return None


@dataclass(frozen=True, slots=True)
class ChoiceVar:
    """`!Choice [a, b]`: exactly one of the listed strings."""

    choices: tuple[str, ...]

    def check(self, value: str) -> str | None:
        if value in self.choices:
            return None
        return "is not one of " + ", ".join(self.choices)


@dataclass(frozen=True, slots=True)
class NameVar:
    """`!Name`: ASCII letters, digits, `-` and `_` (the empty string passes, as in Lithos)."""

    def check(self, value: str) -> str | None:
        if _NAME.fullmatch(value):
            return None
        return "contains characters that are invalid for names (alphanumeric, - and _)"


@dataclass(frozen=True, slots=True)
class DottedNameVar:
    """`!DottedName`: dot-separated names; no empty component, none starts or ends with `-`."""

    def check(self, value: str) -> str | None:
        if not _DOTTED.fullmatch(value):
            return "contains characters that are invalid for dotted names (alphanumeric, -, _, .)"
        for part in value.split("."):
            if not part or part.startswith("-") or part.endswith("-"):
                return (f"has component {part!r} which is invalid for a dotted name (empty, "
                        "or starts or ends with -)")
        return None


Variable = TcpPortVar | ChoiceVar | NameVar | DottedNameVar
VARIABLE_TAGS = ("!TcpPort", "!Choice", "!Name", "!DottedName")


def _no_payload(ctx: Ctx, node: Node, key: str) -> None:
    if not is_implicit_null(node) and not (isinstance(node, ScalarNode) and node.value == ""):
        raise ctx.fail(key, node, f"takes no value (write just {node.tag})")


def p_activation(ctx: Ctx, node: Node, key: str) -> Activation:
    text = p_str(ctx, node, key)
    if text == "systemd":
        return Activation.SYSTEMD
    raise ctx.fail(key, node, "is not accepted (only systemd; leave activation out for none)")


def p_variable(ctx: Ctx, node: Node, key: str) -> Variable:
    """One declaration: the node's tag picks the type (Q-9)."""
    match node.tag:
        case "!TcpPort":
            if isinstance(node, MappingNode):
                m = MapReader(ctx, untag(node), key)
                var = TcpPortVar(m.get("activation", p_activation, Activation.NONE))
                m.finish()
                return var
            _no_payload(ctx, node, key)
            return TcpPortVar()
        case "!Choice":
            choices = p_list(p_str)(ctx, untag(node), key)
            if not choices:
                raise ctx.fail(key, node, "needs at least one choice")
            return ChoiceVar(choices)
        case "!Name":
            _no_payload(ctx, node, key)
            return NameVar()
        case "!DottedName":
            _no_payload(ctx, node, key)
            return DottedNameVar()
        case _:
            raise ctx.fail(key, node, "must be one of the tags " + ", ".join(VARIABLE_TAGS))
