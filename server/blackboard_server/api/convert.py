"""Between protobuf messages and domain values. No logic beyond the mapping."""

from __future__ import annotations

from collections.abc import Iterable

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.domain.coordination import Holder, SessionInfo
from blackboard_server.domain.errors import InvalidArgument
from blackboard_server.domain.model import (
    AppendChild,
    ChangeType,
    CommitResult,
    Compare,
    Conversation,
    Coordination,
    Delete,
    Entry,
    Event,
    Fence,
    FenceKind,
    Operator,
    Provenance,
    Put,
    Target,
)
from blackboard_server.services.blackboard import NO_EXPECTATION, Expect, Written
from blackboard_server.services.subscription import (
    EventBatch,
    Progress,
    Reset,
    SnapshotChunk,
    StreamItem,
    Synced,
)

# --- requests ----------------------------------------------------------------


def fence(message: pb.Fence, present: bool) -> Fence | None:
    if not present:
        return None
    which = message.WhichOneof("name")
    if which is None:
        raise InvalidArgument("fence", "needs a lock or an election name")
    kind = FenceKind.LOCK if which == "lock" else FenceKind.ELECTION
    return Fence(kind, getattr(message, which), message.token)


def expect(message: pb.Expect, present: bool) -> Expect:
    which = message.WhichOneof("condition") if present else None
    if which is None:
        return NO_EXPECTATION
    if which == "absent":
        return Expect(absent=message.absent) if message.absent else NO_EXPECTATION
    if which == "version":
        return Expect(version=message.version)
    return Expect(mod_revision=message.mod_revision)


def put(request: pb.PutRequest) -> Put:
    return Put(
        request.key,
        request.value.data,
        request.value.content_type,
        request.ttl_ms,
        request.session_id,
    )


def append(request: pb.AppendRequest) -> AppendChild:
    return AppendChild(request.key, request.value.data, request.value.content_type, request.ttl_ms)


def compare(message: pb.Compare, index: int) -> Compare:
    field = f"compares[{index}]"
    try:
        target = Target(message.target)
        operator = Operator(message.operator)
    except ValueError:
        raise InvalidArgument(field, "needs a target and an operator") from None
    if target is Target.VALUE and message.WhichOneof("operand") == "number":
        raise InvalidArgument(f"{field}.value", "a VALUE compare takes bytes")
    return Compare(message.key, target, operator, message.number, message.value)


def txn_op(message: pb.TxnOp, field: str) -> Put | Delete:
    which = message.WhichOneof("op")
    if which == "put":
        p = message.put
        return Put(p.key, p.value.data, p.value.content_type, p.ttl_ms)
    if which == "delete":
        return Delete(message.delete.key)
    raise InvalidArgument(field, "needs a put or a delete")


def txn_ops(messages: Iterable[pb.TxnOp], branch: str) -> tuple[Put | Delete, ...]:
    return tuple(txn_op(m, f"{branch}[{i}]") for i, m in enumerate(messages))


# --- responses ---------------------------------------------------------------


def provenance(p: Provenance, out: pb.Provenance) -> None:
    out.agent_id = p.agent_id
    out.session_id = p.session_id
    out.request_id = p.request_id
    out.time_unix_ms = p.time_ms
    if p.fence is not None:
        if p.fence.kind is FenceKind.LOCK:
            out.fence.lock = p.fence.name
        else:
            out.fence.election = p.fence.name
        out.fence.token = p.fence.token


def entry(e: Entry, out: pb.Entry, *, with_value: bool = True) -> pb.Entry:
    out.key = e.key
    if with_value:
        out.value.data = e.data
        out.value.content_type = e.content_type
    out.version = e.version
    out.create_revision = e.create_revision
    out.mod_revision = e.mod_revision
    out.expires_unix_ms = e.expires_ms
    out.session_id = e.session_id
    provenance(e.provenance, out.provenance)
    return out


