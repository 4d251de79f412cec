"""The unprivileged supervisor and the CLI tools that talk to it (docs/supervisor.md).

Importing the package defers `inspect` (protocol/lazy.py): the supervisor lives as
long as the host, and dataclasses would otherwise keep it, and `ast`, in its memory.
"""

from protocol import lazy

lazy.defer("inspect")
