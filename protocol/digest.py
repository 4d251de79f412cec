"""sha256 and blake2b without OpenSSL: the hashes lithos's daemons compute.

`import hashlib` loads OpenSSL's libcrypto at once (about 3.8 MB mapped, 0.65 MB of
it private, per process), while the broker and the supervisor only ever hash a few
short texts (fingerprints, veth names, a secret's short hash). CPython's own
implementations give the same digests; hashlib is the fallback where they are
missing. Pure; imports nothing of ours.
"""

from __future__ import annotations

TYPE_CHECKING = False

__all__ = ["blake2b", "sha256"]

if TYPE_CHECKING:  # the same types; CPython's modules have no stubs
    from hashlib import blake2b, sha256
else:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:  # other versions and interpreters
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    try:
        from _blake2 import blake2b
    except ImportError:
        from hashlib import blake2b
