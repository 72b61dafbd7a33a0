"""protobuf <-> SDK values. The only module besides the client that sees pb2."""

from __future__ import annotations

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client._model import (
    Change,
    ChangeType,
    Compare,
    Conversation,
    ConversationPage,
    CoordinationEvent,
    CoordinationKind,
    Entry,
    Event,
    Expect,
    Fence,
    Grant,
    HistoryPage,
    Leader,
    LockHolder,
    Provenance,
    RangePage,
    SessionInfo,
    SupportsFence,
    TxnOp,
    TxnResult,
    Value,
    WriteResult,
)

_OPERATORS = {
    "==": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    ">": pb.Compare.GREATER,
    "<": pb.Compare.LESS,
}
_TARGETS = {
    "version": pb.Compare.VERSION,
    "create_revision": pb.Compare.CREATE_REVISION,
    "mod_revision": pb.Compare.MOD_REVISION,
    "value": pb.Compare.VALUE,
}

# CoordinationKind values are the proto's names in lower case.
_KINDS = {
    number: CoordinationKind(name.lower())
    for name, number in pb.CoordinationEvent.Kind.items()
    if number != pb.CoordinationEvent.KIND_UNSPECIFIED
}


# --- from the wire -------------------------------------------------------------


def value(msg: pb.Value) -> Value:
    return Value(msg.data, msg.content_type)


def fence(msg: pb.Fence) -> Fence | None:
    which = msg.WhichOneof("name")
    if which == "lock":
        return Fence.lock(msg.lock, msg.token)
    if which == "election":
        return Fence.election(msg.election, msg.token)
    return None


def provenance(msg: pb.Provenance) -> Provenance:
    return Provenance(
        agent_id=msg.agent_id,
        session_id=msg.session_id,
        request_id=msg.request_id,
        fence=fence(msg.fence),
        time_unix_ms=msg.time_unix_ms,
    )


def entry(msg: pb.Entry) -> Entry:
    return Entry(
        key=msg.key,
        value=value(msg.value),
        version=msg.version,
        create_revision=msg.create_revision,
        mod_revision=msg.mod_revision,
        expires_unix_ms=msg.expires_unix_ms,
        session_id=msg.session_id,
        provenance=provenance(msg.provenance),
    )


def change(msg: pb.Change) -> Change:
    kind = ChangeType.DELETE if msg.type == pb.Change.DELETE else ChangeType.PUT
    previous = entry(msg.previous) if msg.HasField("previous") else None
    return Change(kind, entry(msg.entry), previous)


def coordination_event(msg: pb.CoordinationEvent) -> CoordinationEvent:
    return CoordinationEvent(
        kind=_KINDS.get(msg.kind, CoordinationKind.UNKNOWN),
        agent_id=msg.agent_id,
        session_id=msg.session_id,
        name=msg.name,
        token=msg.token,
        value=msg.value,
    )


def event(msg: pb.Event) -> Event:
    return Event(
        revision=msg.revision,
        time_unix_ms=msg.time_unix_ms,
        provenance=provenance(msg.provenance),
        changes=tuple(change(c) for c in msg.changes),
        coordination=coordination_event(msg.coordination) if msg.HasField("coordination") else None,
    )


def conversation(msg: pb.Conversation) -> Conversation:
    return Conversation(
        id=msg.id,
        tenant=msg.tenant,
        metadata=dict(msg.metadata),
        create_time_unix_ms=msg.create_time_unix_ms,
        update_time_unix_ms=msg.update_time_unix_ms,
        idle_ttl_ms=msg.idle_ttl_ms,
        revision=msg.revision,
    )


def write_result(msg: pb.WriteResult) -> WriteResult:
    return WriteResult(
        revision=msg.revision,
        key=msg.key,
        version=msg.version,
        create_revision=msg.create_revision,
        replayed=msg.replayed,
    )


def conversation_page(msg: pb.ListConversationsResponse) -> ConversationPage:
    return ConversationPage(tuple(conversation(c) for c in msg.conversations), msg.next_page_token)


def range_page(msg: pb.RangeResponse) -> RangePage:
    return RangePage(tuple(entry(e) for e in msg.entries), msg.revision, msg.next_page_token)


def history_page(msg: pb.HistoryResponse) -> HistoryPage:
    return HistoryPage(tuple(event(e) for e in msg.events), msg.next_revision, msg.compact_revision)


def txn_result(msg: pb.TxnResponse) -> TxnResult:
    return TxnResult(
        succeeded=msg.succeeded,
        revision=msg.revision,
        results=tuple(write_result(r) for r in msg.results),
        replayed=msg.replayed,
    )


def session_info(msg: pb.Session) -> SessionInfo:
    return SessionInfo(msg.conversation_id, msg.session_id, msg.agent_id, msg.ttl_ms)


def lock_holder(msg: pb.Holder) -> LockHolder:
    return LockHolder(msg.conversation_id, msg.name, msg.session_id, msg.agent_id, msg.token)


def leader(msg: pb.Holder) -> Leader:
    return Leader(msg.conversation_id, msg.name, msg.session_id, msg.agent_id, msg.token, msg.value)


def leader_update(msg: pb.LeaderUpdate) -> Leader | None:
    return leader(msg.leader) if msg.has_leader else None


# --- to the wire ----------------------------------------------------------------


_ROLES = {"reader": pb.ROLE_READER, "writer": pb.ROLE_WRITER, "admin": pb.ROLE_ADMIN}
_ROLE_NAMES = {number: name for name, number in _ROLES.items()}


def role_number(name: str) -> pb.Role.ValueType:
    try:
        return _ROLES[name]
    except KeyError:
        raise ValueError(f"role must be reader, writer or admin, not {name!r}") from None


def grant(msg: pb.Grant) -> Grant:
    return Grant(msg.subject, _ROLE_NAMES.get(msg.role, ""))


def value_pb(v: Value) -> pb.Value:
    return pb.Value(data=v.data, content_type=v.content_type)


def fence_pb(given: Fence | SupportsFence | None) -> pb.Fence | None:
    if given is None:
        return None
    f = given if isinstance(given, Fence) else given.fence
    if f.kind == "lock":
        return pb.Fence(lock=f.name, token=f.token)
    return pb.Fence(election=f.name, token=f.token)


def expect_pb(e: Expect | None) -> pb.Expect | None:
    if e is None:
        return None
    if e.kind == "absent":
        return pb.Expect(absent=True)
    if e.kind == "version":
        return pb.Expect(version=e.number)
    return pb.Expect(mod_revision=e.number)


def compare_pb(c: Compare) -> pb.Compare:
    msg = pb.Compare(key=c.key, target=_TARGETS[c.target], operator=_OPERATORS[c.op])
    if isinstance(c.operand, bytes):
        msg.value = c.operand
    else:
        msg.number = c.operand
    return msg


def txn_op_pb(op: TxnOp) -> pb.TxnOp:
    if op.kind == "delete":
        return pb.TxnOp(delete=pb.TxnOp.Delete(key=op.key))
    put = pb.TxnOp.Put(key=op.key, value=value_pb(op.value or Value()), ttl_ms=op.ttl_ms)
    return pb.TxnOp(put=put)
