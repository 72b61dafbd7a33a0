"""The blackboard's data model: frozen values, no I/O.

A conversation's state is a map of keys to entries plus a contiguous log of
events; every committed write is one event and advances the revision by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ConversationRef:
    tenant: str
    id: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.id}"


@dataclass(frozen=True, slots=True)
class Conversation:
    ref: ConversationRef
    metadata: dict[str, str]
    create_time_ms: int
    update_time_ms: int
    idle_ttl_ms: int
    revision: int
    compact_revision: int


class FenceKind(StrEnum):
    LOCK = "lock"
    ELECTION = "election"


@dataclass(frozen=True, slots=True)
class Fence:
    kind: FenceKind
    name: str
    token: int

    @property
    def mark(self) -> str:
        """The name under which the store keeps the newest token of this fence."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Provenance:
    agent_id: str = ""
    session_id: str = ""
    request_id: str = ""
    fence: Fence | None = None
    time_ms: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    data: bytes
    content_type: str
    version: int
    create_revision: int
    mod_revision: int
    expires_ms: int = 0
    session_id: str = ""
    provenance: Provenance = field(default_factory=Provenance)


class ChangeType(IntEnum):
    PUT = 1
    DELETE = 2


@dataclass(frozen=True, slots=True)
class Change:
    type: ChangeType
    key: str
    entry: Entry | None  # the new entry; None for a delete
    previous: Entry | None  # the entry before the change; None for a create


class CoordinationKind(IntEnum):
    AGENT_JOINED = 1
    AGENT_LEFT = 2
    AGENT_EXPIRED = 3
    LOCK_ACQUIRED = 4
    LOCK_RELEASED = 5
    LOCK_EXPIRED = 6
    LEADER_ELECTED = 7
    LEADER_RESIGNED = 8
    LEADER_LOST = 9


@dataclass(frozen=True, slots=True)
class Coordination:
    """What a coordination event records: who joined or left, or who holds what."""

    kind: CoordinationKind
    agent_id: str
    session_id: str
    name: str = ""  # the lock name or election role
    token: int = 0
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    time_ms: int
    provenance: Provenance
    changes: tuple[Change, ...]
    coordination: Coordination | None = None


# --- writes -----------------------------------------------------------------


class Target(IntEnum):
    VERSION = 1
    CREATE_REVISION = 2
    MOD_REVISION = 3
    VALUE = 4


class Operator(IntEnum):
    EQUAL = 1
    NOT_EQUAL = 2
    GREATER = 3
    LESS = 4


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: Target
    operator: Operator
    number: int = 0
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    data: bytes
    content_type: str = ""
    ttl_ms: int = 0
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class AppendChild:
    """Adds `parent/<revision, 20 digits>`: unique and in commit order."""

    parent: str
    data: bytes
    content_type: str = ""
    ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class DeleteSessionEntries:
    """Deletes every entry bound to the session (when the session ends)."""

    session_id: str


Op = Put | Delete | AppendChild | DeleteSessionEntries


def child_key(parent: str, revision: int) -> str:
    return f"{parent}/{revision:020d}"


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One atomic write: if every compare holds apply `success`, else `failure`."""

    compares: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...] = ()
    request_id: str = ""
    fence: Fence | None = None
    agent_id: str = ""
    session_id: str = ""
    # Coordination commits: the event's payload, and fence marks to raise to at
    # least these tokens (a new holder's token; a released token + 1).
    coordination: Coordination | None = None
    marks: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class KeyState:
    """What a failed compare saw of its key (zeros for an absent key)."""

    key: str
    version: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class OpResult:
    key: str
    version: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    succeeded: bool  # every compare held
    revision: int  # the new revision, or the head when nothing changed
    results: tuple[OpResult, ...]
    compared: tuple[KeyState, ...] = ()  # filled when a compare failed
    replayed: bool = False


# --- reads ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Entries read at one revision, in key order."""

    entries: tuple[Entry, ...]
    revision: int
    compact_revision: int
    more: bool = False  # the page was full; more keys may follow
