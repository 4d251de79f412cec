"""The unprivileged supervisor and the CLI tools that talk to it (docs/supervisor.md).

Importing the package defers `inspect`, `traceback` and `selectors`, and keeps
PyYAML's libyaml binding out (protocol/lazy.py): the supervisor lives as long as the
host, and dataclasses, logging and yaml would otherwise keep them (with ast, dis,
linecache, tokenize, textwrap) in its memory.
"""

from protocol import lazy

lazy.for_daemons()
