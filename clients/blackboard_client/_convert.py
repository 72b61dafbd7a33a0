"""protobuf <-> SDK values. The only module besides the client that sees pb2."""

from __future__ import annotations

from blackboard.v1 import blackboard_pb2 as pb

from blackboard_client._model import (
    Change,
    ChangeType,
    Compare,
    Conversation,
    ConversationPage,
    Entry,
    Event,
    Expect,
    Fence,
    HistoryPage,
    Provenance,
    RangePage,
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


def event(msg: pb.Event) -> Event:
    return Event(
        revision=msg.revision,
        time_unix_ms=msg.time_unix_ms,
        provenance=provenance(msg.provenance),
        changes=tuple(change(c) for c in msg.changes),
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


# --- to the wire ----------------------------------------------------------------


def value_pb(v: Value) -> pb.Value:
    return pb.Value(data=v.data, content_type=v.content_type)


def fence_pb(f: Fence | None) -> pb.Fence | None:
    if f is None:
        return None
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
