"""The layouts shared by the Redis store and its Lua scripts: keys and msgpack.

All keys of a conversation share the hash tag `{tenant/id}`:

    <prefix>:{tenant/id}:m   hash   rev, compact, ctime, utime, idle, metadata
    <prefix>:{tenant/id}:d   hash   key -> entry
    <prefix>:{tenant/id}:k   zset   every key at score 0, for ZRANGEBYLEX paging
    <prefix>:{tenant/id}:l   stream the change log, IDs <revision>-0
    <prefix>:{tenant/id}:i   hash   request id -> [fingerprint, result, expires_ms]
    <prefix>:{tenant/id}:j   zset   request id by expires_ms (cleaned a few per write)
    <prefix>:{tenant/id}:x   zset   key by the expires_ms of its TTL
    <prefix>:{tenant/id}:f   hash   fence mark -> the current holder's token
    <prefix>:{tenant/id}:b   zset   `session NUL key` for every entry bound to a session
    <prefix>:{tenant/id}:e   zset   session ids whose end was recorded, by when
    <prefix>:{tenant/id}:g   hash   subject -> granted role (1 reader, 2 writer, 3 admin)
    <prefix>:{tenant/id}:n   pub/sub channel: the encoded event, or empty
    <prefix>:{tenant/id}:c   string written by confirmed reads (redis_store.py), expires in 10 s
    <prefix>:{tenant/id}:u   hash   conversations, bytes: the usage the scripts keep on a
                                    Redis Cluster in place of the tenant's (below)
    <prefix>:usage:{tenant}          hash  the tenant's conversations and bytes (one Redis)
    <prefix>:conversations:<tenant>  zset  conversation ids of a tenant
    <prefix>:ttl                     zset  `tenant/id` by its earliest entry expiry

Conversation ids never contain `/`, `{` or `}` (domain/limits.py), so the
tag is unambiguous and `tenant/id` splits at its last `/`.

The log is a stream rather than a sorted set: XADD refuses an ID that does not
grow, so a revision can never be logged twice or out of order, XRANGE reads a
revision range directly, and XTRIM MINID trims to the retention.

Lua's cmsgpack knows no bin type and returns every string as bytes, so
batches are packed with the old raw string type and everything is unpacked
with raw=True: values are arbitrary bytes, text fields are UTF-8.
Absent values are `false` (a nil would turn a Lua array into a map).

    batch      [compares, success, failure, request_id, fence | false, agent_id, session_id,
                coordination | false, [[mark, token], ...]]
    compare    [key, target, operator, number, value]
    op         [kind (1 put, 2 delete, 3 append, 4 delete session entries),
                key | parent | session id, data, content_type, ttl_ms, session_id]
    coordination [kind, agent_id, session_id, name, token, value]
    fence      [kind, name, token]
    provenance [agent_id, session_id, request_id, fence | false, time_ms]
    entry      [key, data, content_type, version, create_revision, mod_revision,
                expires_ms, session_id, provenance]
    change     [type, key, entry | false, previous entry | false]
    event      [revision, time_ms, provenance, [change, ...], coordination | false]
    result     [succeeded, revision, [[key, version, create_revision], ...],
                [[key, version, mod_revision], ...]]

Lua numbers are doubles: integers above 2**53 (no revision, time or etcd
token comes near) would lose precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from blackboard_server.domain.model import (
    AppendChild,
    Change,
    ChangeType,
    CommitResult,
    Conversation,
    ConversationRef,
    Coordination,
    CoordinationKind,
    Delete,
    Entry,
    Event,
    Fence,
    FenceKind,
    KeyState,
    Op,
    OpResult,
    Provenance,
    Put,
    WriteBatch,
)

log = structlog.get_logger("blackboard.redis")

_PUT, _DELETE, _APPEND, _END_SESSION = 1, 2, 3, 4
META_FIELDS = ("rev", "compact", "ctime", "utime", "idle", "metadata")


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys and the channel of one conversation."""

    tag: str
    meta: str
    channel: bytes
    all: tuple[str, ...]  # the commit and conversation scripts' keys
    usage: str  # the tenant's conversations and bytes (domain/quota.py)
    own_usage: str  # the conversation's own, in its slot: used in place of usage on a cluster
    confirm: str  # written by confirmed reads (redis_store.py)

    @classmethod
    def of(cls, prefix: str, ref: ConversationRef) -> Keys:
        tag = f"{ref.tenant}/{ref.id}"
        base = f"{prefix}:{{{tag}}}"
        suffixes = ("m", "d", "k", "l", "i", "j", "x", "f", "b", "e", "g")
        every = tuple(f"{base}:{s}" for s in suffixes)
        usage = usage_key(prefix, ref.tenant)
        return cls(tag, f"{base}:m", f"{base}:n".encode(), every, usage, f"{base}:u", f"{base}:c")

    @staticmethod
    def ref_of(tag: bytes | str) -> ConversationRef:
        tenant, _, conversation_id = as_bytes(tag).decode().rpartition("/")
        return ConversationRef(tenant, conversation_id)

    def named(self, *suffixes: str) -> list[str]:
        return [self.meta[:-1] + s for s in suffixes]