def event(ev: Event, *, with_previous: bool = False) -> pb.Event:
    out = pb.Event(revision=ev.revision, time_unix_ms=ev.time_ms)
    provenance(ev.provenance, out.provenance)
    for change in ev.changes:
        c = out.changes.add()
        if change.type is ChangeType.PUT and change.entry is not None:
            c.type = pb.Change.PUT
            entry(change.entry, c.entry)
        else:
            c.type = pb.Change.DELETE
            gone = change.previous
            c.entry.key = change.key
            c.entry.mod_revision = ev.revision
            if gone is not None:
                c.entry.version = gone.version
                c.entry.create_revision = gone.create_revision
        if with_previous and change.previous is not None:
            entry(change.previous, c.previous)
    if ev.coordination is not None:
        coordination(ev.coordination, out.coordination)
    return out


def coordination(record: Coordination, out: pb.CoordinationEvent) -> None:
    out.kind = pb.CoordinationEvent.Kind.ValueType(record.kind)
    out.agent_id = record.agent_id
    out.session_id = record.session_id
    out.name = record.name
    out.token = record.token
    out.value = record.value


def session(info: SessionInfo) -> pb.Session:
    return pb.Session(
        conversation_id=info.ref.id,
        session_id=info.session_id,
        agent_id=info.agent_id,
        ttl_ms=info.ttl_ms,
    )


def holder(h: Holder) -> pb.Holder:
    return pb.Holder(
        conversation_id=h.ref.id,
        name=h.name,
        session_id=h.session_id,
        agent_id=h.agent_id,
        token=h.token,
        value=h.value,
    )


def encode_event(ev: Event) -> bytes:
    """The wire form of an event as subscribers receive it whole."""
    return event(ev).SerializeToString()


def conversation(c: Conversation) -> pb.Conversation:
    return pb.Conversation(
        id=c.ref.id,
        tenant=c.ref.tenant,
        metadata=c.metadata,
        create_time_unix_ms=c.create_time_ms,
        update_time_unix_ms=c.update_time_ms,
        idle_ttl_ms=c.idle_ttl_ms,
        revision=c.revision,
    )


def write_result(w: Written) -> pb.WriteResult:
    r = w.result
    return pb.WriteResult(
        revision=w.revision,
        key=r.key,
        version=r.version,
        create_revision=r.create_revision,
        replayed=w.replayed,
    )


def txn_result(result: CommitResult) -> pb.TxnResponse:
    return pb.TxnResponse(
        succeeded=result.succeeded,
        revision=result.revision,
        replayed=result.replayed,
        results=[
            pb.WriteResult(
                revision=result.revision,
                key=r.key,
                version=r.version,
                create_revision=r.create_revision,
                replayed=result.replayed,
            )
            for r in result.results
        ],
    )


# --- the change stream -------------------------------------------------------


def stream_item(item: StreamItem, *, with_previous: bool) -> bytes:
    """A SubscribeResponse, serialized. Whole events reuse their cached encoding."""
    if isinstance(item, EventBatch):
        if item.message is not None:
            return item.message
        return batch_message(
            wire if wire is not None else event(ev, with_previous=with_previous).SerializeToString()
            for ev, wire in zip(item.events, item.wire, strict=True)
        )
    message = pb.SubscribeResponse()
    if isinstance(item, SnapshotChunk):
        message.snapshot.revision = item.revision
        for e in item.entries:
            entry(e, message.snapshot.entries.add())
    elif isinstance(item, Synced):
        message.synced.revision = item.revision
    elif isinstance(item, Progress):
        message.progress.revision = item.revision
    elif isinstance(item, Reset):
        message.reset.requested_revision = item.requested_revision
        message.reset.compact_revision = item.compact_revision
    return message.SerializeToString()


def batch_message(events: Iterable[bytes | None]) -> bytes:
    """A SubscribeResponse carrying an EventBatch of already encoded events."""
    return _field(3, b"".join(_field(1, raw) for raw in events if raw is not None))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag, length, bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
