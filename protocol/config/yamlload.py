"""Reading one config file into a checked YAML node graph.

Owns: the bounded read (MAX_FILE_BYTES, never more than limit+1 bytes read),
strict UTF-8 decoding, composing with `LithosLoader` (a yaml.SafeLoader
subclass), and the graph check that runs before any value is looked at:
every tag must be known, aliases may not form cycles, and the tree that
alias expansion would produce is bounded in size and depth (billion laughs).
Rules: only SafeLoader machinery; every failure is a ConfigError naming the
file, never a traceback. Values are interpreted elsewhere (reader.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError, Problem

__all__ = [
    "LITHOS_TAGS", "MAX_EXPANDED_NODES", "MAX_FILE_BYTES", "LithosLoader",
    "Tagged", "compose_text", "read_bounded", "load_document",
]

MAX_FILE_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 64

LITHOS_TAGS = frozenset({
    "!Readonly", "!Persistent", "!Statedir", "!Tmpfs",
    "!TcpPort", "!Choice", "!Name", "!DottedName", "!*Unpack",
})
INCLUDE_TAGS = frozenset({"!*Include", "!*IncludeSeq", "!*IncludeMap"})
STD_PREFIX = "tag:yaml.org,2002:"
STD_TAGS = frozenset(STD_PREFIX + t for t in (
    "str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp",
))


class Tagged:
    """What `yaml.load(text, LithosLoader)` yields for a Lithos tag (debugging aid)."""

    __slots__ = ("tag", "value")

    def __init__(self, tag: str, value: object) -> None:
        self.tag = tag
        self.value = value

    def __repr__(self) -> str:
        return f"Tagged({self.tag!r}, {self.value!r})"


class LithosLoader(yaml.SafeLoader):
    """SafeLoader that knows the Lithos tags; any other non-standard tag is an error."""


def _construct_tagged(loader: yaml.SafeLoader, node: Node) -> Tagged:
    value: object
    if isinstance(node, ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return Tagged(node.tag, value)


for _tag in LITHOS_TAGS:
    LithosLoader.add_constructor(_tag, _construct_tagged)


def _mark_line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _mark_column(node: Node) -> int:
    return int(node.start_mark.column) + 1


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read a regular file, refusing (without reading it all) one over `limit` bytes.

    Raises:
        ConfigError: unreadable, not a regular file, or too large.
    """
    file = str(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us; we refuse it below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ConfigError([Problem(file, "", "", f"cannot be read: {_oserr(e)}")]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([Problem(file, "", "", "is not a regular file")])
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise ConfigError([Problem(file, "", "", f"cannot be read: {_oserr(e)}")]) from None
    finally:
        os.close(fd)
    if got > limit:
        raise ConfigError([Problem(file, "", "", f"is larger than {limit} bytes "
                                   "(a config file this big is surely a mistake)")])
    return b"".join(chunks)


def _oserr(e: OSError) -> str:
    import errno
    name = errno.errorcode.get(e.errno or 0, "error")
    return f"{name} ({e.strerror})"


def compose_text(data: bytes, file: str) -> Node | None:
    """Decode and compose one YAML document, then check its graph. None if empty.

    Raises:
        ConfigError: bad UTF-8, bad YAML, unknown tags, alias bombs, too deep.
    """
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(file, "", "", f"is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(
            file, "", "", f"is not valid UTF-8 (bad byte at offset {e.start})")]) from None
    loader: LithosLoader | None = None
    try:
        loader = LithosLoader(text)     # the Reader rejects unprintable characters here
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line, column = (int(mark.line) + 1, int(mark.column) + 1) if mark else (0, 0)
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError([Problem(file, "", "", f"is not valid YAML: {what}", line,
                                   column)]) from None
    except yaml.YAMLError as e:
        raise ConfigError([Problem(file, "", "", f"is not valid YAML: {e}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "", "", "is nested too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is not None:
        check_graph(node, file)
    return node


def load_document(path: Path) -> Node | None:
    """Read and compose a config file (see compose_text)."""
    return compose_text(read_bounded(path), str(path))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _tag_problem(node: Node, file: str) -> Problem | None:
    tag = node.tag
    if tag in STD_TAGS or tag in LITHOS_TAGS:
        return None
    shown = "!!" + tag[len(STD_PREFIX):] if tag.startswith(STD_PREFIX) else tag
    if tag in INCLUDE_TAGS:
        return Problem(file, "", shown, "Includes are not supported", _mark_line(node),
                       _mark_column(node))
    return Problem(file, "", shown, "is not a known tag (known: "
                   + ", ".join(sorted(LITHOS_TAGS - {"!*Unpack"})) + ")", _mark_line(node),
                   _mark_column(node))


def check_graph(root: Node, file: str) -> None:
    """Check tags, alias cycles and the expanded size and depth, without expanding.

    Iterative post-order walk with memoized sizes: linear in the composed graph
    however large the expansion would be.

    Raises:
        ConfigError: every unknown tag, or the first cycle/size/depth problem.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    tag_problems: list[Problem] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            on_path.discard(key)
            if size[key] > MAX_EXPANDED_NODES:
                raise ConfigError([Problem(
                    file, "", "", f"expands to more than {MAX_EXPANDED_NODES} values "
                    "(aliases repeated too many times?)", _mark_line(node))])
            if depth[key] > MAX_DEPTH:
                raise ConfigError([Problem(
                    file, "", "", f"is nested more than {MAX_DEPTH} levels deep",
                    _mark_line(node))])
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError([Problem(file, "", "", "contains an alias that refers to "
                                       "itself (recursive structure)", _mark_line(node))])
        problem = _tag_problem(node, file)
        if problem is not None:
            tag_problems.append(problem)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)
    if tag_problems:
        raise ConfigError(sorted(tag_problems, key=lambda p: p.line))
