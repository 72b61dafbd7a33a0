"""The StateStore contract for what coordination writes: fence marks, coordination
records, and entries bound to a session. Each test runs against both stores.

The batches come from domain/coordination.py, as the coordination service sends them.
"""

from __future__ import annotations

import dataclasses

import pytest

from blackboard_server.domain import coordination
from blackboard_server.domain.coordination import Holder, SessionInfo
from blackboard_server.domain.errors import Fenced, RequestIdReused, SessionNotFound
from blackboard_server.domain.model import (
    Change,
    ChangeType,
    CommitResult,
    Compare,
    ConversationRef,
    Coordination,
    CoordinationKind,
    Event,
    Fence,
    FenceKind,
    Operator,
    Provenance,
    Put,
    Target,
    WriteBatch,
)
from blackboard_server.ports import StateStore
from tests.contract.test_store_contract import DAY_MS, Heard, T, everything, txn, write


def holder(ref: ConversationRef, token: int, kind: FenceKind = FenceKind.LOCK) -> Holder:
    return Holder(ref, kind, "job", "s1", "agent-1", token)


def lock(token: int) -> Fence:
    return Fence(FenceKind.LOCK, "job", token)


# --- fences ------------------------------------------------------------------------


async def test_a_fenced_write_needs_the_current_holders_token(
    store: StateStore, ref: ConversationRef
) -> None:
    before = await everything(store, ref)
    with pytest.raises(Fenced) as unheld:
        await write(store, ref, Put("k", b"v"), fence=lock(1))
    assert unheld.value.current_token == 0
    assert await everything(store, ref) == before

    await txn(store, ref, coordination.acquired(holder(ref, 5)))
    assert (await write(store, ref, Put("k", b"5"), fence=lock(5))).revision == 2
    assert (await write(store, ref, Put("k", b"5 again"), fence=lock(5))).revision == 3
    before = await everything(store, ref)
    for stale_or_unissued in (4, 6):
        stale = WriteBatch(
            (Compare("k", Target.VERSION, Operator.EQUAL, 99),),
            (),
            (Put("k", b"x"),),
            fence=lock(stale_or_unissued),
        )
        with pytest.raises(Fenced) as refused:
            await txn(store, ref, stale)
        assert refused.value.current_token == 5
        assert refused.value.metadata["fence"] == "lock:job"
    assert await everything(store, ref) == before

    (entry,) = (await store.read(ref, "k", "", 1, exact=True)).entries
    assert entry.provenance.fence == lock(5)
    # Another kind with the same name is another fence.
    with pytest.raises(Fenced):
        await write(store, ref, Put("k", b"e"), fence=Fence(FenceKind.ELECTION, "job", 5))


async def test_an_ended_hold_fences_out_its_token(store: StateStore, ref: ConversationRef) -> None:
    await txn(store, ref, coordination.acquired(holder(ref, 5)))
    await txn(store, ref, coordination.ended(holder(ref, 5), expired=True))
    before = await everything(store, ref)
    with pytest.raises(Fenced) as refused:
        await write(store, ref, Put("k", b"late"), fence=lock(5))
    assert refused.value.current_token == 6
    assert await everything(store, ref) == before
    await txn(store, ref, coordination.acquired(holder(ref, 9)))
    assert (await write(store, ref, Put("k", b"9"), fence=lock(9))).succeeded


async def test_marks_only_grow(store: StateStore, ref: ConversationRef) -> None:
    await txn(store, ref, coordination.acquired(holder(ref, 9)))
    await txn(store, ref, coordination.acquired(holder(ref, 7)))  # recorded late
    assert (await write(store, ref, Put("k", b"9"), fence=lock(9))).succeeded
    with pytest.raises(Fenced):
        await write(store, ref, Put("k", b"7"), fence=lock(7))


async def test_a_replay_wins_over_a_newer_fence(store: StateStore, ref: ConversationRef) -> None:
    await txn(store, ref, coordination.acquired(holder(ref, 1)))
    batch = WriteBatch((), (Put("k", b"v"),), request_id="r", fence=lock(1))
    first = await txn(store, ref, batch)
    await txn(store, ref, coordination.ended(holder(ref, 1), expired=False))
    assert await txn(store, ref, batch) == dataclasses.replace(first, replayed=True)


# --- coordination records ------------------------------------------------------------


