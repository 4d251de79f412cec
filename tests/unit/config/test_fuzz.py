"""Property: whatever bytes or YAML a loader gets, only ConfigError may escape."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.config import (
    ConfigError,
    check_container,
    instantiate,
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


SANDBOX = parse_sandbox(b"allow-users: [1-1000]\nallow-groups: [0-1000]\n"
                        b"allow-tcp-ports: [1-9000]\ndefault-user: 5\n", "/s.yaml", "s")
VAR_TAGS = ["!TcpPort", "!TcpPort {activation: systemd}", "!Name", "!DottedName",
            "!Choice [x, '1']"]
subst_text = st.text(alphabet="@{}: ab12lithos:pidnameLISTEN_FDS", max_size=15)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(VAR_TAGS)),
                max_size=3),
       st.lists(subst_text, max_size=3), st.dictionaries(subst_text, subst_text, max_size=3),
       st.dictionaries(subst_text, st.integers(0, 6), max_size=3),
       st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), subst_text, max_size=4))
def test_instantiate_only_config_error(vars: list[tuple[str, str]], args: list[str],
                                       env: dict[str, str], ports: dict[str, int],
                                       values: dict[str, str]) -> None:
    doc = "executable: /x\n"
    if vars:
        doc += "variables:\n" + "".join(f"  {k}: {t}\n" for k, t in vars)
    doc += (f"arguments: {json.dumps(args)}\nenviron: {json.dumps(env)}\n"
            f"tcp-ports: {json.dumps({k: {'fd': v} for k, v in ports.items()})}\n")
    try:
        container = parse_container(doc.encode(), "/c.yaml")
    except ConfigError:
        return
    process = parse_processes(f"w: {{image: i, config: /c, variables: {json.dumps(values)}}}\n"
                              .encode(), "/p.yaml")["w"]
    check_container(container)
    try:
        result = instantiate(container, process, SANDBOX, "s/w.0", 0)
    except ConfigError as e:
        assert e.problems
    else:
        assert all(0 <= port <= 65535 for port in result.tcp_ports)
        assert len({cfg.fd for cfg in result.tcp_ports.values()}) == len(result.tcp_ports)
