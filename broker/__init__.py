"""lithos_tree's root broker (docs/architecture.md).

Importing the package defers `inspect` (protocol/lazy.py): the broker lives as long
as the host, and dataclasses would otherwise keep it, and `ast`, in its memory.
"""

from protocol import lazy

lazy.defer("inspect")