async def test_a_coordination_record_is_an_event_of_its_own(
    store: StateStore, ref: ConversationRef
) -> None:
    session = SessionInfo(ref, "s1", "agent-1", 10_000)
    joined = coordination.joined(session)
    result = await txn(store, ref, joined)
    assert result == CommitResult(True, 1, ())
    (event,), _ = await store.events(ref, 1, 1, 1)
    record = Coordination(CoordinationKind.AGENT_JOINED, "agent-1", "s1")
    provenance = Provenance("agent-1", "s1", joined.request_id, None, T)
    assert event == Event(1, T, provenance, (), record)

    before = await everything(store, ref)
    assert await txn(store, ref, joined, now=T + 5) == dataclasses.replace(result, replayed=True)
    assert await everything(store, ref) == before

    elected = coordination.acquired(dataclasses.replace(holder(ref, 3, FenceKind.ELECTION)))
    await txn(store, ref, dataclasses.replace(elected, coordination=_with_value(elected)))
    (event,), _ = await store.events(ref, 2, 2, 1)
    assert event.coordination == Coordination(
        CoordinationKind.LEADER_ELECTED, "agent-1", "s1", "job", 3, b"\x00leader\xff"
    )


def _with_value(batch: WriteBatch) -> Coordination:
    assert batch.coordination is not None
    return dataclasses.replace(batch.coordination, value=b"\x00leader\xff")


# --- sessions ------------------------------------------------------------------------


async def test_a_session_end_deletes_the_entries_bound_to_it(
    store: StateStore, ref: ConversationRef
) -> None:
    await write(store, ref, Put("b/2", b"", session_id="s1"))
    await write(store, ref, Put("a/1", b"", session_id="s1"))
    await write(store, ref, Put("c", b"", session_id="s2"))
    await write(store, ref, Put("d", b""))
    await write(store, ref, Put("e", b"", session_id="s1"))
    await write(store, ref, Put("e", b"unbound now"))
    await write(store, ref, Put("f", b"", session_id="s2"))
    await write(store, ref, Put("f", b"moved", session_id="s1"))
    await write(store, ref, Put("t", b"", ttl_ms=10, session_id="s1"))
    await store.expire_due(T + 10, 10)
    snapshot = await store.read(ref, "", "", 100)
    bound = {e.key: e for e in snapshot.entries if e.session_id == "s1"}
    assert sorted(bound) == ["a/1", "b/2", "f"]

    session = SessionInfo(ref, "s1", "agent-1", 10_000)
    ended = coordination.session_ended(session, expired=True)
    assert await txn(store, ref, ended, now=T + 20) == CommitResult(True, 11, ())
    (event,), _ = await store.events(ref, 11, 11, 1)
    assert event.coordination == Coordination(CoordinationKind.AGENT_EXPIRED, "agent-1", "s1")
    assert event.changes == tuple(
        Change(ChangeType.DELETE, key, None, bound[key]) for key in ["a/1", "b/2", "f"]
    )
    remaining = await store.read(ref, "", "", 100)
    assert [e.key for e in remaining.entries] == ["c", "d", "e"]


async def test_nothing_binds_to_an_ended_session(store: StateStore, ref: ConversationRef) -> None:
    session = SessionInfo(ref, "s1", "agent-1", 10_000)
    await txn(store, ref, coordination.session_ended(session, expired=False))
    before = await everything(store, ref)
    late = WriteBatch((), (Put("ok", b""), Put("k", b"", session_id="s1")))
    with pytest.raises(SessionNotFound):
        await txn(store, ref, late, now=T + 1)
    assert await everything(store, ref) == before
    assert (await write(store, ref, Put("k", b""), now=T + 2)).revision == 2
    assert (await write(store, ref, Put("k", b"", session_id="s2"), now=T + 3)).revision == 3

    # Ended sessions are remembered for the dedupe window, then forgotten.
    await write(store, ref, Put("other", b""), now=T + DAY_MS)
    rebound = await write(store, ref, Put("k", b"", session_id="s1"), now=T + DAY_MS + 1)
    assert rebound.revision == 5


async def test_sessions_whose_ids_nest_keep_their_own_entries(
    store: StateStore, ref: ConversationRef
) -> None:
    # Session "s" binding key "x/k" and session "s/x" binding key "k" are two bindings.
    await write(store, ref, Put("x/k", b"", session_id="s"))
    await write(store, ref, Put("k", b"", session_id="s/x"))
    await write(store, ref, Put("k", b"unbound now"))
    ended = coordination.session_ended(SessionInfo(ref, "s", "agent", 1), expired=False)
    await txn(store, ref, ended)
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["k"]
    await write(store, ref, Put("y", b"", session_id="s/x"))
    ended = coordination.session_ended(SessionInfo(ref, "s/x", "agent", 1), expired=False)
    await txn(store, ref, ended)
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["k"]


