"""A connection to the broker: the supervisor's socketpair or a control client.

Owns the per-connection record the dispatcher checks (broker/server.py): the
peer's role (fixed by how it connected), its uid (SO_PEERCRED, or the
supervisor's account) and its phase. Rules: only the request handlers move a
peer's phase, and only forward (NEW -> HELLO -> SNAPSHOT -> READY). Imports
protocol only.
"""

from __future__ import annotations

import enum

from protocol.channel import Channel
from protocol.records import Role
from protocol.structs import dataclass


class Phase(enum.Enum):
    NEW = "new"  # connected, no Hello yet
    HELLO = "hello"  # Hello accepted
    SNAPSHOT = "snapshot"  # supervisor has its snapshot, reconciling
    READY = "ready"  # supervisor reconciled: exits go out as events


@dataclass(slots=True)
class Peer:
    """One connection: the supervisor's socketpair or a control client."""

    channel: Channel
    role: Role
    uid: int
    phase: Phase = Phase.NEW
    handed: int = 0  # pending exits given in its snapshot, dropped at its Ready
