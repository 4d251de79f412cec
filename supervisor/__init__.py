"""The unprivileged supervisor and the CLI tools that talk to it (docs/supervisor.md).

Importing the package defers `inspect`, `traceback` and `selectors` (protocol/lazy.py): the
supervisor lives as long as the host, and dataclasses and logging would otherwise
keep them (with ast, dis, linecache, tokenize, textwrap) in its memory.
"""

from protocol import lazy

lazy.defer("inspect")
lazy.defer("traceback")
lazy.defer("selectors")