def usage_key(prefix: str, tenant: str) -> str:
    return f"{prefix}:usage:{{{tenant}}}"


def pack_batch(batch: WriteBatch) -> bytes:
    fence: Any = False
    if batch.fence is not None:
        fence = [str(batch.fence.kind), batch.fence.name, batch.fence.token]
    record: Any = False
    if (c := batch.coordination) is not None:
        record = [int(c.kind), c.agent_id, c.session_id, c.name, c.token, c.value]
    return _pack(
        [
            [[c.key, int(c.target), int(c.operator), c.number, c.value] for c in batch.compares],
            [_op(op) for op in batch.success],
            [_op(op) for op in batch.failure],
            batch.request_id,
            fence,
            batch.agent_id,
            batch.session_id,
            record,
            [[mark, token] for mark, token in batch.marks],
        ]
    )


def _op(op: Op) -> list[Any]:
    if isinstance(op, Put):
        return [_PUT, op.key, op.data, op.content_type, op.ttl_ms, op.session_id]
    if isinstance(op, AppendChild):
        return [_APPEND, op.parent, op.data, op.content_type, op.ttl_ms, ""]
    if isinstance(op, Delete):
        return [_DELETE, op.key, b"", "", 0, ""]
    return [_END_SESSION, op.session_id, b"", "", 0, ""]


def pack_metadata(metadata: dict[str, str]) -> bytes:
    return _pack(metadata)


def unpack_metadata(raw: bytes) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in _unpack(raw).items()}


def unpack_entry(raw: bytes) -> Entry:
    return _entry(_unpack(raw))


def unpack_event(raw: bytes) -> Event:
    revision, time_ms, provenance, changes, record = _unpack(raw)
    return Event(
        revision,
        time_ms,
        _provenance(provenance),
        tuple(
            Change(
                ChangeType(kind),
                key.decode(),
                _entry(entry) if entry is not False else None,
                _entry(previous) if previous is not False else None,
            )
            for kind, key, entry, previous in changes
        ),
        None if record is False else _coordination(record),
    )


def _coordination(fields: list[Any]) -> Coordination:
    kind, agent_id, session_id, name, token, value = fields
    return Coordination(
        CoordinationKind(kind),
        agent_id.decode(),
        session_id.decode(),
        name.decode(),
        token,
        value,
    )


def unpack_result(raw: bytes, *, replayed: bool) -> CommitResult:
    succeeded, revision, results, compared = _unpack(raw)
    return CommitResult(
        bool(succeeded),
        revision,
        tuple(OpResult(k.decode(), version, create) for k, version, create in results),
        tuple(KeyState(k.decode(), version, mod) for k, version, mod in compared),
        replayed,
    )


def conversation(ref: ConversationRef, fields: Sequence[bytes | str | None]) -> Conversation | None:
    """The conversation of a meta hash read with META_FIELDS; None if it is gone."""
    revision, compact, created, updated, idle, metadata = fields
    if revision is None or compact is None or metadata is None:
        return None
    return Conversation(
        ref,
        unpack_metadata(as_bytes(metadata)),
        int(created or 0),
        int(updated or 0),
        int(idle or 0),
        int(revision),
        int(compact),
    )


def event_or_none(payload: bytes) -> Event | None:
    """The event a notification carries; None for a bare wake-up."""
    if not payload:
        return None
    try:
        return unpack_event(payload)
    except (ValueError, TypeError):
        log.warning("undecodable notification payload; listeners will read the log")
        return None


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _entry(fields: list[Any]) -> Entry:
    key, data, content_type, version, create, mod, expires, session, provenance = fields
    return Entry(
        key=key.decode(),
        data=data,
        content_type=content_type.decode(),
        version=version,
        create_revision=create,
        mod_revision=mod,
        expires_ms=expires,
        session_id=session.decode(),
        provenance=_provenance(provenance),
    )


def _provenance(fields: list[Any]) -> Provenance:
    agent_id, session_id, request_id, fence, time_ms = fields
    return Provenance(
        agent_id=agent_id.decode(),
        session_id=session_id.decode(),
        request_id=request_id.decode(),
        fence=None
        if fence is False
        else Fence(FenceKind(fence[0].decode()), fence[1].decode(), fence[2]),
        time_ms=time_ms,
    )


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=False)
    return packed


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=True, strict_map_key=False)


__all__ = [
    "META_FIELDS",
    "Keys",
    "as_bytes",
    "conversation",
    "event_or_none",
    "pack_batch",
    "pack_metadata",
    "unpack_entry",
    "unpack_event",
    "unpack_metadata",
    "unpack_result",
]
