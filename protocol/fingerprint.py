"""The fingerprint of one instance: what, when it changes, restarts that instance.

Both the supervisor (to decide) and the broker (to check the supervisor read the
same configs) compute it. It covers the process entry as the original compares it
(P-2: image, config, variables, extra-secrets-namespaces, the instance's
ip-address, kind) and, beyond the original (T-30a), the bytes of the container
config: editing a container config in place restarts its instances, which is what
an operator who edited it expects. Pure.
"""

from __future__ import annotations

from protocol.config import ProcessConfig, instance_fingerprint
from protocol.digest import sha256


def fingerprint(process: ProcessConfig, index: int, container_bytes: bytes) -> str:
    """`v1:` + 32 hex chars; printable, no spaces (the wire's fingerprint rule)."""
    h = sha256()
    h.update(instance_fingerprint(process, index).encode())
    h.update(b"\0")
    h.update(container_bytes)
    return "v1:" + h.hexdigest()[:32]
