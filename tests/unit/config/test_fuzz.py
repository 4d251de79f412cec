"""Property: whatever bytes or YAML a loader gets, only ConfigError may escape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.config import (
    ConfigError,
    parse_container,
    parse_master,
    parse_processes,
    parse_sandbox,
)

LOADERS: list[Callable[[bytes], Any]] = [
    lambda b: parse_master(b, "/m.yaml"),
    lambda b: parse_sandbox(b, "/s.yaml", "s"),
    lambda b: parse_processes(b, "/p.yaml"),
    lambda b: parse_container(b, "/c.yaml"),
]
KEYS = ["executable", "volumes", "variables", "tcp-ports", "environ", "arguments", "user-id",
        "kind", "allow-users", "bridged-network", "uid-map", "w", "image", "config", "<<",
        "instances", "size", "fd", "/tmp", "sandboxes-dir", "_x", "log-level"]
TAGS = ["", "!Tmpfs ", "!Readonly ", "!Persistent ", "!Statedir ", "!TcpPort ", "!Choice ",
        "!Name ", "!DottedName ", "!*Unpack ", "!Bad ", "!!str ", "!!int "]
scalars = st.one_of(st.sampled_from(["", "~", "null", "true", "yes", "0x1f", "1.5", "100m",
                                     "10Mi", "/abs", "../x", "@{x}", "1-10", "-1"]),
                    st.text(max_size=8), st.integers(-2**70, 2**70).map(str))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)),
                                            inner, max_size=4)),
    max_leaves=20)


def dump(value: object, tag: str) -> bytes:
    text = yaml.safe_dump(value, default_flow_style=True)
    return (tag + text).encode()


def only_config_error(data: bytes) -> None:
    for load in LOADERS:
        try:
            load(data)
        except ConfigError as e:
            assert e.problems and all(isinstance(p.file, str) for p in e.problems)
            str(e)


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from(TAGS), values),
                       max_size=6))
def test_generated_yaml(doc: dict[str, tuple[str, object]]) -> None:
    lines = []
    for key, (tag, value) in doc.items():
        lines.append(f"{key}: {tag}" + yaml.safe_dump(value, default_flow_style=True).strip()
                     .removesuffix("\n..."))
    only_config_error("\n".join(lines).encode())
    nested = "\n".join(f"{k}:\n  w: {t}" + yaml.safe_dump(v, default_flow_style=True).strip()
                       .removesuffix("\n...") for k, (t, v) in doc.items())
    only_config_error(nested.encode())


@SETTINGS
@given(st.binary(max_size=200))
def test_generated_bytes(data: bytes) -> None:
    only_config_error(data)


@SETTINGS
@given(st.text(alphabet="{}[]:,-&*!|>'\"#%@`\n ab<~?", max_size=60))
def test_generated_yaml_punctuation(text: str) -> None:
    only_config_error(text.encode())