# --- the same record twice -----------------------------------------------------------


async def test_a_hold_ends_once_whichever_replica_records_it(
    store: StateStore, ref: ConversationRef
) -> None:
    await txn(store, ref, coordination.acquired(holder(ref, 5)))
    released = coordination.ended(holder(ref, 5), expired=False)
    first = await txn(store, ref, released)
    assert first == CommitResult(True, 2, ())
    before = await everything(store, ref)
    assert await txn(store, ref, released, now=T + 1) == dataclasses.replace(first, replayed=True)
    expired = coordination.ended(holder(ref, 5), expired=True)
    assert expired.request_id == released.request_id
    with pytest.raises(RequestIdReused):
        await txn(store, ref, expired, now=T + 2)
    assert await everything(store, ref) == before
    (event,), _ = await store.events(ref, 2, 2, 1)
    assert event.coordination == Coordination(
        CoordinationKind.LOCK_RELEASED, "agent-1", "s1", "job", 5
    )
    with pytest.raises(Fenced) as refused:
        await write(store, ref, Put("k", b"late"), fence=lock(5))
    assert refused.value.current_token == 6

    # The next holder writes once its acquisition is recorded, and only then.
    with pytest.raises(Fenced):
        await write(store, ref, Put("k", b"early"), fence=lock(8))
    await txn(store, ref, coordination.acquired(holder(ref, 8)))
    assert (await write(store, ref, Put("k", b"8"), fence=lock(8))).revision == 4
    with pytest.raises(Fenced) as refused:
        await write(store, ref, Put("k", b"late"), fence=lock(5))
    assert refused.value.current_token == 8


async def test_late_and_replayed_records_never_lower_a_mark(
    store: StateStore, ref: ConversationRef
) -> None:
    acquired_9 = coordination.acquired(holder(ref, 9))
    await txn(store, ref, acquired_9)
    await txn(store, ref, coordination.ended(holder(ref, 5), expired=True))  # recorded late
    assert (await write(store, ref, Put("k", b"9"), fence=lock(9))).succeeded
    await txn(store, ref, coordination.ended(holder(ref, 9), expired=False))
    replayed = await txn(store, ref, acquired_9)
    assert replayed.replayed and replayed.revision == 1
    with pytest.raises(Fenced) as refused:
        await write(store, ref, Put("k", b"9 again"), fence=lock(9))
    assert refused.value.current_token == 10


async def test_a_session_ends_once_whichever_replica_records_it(
    store: StateStore, ref: ConversationRef
) -> None:
    await write(store, ref, Put("k", b"", session_id="s1"))
    session = SessionInfo(ref, "s1", "agent-1", 10_000)
    left = coordination.session_ended(session, expired=False)
    first = await txn(store, ref, left)
    assert first == CommitResult(True, 2, ())
    (event,), _ = await store.events(ref, 2, 2, 1)
    assert event.coordination == Coordination(CoordinationKind.AGENT_LEFT, "agent-1", "s1")
    assert [(c.type, c.key) for c in event.changes] == [(ChangeType.DELETE, "k")]

    before = await everything(store, ref)
    assert await txn(store, ref, left, now=T + 1) == dataclasses.replace(first, replayed=True)
    with pytest.raises(RequestIdReused):
        await txn(store, ref, coordination.session_ended(session, expired=True), now=T + 2)
    assert await everything(store, ref) == before


# --- notifications -------------------------------------------------------------------


async def test_listeners_hear_coordination_records(store: StateStore, ref: ConversationRef) -> None:
    heard = Heard()
    store.listen(heard)
    await store.watch(ref)
    mark = len(heard.calls)
    await write(store, ref, Put("k", b"", session_id="s1"))
    await txn(store, ref, coordination.acquired(holder(ref, 3)))
    session = SessionInfo(ref, "s1", "agent-1", 10_000)
    await txn(store, ref, coordination.session_ended(session, expired=True))

    def delivered() -> list[Event]:
        return [e for r, e in heard.calls if r == ref and e is not None and e.revision > 1]

    logged, _ = await store.events(ref, 2, 3, 10)
    if getattr(store, "confirmed", False):  # bare wake-ups (test_store_contract.py)
        await heard.until(lambda: heard.calls[mark:].count((ref, None)) >= 3)
        assert delivered() == []
    else:
        await heard.until(lambda: len(delivered()) == 2)
        assert delivered() == list(logged)
    assert [e.coordination.kind for e in logged if e.coordination] == [
        CoordinationKind.LOCK_ACQUIRED,
        CoordinationKind.AGENT_EXPIRED,
    ]
    await store.unwatch(ref)
