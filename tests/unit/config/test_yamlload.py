"""The parsing layer (1.0): bounded reads, tags, aliases, merges, bad bytes."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from protocol.config import ConfigError, load_container, load_master, parse_container
from protocol.config.yamlload import LithosLoader, Tagged, compose_text

BOMB = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_huge_file_fails_fast_with_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "master.yaml"
    with open(big, "wb") as f:
        f.truncate(100 * 1024 * 1024)     # sparse 100 MB
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_master(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 8 * 1024 * 1024
    assert str(big) in str(err.value) and "larger than" in str(err.value)


def test_billion_laughs_is_refused() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        parse_container(BOMB, "bomb.yaml")
    assert time.monotonic() - started < 2
    assert "expands to more than" in str(err.value)
    assert err.value.problems[0].file == "bomb.yaml"


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_container(b"a: &a [*a]\n", "r.yaml")


def test_alias_chain_depth_is_refused() -> None:
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    with pytest.raises(ConfigError, match="nested more than"):
        parse_container("\n".join(lines).encode(), "deep.yaml")


def test_deep_nesting_is_an_error_not_a_traceback() -> None:
    with pytest.raises(ConfigError):
        parse_container(b"[" * 5000 + b"]" * 5000, "deep.yaml")


def test_python_object_tag_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_container(b"executable: !!python/object/apply:os.system [ls]\n", "c.yaml")
    assert "!!python/object/apply:os.system" in str(err.value)


@pytest.mark.parametrize("tag", ["!*Include", "!*IncludeSeq", "!*IncludeMap"])
def test_includes_are_not_supported(tag: str) -> None:
    """Q-10."""
    with pytest.raises(ConfigError, match="Includes are not supported"):
        parse_container(f"executable: /x\nvolumes: {tag} other.yaml\n".encode(), "c.yaml")


def test_unknown_tag_named_with_every_occurrence() -> None:
    with pytest.raises(ConfigError) as err:
        parse_container(b"executable: !Foo x\narguments: [!Bar y]\n", "c.yaml")
    text = str(err.value)
    assert "!Foo" in text and "!Bar" in text and "c.yaml" in text


def test_non_utf8_bytes() -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        parse_container(b"executable: /bin/\xff\xfe\n", "c.yaml")


def test_bad_yaml_names_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_container(b"executable: /x\n  bad: [\n", "c.yaml")
    assert err.value.problems[0].line >= 2


def test_multiple_documents_refused() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_container(b"executable: /x\n---\nexecutable: /y\n", "c.yaml")


def test_merge_keys_and_underscore_anchors() -> None:
    """Q-3, Q-10: `_`-keys hold anchors; `<<` merges; explicit keys win."""
    c = parse_container(b"""\
_base: &base {executable: /bin/a, arguments: [x], kill-timeout: 7}
<<: *base
arguments: [y]
""", "c.yaml")
    assert (c.executable, c.arguments, c.kill_timeout) == ("/bin/a", ("y",), 7)


def test_merge_list_and_unpack() -> None:
    c = parse_container(b"""\
_a: &a {FOO: "1"}
_b: &b {BAR: "2", FOO: "3"}
executable: /x
environ: {<<: [*a, *b]}
arguments: !*Unpack [[a, b], [c]]
""", "c.yaml")
    assert dict(c.environ) == {"FOO": "1", "BAR": "2"}
    assert c.arguments == ("a", "b", "c")


def test_fifo_is_not_read(tmp_path: Path) -> None:
    import os
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_container(fifo)


def test_loader_is_a_safeloader_with_lithos_tags() -> None:
    assert issubclass(LithosLoader, yaml.SafeLoader)
    value = yaml.load("a: !Tmpfs {size: 1}\n", Loader=LithosLoader)  # noqa: S506
    assert isinstance(value["a"], Tagged) and value["a"].tag == "!Tmpfs"
    with pytest.raises(yaml.YAMLError):
        yaml.load("a: !!python/object:os.system x\n", Loader=LithosLoader)  # noqa: S506


def test_empty_document_is_none() -> None:
    assert compose_text(b"", "x") is None
    assert compose_text(b"# only a comment\n", "x") is None
