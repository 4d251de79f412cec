"""lithos_tree's root broker (docs/architecture.md).

Importing the package defers `inspect`, `traceback` and `selectors` (protocol/lazy.py): the
broker lives as long as the host, and dataclasses and logging would otherwise keep
them (with ast, dis, linecache, tokenize, textwrap) in its memory.
"""

from protocol import lazy

lazy.defer("inspect")
lazy.defer("traceback")
lazy.defer("selectors")
