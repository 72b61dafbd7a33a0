"""The SDK's values: frozen dataclasses, no protobuf in sight.

JSON is first-class: `Value.from_json(obj)` / `value.json()`, and every write
that takes a value also takes `json=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

import orjson

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


class _Unset:
    """Marks an omitted `json=` argument (None is the JSON value null)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class Value:
    data: bytes = b""
    content_type: str = ""  # empty: application/octet-stream

    @classmethod
    def from_json(cls, obj: Any) -> Value:
        return cls(orjson.dumps(obj), JSON_CONTENT_TYPE)

    @classmethod
    def from_text(cls, text: str) -> Value:
        return cls(text.encode(), TEXT_CONTENT_TYPE)

    def json(self) -> Any:
        """The data decoded as JSON; ValueError when it is not JSON."""
        return orjson.loads(self.data)

    def text(self) -> str:
        return self.data.decode()


def make_value(
    value: bytes | str | Value | None, json: Any = UNSET, content_type: str | None = None
) -> Value:
    """What `put(key, value)`, `put(key, json=obj)` and friends store."""
    if json is not UNSET:
        if value is not None:
            raise TypeError("pass either a value or json=, not both")
        return Value.from_json(json)
    if isinstance(value, Value):
        return value
    if isinstance(value, str):
        return Value(value.encode(), TEXT_CONTENT_TYPE if content_type is None else content_type)
    return Value(value or b"", content_type or "")


@dataclass(frozen=True, slots=True)
class Fence:
    """A fencing token from a lock or an election term, carried by a write."""

    kind: Literal["lock", "election"]
    name: str
    token: int

    @classmethod
    def lock(cls, name: str, token: int) -> Fence:
        return cls("lock", name, token)

    @classmethod
    def election(cls, role: str, token: int) -> Fence:
        return cls("election", role, token)


class SupportsFence(Protocol):
    """Anything a write can be fenced with: a held `Lock` or `Leadership`."""

    @property
    def fence(self) -> Fence: ...


@dataclass(frozen=True, slots=True)
class Provenance:
    agent_id: str = ""
    session_id: str = ""
    request_id: str = ""
    fence: Fence | None = None
    time_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: Value
    version: int
    create_revision: int
    mod_revision: int
    expires_unix_ms: int = 0
    session_id: str = ""
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def data(self) -> bytes:
        return self.value.data

    @property
    def content_type(self) -> str:
        return self.value.content_type

    def json(self) -> Any:
        return self.value.json()

    def text(self) -> str:
        return self.value.text()


class ChangeType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Change:
    type: ChangeType
    entry: Entry  # PUT: the new entry. DELETE: the key's last metadata, no value.
    previous: Entry | None = None  # only when asked for with with_previous

    @property
    def key(self) -> str:
        return self.entry.key


class CoordinationKind(StrEnum):
    AGENT_JOINED = "agent_joined"
    AGENT_LEFT = "agent_left"  # the session was closed
    AGENT_EXPIRED = "agent_expired"  # the session's TTL ran out
    LOCK_ACQUIRED = "lock_acquired"
    LOCK_RELEASED = "lock_released"
    LOCK_EXPIRED = "lock_expired"  # its session ended while holding it
    LEADER_ELECTED = "leader_elected"
    LEADER_RESIGNED = "leader_resigned"
    LEADER_LOST = "leader_lost"  # its session ended while leading
    UNKNOWN = "unknown"  # a kind this version of the SDK does not know


@dataclass(frozen=True, slots=True)
class CoordinationEvent:
    """Who joined or left, or who took or gave up a lock or a role."""

    kind: CoordinationKind
    agent_id: str
    session_id: str
    name: str = ""  # the lock name or election role
    token: int = 0  # the fencing token of the lock or term
    value: bytes = b""  # the leader's value, for LEADER_ELECTED


@dataclass(frozen=True, slots=True)
class Event:
    """Everything one revision changed.

    A coordination event has `coordination` set; when an agent leaves, the
    same revision also deletes its session-bound entries (`changes`).
    """

    revision: int
    time_unix_ms: int
    provenance: Provenance
    changes: tuple[Change, ...]
    coordination: CoordinationEvent | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    tenant: str
    metadata: Mapping[str, str]
    create_time_unix_ms: int
    update_time_unix_ms: int
    idle_ttl_ms: int
    revision: int


# --- coordination ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A live session: one agent present in a conversation."""

    conversation_id: str
    session_id: str
    agent_id: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class LockHolder:
    conversation_id: str
    name: str
    session_id: str
    agent_id: str
    token: int


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads a role, in which term (`token`), with the value it proclaimed."""

    conversation_id: str
    role: str
    session_id: str
    agent_id: str
    token: int
    value: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.value)

    def text(self) -> str:
        return self.value.decode()


# --- results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """A role granted on a conversation: `subject` is an agent id or "*" (everyone in
    the tenant); `role` is "reader", "writer" or "admin"."""

    subject: str
    role: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    revision: int
    key: str
    version: int
    create_revision: int
    replayed: bool = False  # the stored result of an earlier attempt with this request id


@dataclass(frozen=True, slots=True)
class PatchResult:
    result: WriteResult
    value: Value  # the value after the patch

    def json(self) -> Any:
        return self.value.json()


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    results: tuple[WriteResult, ...]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class RangePage:
    entries: tuple[Entry, ...]
    revision: int
    next_page_token: str  # empty on the last page


@dataclass(frozen=True, slots=True)
class HistoryPage:
    events: tuple[Event, ...]
    next_revision: int  # 0 when there is no more
    compact_revision: int


@dataclass(frozen=True, slots=True)
class ConversationPage:
    conversations: tuple[Conversation, ...]
    next_page_token: str


# --- conditions and transactions ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expect:
    """What a write expects of its key: `Expect.absent()`, `Expect.version(3)`..."""

    kind: Literal["absent", "version", "mod_revision"]
    number: int = 0

    @classmethod
    def absent(cls) -> Expect:
        return cls("absent")

    @classmethod
    def version(cls, version: int) -> Expect:
        return cls("version", version)

    @classmethod
    def mod_revision(cls, revision: int) -> Expect:
        return cls("mod_revision", revision)


Operator = Literal["==", "!=", ">", "<"]
Target = Literal["version", "create_revision", "mod_revision", "value"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, e.g. `Compare.version("tasks/1", "==", 3)`.

    Version and revisions of an absent key are 0; a value never matches an
    absent key.
    """

    key: str
    target: Target
    op: Operator
    operand: int | bytes

    @classmethod
    def version(cls, key: str, op: Operator, version: int) -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def create_revision(cls, key: str, op: Operator, revision: int) -> Compare:
        return cls(key, "create_revision", op, revision)

    @classmethod
    def mod_revision(cls, key: str, op: Operator, revision: int) -> Compare:
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def value(cls, key: str, op: Operator, value: bytes | str) -> Compare:
        return cls(key, "value", op, value.encode() if isinstance(value, str) else value)

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls.version(key, "==", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls.version(key, ">", 0)


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One write of a transaction branch: `TxnOp.put(...)` or `TxnOp.delete(key)`."""

    kind: Literal["put", "delete"]
    key: str
    value: Value | None = None
    ttl_ms: int = 0

    @classmethod
    def put(
        cls,
        key: str,
        value: bytes | str | Value | None = None,
        *,
        json: Any = UNSET,
        ttl_ms: int = 0,
    ) -> TxnOp:
        return cls("put", key, make_value(value, json), ttl_ms)

    @classmethod
    def delete(cls, key: str) -> TxnOp:
        return cls("delete", key)
