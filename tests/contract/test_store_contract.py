"""The StateStore contract: each test runs against the memory and the Redis store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from blackboard_server.adapters.memory import EXPIRY_AGENT
from blackboard_server.domain.errors import (
    ConversationExists,
    ConversationNotFound,
    RequestIdReused,
    RevisionCompacted,
)
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    AppendChild,
    Change,
    ChangeType,
    CommitResult,
    Compare,
    Conversation,
    ConversationRef,
    Delete,
    Entry,
    Event,
    KeyState,
    Op,
    Operator,
    OpResult,
    Provenance,
    Put,
    Snapshot,
    Target,
    WriteBatch,
    child_key,
)
from blackboard_server.ports import StateStore
from tests.contract.conftest import RETENTION

DAY_MS = 86_400_000
T = 2_000  # the time of most writes in these tests


async def write(
    store: StateStore, ref: ConversationRef, *ops: Op, now: int = T, **batch: object
) -> CommitResult:
    written = WriteBatch((), ops, **batch)  # type: ignore[arg-type]
    return await store.commit(ref, written, fingerprint(written), now)


async def txn(
    store: StateStore, ref: ConversationRef, batch: WriteBatch, now: int = T
) -> CommitResult:
    return await store.commit(ref, batch, fingerprint(batch), now)


async def everything(store: StateStore, ref: ConversationRef) -> tuple[object, ...]:
    """All a client can observe of a conversation, to prove an error changed nothing."""
    head, compact = await store.head(ref)
    snapshot = await store.read(ref, "", "", 10_000)
    events, _ = await store.events(ref, compact + 1, head, 10_000)
    return head, compact, snapshot, tuple(events), await store.get_conversation(ref)


class Heard:
    """A listener that records notifications and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[ConversationRef, Event | None]] = []
        self._changed = asyncio.Event()

    def __call__(self, ref: ConversationRef, event: Event | None) -> None:
        self.calls.append((ref, event))
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


# --- conversations -------------------------------------------------------------


async def test_create_then_get(store: StateStore, tenant: str) -> None:
    ref = ConversationRef(tenant, "c1")
    created = await store.create_conversation(ref, {"a": "b", "é": "ü"}, 5_000, now_ms=1_000)
    assert created == Conversation(ref, {"a": "b", "é": "ü"}, 1_000, 1_000, 5_000, 0, 0)
    assert await store.get_conversation(ref) == created
    assert await store.head(ref) == (0, 0)


async def test_create_existing_raises_and_keeps_the_original(
    store: StateStore, ref: ConversationRef
) -> None:
    await write(store, ref, Put("k", b"v"))
    before = await everything(store, ref)
    with pytest.raises(ConversationExists):
        await store.create_conversation(ref, {"other": "x"}, 9, now_ms=5_000)
    assert await everything(store, ref) == before


async def test_commits_move_the_update_time(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("k", b"v"), now=7_000)
    conversation = await store.get_conversation(ref)
    assert (conversation.create_time_ms, conversation.update_time_ms) == (1_000, 7_000)
    assert conversation.revision == 1


async def test_missing_conversation_is_not_found_everywhere(store: StateStore, tenant: str) -> None:
    ref = ConversationRef(tenant, "missing")
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(ref)
    with pytest.raises(ConversationNotFound):
        await store.head(ref)
    with pytest.raises(ConversationNotFound):
        await store.read(ref, "", "", 10)
    with pytest.raises(ConversationNotFound):
        await store.read(ref, "k", "", 10, exact=True)
    with pytest.raises(ConversationNotFound):
        await store.events(ref, 1, 10, 10)
    with pytest.raises(ConversationNotFound):
        await write(store, ref, Put("k", b"v"))
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(ref)


async def test_list_pages_through_a_tenant_by_id(store: StateStore, tenant: str) -> None:
    for conversation_id in ["c", "a", "e", "b", "d"]:
        await store.create_conversation(ConversationRef(tenant, conversation_id), {}, 0, 1_000)
    for conversation_id in ["a", "zz"]:
        await store.create_conversation(ConversationRef(tenant + "x", conversation_id), {}, 0, 1)

    async def ids(after: str, limit: int) -> tuple[list[str], bool]:
        page, more = await store.list_conversations(tenant, after, limit)
        return [c.ref.id for c in page], more

    assert await ids("", 2) == (["a", "b"], True)
    assert await ids("b", 2) == (["c", "d"], True)
    assert await ids("d", 2) == (["e"], False)
    assert await ids("e", 2) == ([], False)
    assert await ids("", 5) == (["a", "b", "c", "d", "e"], False)
    assert await ids("bb", 1) == (["c"], True)
    assert await ids("", 0) == ([], True)
    page, _ = await store.list_conversations(tenant, "", 1)
    assert page == [await store.get_conversation(ConversationRef(tenant, "a"))]


async def test_delete_removes_everything(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("k", b"v", ttl_ms=10), request_id="r1")
    await store.delete_conversation(ref)
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(ref)
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(ref)
    page, _ = await store.list_conversations(ref.tenant, "", 10)
    assert page == []
    assert await store.expire_due(DAY_MS, 100) == 0

    await store.create_conversation(ref, {}, 0, now_ms=5_000)
    assert await everything(store, ref) == (
        0,
        0,
        Snapshot((), 0, 0),
        (),
        Conversation(ref, {}, 5_000, 5_000, 0, 0, 0),
    )
    again = await write(store, ref, Put("k", b"v", ttl_ms=10), request_id="r1")
    assert again == CommitResult(True, 1, (OpResult("k", 1, 1),))


async def test_a_conversation_idle_past_its_idle_ttl_is_deleted(
    store: StateStore, tenant: str
) -> None:
    idle = ConversationRef(tenant, "idle")
    kept = ConversationRef(tenant, "kept")  # no idle TTL: never deleted for idling
    busy = ConversationRef(tenant, "busy")
    await store.create_conversation(idle, {}, 5_000, now_ms=1_000)
    await store.create_conversation(kept, {}, 0, now_ms=1_000)
    await store.create_conversation(busy, {}, 5_000, now_ms=1_000)
    await write(store, idle, Put("k", b"v"), now=2_000)  # idle from 7,000 on
    await write(store, busy, Put("k", b"v"), now=2_000)
    before = {r: await everything(store, r) for r in (idle, kept, busy)}

    assert await store.expire_idle(6_999, 100) == 0
    assert {r: await everything(store, r) for r in (idle, kept, busy)} == before
    await write(store, busy, Put("k", b"again"), now=6_000)  # busy until 11,000
    assert await store.expire_idle(7_000, 100) == 1
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(idle)
    page, _ = await store.list_conversations(tenant, "", 10)
    assert [c.ref for c in page] == [busy, kept]
    assert await store.expire_idle(10_999, 100) == 0
    assert (await store.get_conversation(busy)).revision == 2
    assert await store.expire_idle(11_000, 100) == 1
    assert await store.expire_idle(DAY_MS, 100) == 0
    page, _ = await store.list_conversations(tenant, "", 10)
    assert [c.ref for c in page] == [kept]
    # The id is free again, with no trace of the one that idled away.
    await store.create_conversation(idle, {}, 5_000, now_ms=20_000)
    assert await store.head(idle) == (0, 0)
    assert await store.expire_idle(24_999, 100) == 0
    assert await store.expire_idle(25_000, 100) == 1


async def test_expire_idle_respects_the_limit(store: StateStore, tenant: str) -> None:
    refs = [ConversationRef(tenant, f"c{i}") for i in range(3)]
    for ref in refs:
        await store.create_conversation(ref, {}, 10, now_ms=1_000)
    assert await store.expire_idle(5_000, 2) == 2
    assert await store.expire_idle(5_000, 2) == 1
    page, _ = await store.list_conversations(tenant, "", 10)
    assert page == []


# --- grants ----------------------------------------------------------------------


async def test_grants_are_set_replaced_revoked_and_go_with_the_conversation(
    store: StateStore, ref: ConversationRef
) -> None:
    assert await store.grants(ref) == {}
    assert await store.set_grant(ref, "planner", 2) is False
    assert await store.set_grant(ref, "*", 1) is False
    assert await store.set_grant(ref, "planner", 3) is True
    assert await store.grants(ref) == {"planner": 3, "*": 1}
    other = ConversationRef(ref.tenant + "x", ref.id)  # the same id in another tenant
    await store.create_conversation(other, {}, 0, now_ms=1_000)
    assert await store.grants(other) == {}
    assert await store.set_grant(ref, "*", 0) is True
    assert await store.set_grant(ref, "nobody", 0) is False
    assert await store.grants(ref) == {"planner": 3}
    before = await everything(store, ref)
    assert before[0] == 0  # grants are not writes: no revision, no event
    await store.delete_conversation(ref)
    await store.create_conversation(ref, {}, 0, now_ms=1_000)
    assert await store.grants(ref) == {}


async def test_grants_of_a_missing_conversation_are_not_found(
    store: StateStore, ref: ConversationRef
) -> None:
    # (Through `ref`, so the store has created a conversation: a Redis store that has not
    # hangs in this suite's teardown; the suite's other not-found test writes first too.)
    ref = ConversationRef(ref.tenant, "missing")
    with pytest.raises(ConversationNotFound):
        await store.grants(ref)
    with pytest.raises(ConversationNotFound):
        await store.set_grant(ref, "planner", 1)
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(ref)  # nothing was created on the way


# --- writes ----------------------------------------------------------------------


async def test_put_versions_a_key(store: StateStore, ref: ConversationRef) -> None:
    first = await write(store, ref, Put("k", b"one", "text/plain"), agent_id="a1")
    assert first == CommitResult(True, 1, (OpResult("k", 1, 1),))
    assert (await write(store, ref, Put("other", b""))).revision == 2
    second = await write(
        store,
        ref,
        Put("k", b"\x00two\xff", "application/octet-stream", session_id="s9"),
        now=3_000,
        agent_id="a2",
        session_id="s2",
        request_id="req-2",
    )
    assert second == CommitResult(True, 3, (OpResult("k", 2, 1),))
    snapshot = await store.read(ref, "k", "", 10, exact=True)
    provenance = Provenance("a2", "s2", "req-2", None, 3_000)
    expected = Entry("k", b"\x00two\xff", "application/octet-stream", 2, 1, 3, 0, "s9", provenance)
    assert snapshot == Snapshot((expected,), 3, 0)


async def test_revisions_are_contiguous(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("a", b"1"))
    await write(store, ref, Put("b", b"2"), Delete("a"))
    await write(store, ref, Delete("nothing"))  # no change, no revision
    await write(store, ref, AppendChild("log", b"m"))
    await txn(store, ref, WriteBatch((Compare("b", Target.VERSION, Operator.EQUAL, 7),), (), ()))
    await write(store, ref, Put("b", b"3"))
    events, compact = await store.events(ref, 1, 100, 100)
    assert [e.revision for e in events] == [1, 2, 3, 4]
    assert compact == 0
    assert await store.head(ref) == (4, 0)
    assert [[(c.type, c.key) for c in e.changes] for e in events] == [
        [(ChangeType.PUT, "a")],
        [(ChangeType.PUT, "b"), (ChangeType.DELETE, "a")],
        [(ChangeType.PUT, child_key("log", 3))],
        [(ChangeType.PUT, "b")],
    ]


async def test_delete(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("k", b"v"))
    await write(store, ref, Put("k", b"w"))
    before = await everything(store, ref)
    absent = await write(store, ref, Delete("absent"))
    assert absent == CommitResult(True, 2, (OpResult("absent", 0, 0),))
    assert await everything(store, ref) == before

    (previous,) = (await store.read(ref, "k", "", 1, exact=True)).entries
    deleted = await write(store, ref, Delete("k"), now=4_000, agent_id="cleaner")
    assert deleted == CommitResult(True, 3, (OpResult("k", 2, 1),))
    assert (await store.read(ref, "k", "", 1, exact=True)).entries == ()
    (event,), _ = await store.events(ref, 3, 3, 1)
    provenance = Provenance("cleaner", time_ms=4_000)
    assert event == Event(3, 4_000, provenance, (Change(ChangeType.DELETE, "k", None, previous),))
    recreated = await write(store, ref, Put("k", b"again"))
    assert recreated == CommitResult(True, 4, (OpResult("k", 1, 4),))


# k: version 2, create_revision 1, mod_revision 3, value b"m".
COMPARES = [
    (Target.VERSION, Operator.EQUAL, 2, b"", True),
    (Target.VERSION, Operator.EQUAL, 1, b"", False),
    (Target.VERSION, Operator.NOT_EQUAL, 1, b"", True),
    (Target.VERSION, Operator.NOT_EQUAL, 2, b"", False),
    (Target.VERSION, Operator.GREATER, 1, b"", True),
    (Target.VERSION, Operator.GREATER, 2, b"", False),
    (Target.VERSION, Operator.LESS, 3, b"", True),
    (Target.VERSION, Operator.LESS, 2, b"", False),
    (Target.CREATE_REVISION, Operator.EQUAL, 1, b"", True),
    (Target.CREATE_REVISION, Operator.NOT_EQUAL, 1, b"", False),
    (Target.CREATE_REVISION, Operator.GREATER, 0, b"", True),
    (Target.CREATE_REVISION, Operator.LESS, 1, b"", False),
    (Target.MOD_REVISION, Operator.EQUAL, 3, b"", True),
    (Target.MOD_REVISION, Operator.NOT_EQUAL, 2, b"", True),
    (Target.MOD_REVISION, Operator.GREATER, 3, b"", False),
    (Target.MOD_REVISION, Operator.LESS, 4, b"", True),
    (Target.VALUE, Operator.EQUAL, 0, b"m", True),
    (Target.VALUE, Operator.EQUAL, 0, b"M", False),
    (Target.VALUE, Operator.NOT_EQUAL, 0, b"m", False),
    (Target.VALUE, Operator.NOT_EQUAL, 0, b"m\x00", True),
    (Target.VALUE, Operator.GREATER, 0, b"l\xff", True),
    (Target.VALUE, Operator.GREATER, 0, b"m\x00", False),
    (Target.VALUE, Operator.GREATER, 0, b"", True),
    (Target.VALUE, Operator.LESS, 0, b"m\x00", True),
    (Target.VALUE, Operator.LESS, 0, b"\xc3\xa9", True),  # bytes order, whatever the locale
    (Target.VALUE, Operator.LESS, 0, b"m", False),
]
ABSENT_COMPARES = [
    (Target.VERSION, Operator.EQUAL, 0, b"", True),
    (Target.CREATE_REVISION, Operator.GREATER, 0, b"", False),
    (Target.MOD_REVISION, Operator.LESS, 1, b"", True),
    (Target.VALUE, Operator.EQUAL, 0, b"", False),
    (Target.VALUE, Operator.NOT_EQUAL, 0, b"x", False),
    (Target.VALUE, Operator.LESS, 0, b"x", False),
]


async def _compare_fixture(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("k", b"first"))
    await write(store, ref, Put("unrelated", b""))
    await write(store, ref, Put("k", b"m"))


@pytest.mark.parametrize(("target", "operator", "number", "value", "holds"), COMPARES)
async def test_compare_on_a_present_key(
    store: StateStore,
    ref: ConversationRef,
    target: Target,
    operator: Operator,
    number: int,
    value: bytes,
    holds: bool,
) -> None:
    await _compare_fixture(store, ref)
    await _check_compare(store, ref, Compare("k", target, operator, number, value), holds)


@pytest.mark.parametrize(("target", "operator", "number", "value", "holds"), ABSENT_COMPARES)
async def test_compare_on_an_absent_key(
    store: StateStore,
    ref: ConversationRef,
    target: Target,
    operator: Operator,
    number: int,
    value: bytes,
    holds: bool,
) -> None:
    await _compare_fixture(store, ref)
    await _check_compare(store, ref, Compare("nope", target, operator, number, value), holds)


async def _check_compare(
    store: StateStore, ref: ConversationRef, compare: Compare, holds: bool
) -> None:
    batch = WriteBatch((compare,), (Put("out", b"success"),), (Put("out", b"failure"),))
    result = await txn(store, ref, batch)
    present = compare.key == "k"
    state = KeyState(compare.key, 2, 3) if present else KeyState(compare.key, 0, 0)
    assert result == CommitResult(holds, 4, (OpResult("out", 1, 4),), () if holds else (state,))
    (out,) = (await store.read(ref, "out", "", 1, exact=True)).entries
    assert out.data == (b"success" if holds else b"failure")


async def test_failed_compares_report_every_compared_key(
    store: StateStore, ref: ConversationRef
) -> None:
    await _compare_fixture(store, ref)
    compares = (
        Compare("k", Target.VERSION, Operator.EQUAL, 2),
        Compare("absent", Target.VERSION, Operator.GREATER, 0),
        Compare("unrelated", Target.VALUE, Operator.EQUAL, 0, b""),
    )
    batch = WriteBatch(compares, (Put("k", b"yes"),), (Delete("unrelated"), Put("f", b"no")))
    result = await txn(store, ref, batch)
    assert result == CommitResult(
        False,
        4,
        (OpResult("unrelated", 1, 2), OpResult("f", 1, 4)),
        (KeyState("k", 2, 3), KeyState("absent", 0, 0), KeyState("unrelated", 1, 2)),
    )
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["f", "k"]


async def test_failed_compare_with_no_failure_ops_writes_nothing(
    store: StateStore, ref: ConversationRef
) -> None:
    await _compare_fixture(store, ref)
    before = await everything(store, ref)
    batch = WriteBatch((Compare("k", Target.VERSION, Operator.EQUAL, 9),), (Put("k", b"x"),))
    result = await txn(store, ref, batch)
    assert result == CommitResult(False, 3, (), (KeyState("k", 2, 3),))
    assert await everything(store, ref) == before


async def test_a_txn_is_one_revision(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("gone", b"x"))
    batch = WriteBatch(
        (Compare("new", Target.VERSION, Operator.EQUAL, 0),),
        (Put("new", b"1"), Put("other", b"2", ttl_ms=50), Delete("gone"), Delete("absent")),
    )
    result = await txn(store, ref, batch)
    assert result == CommitResult(
        True,
        2,
        (
            OpResult("new", 1, 2),
            OpResult("other", 1, 2),
            OpResult("gone", 1, 1),
            OpResult("absent", 0, 0),
        ),
    )
    (event,), _ = await store.events(ref, 2, 2, 10)
    assert [(c.type, c.key) for c in event.changes] == [
        (ChangeType.PUT, "new"),
        (ChangeType.PUT, "other"),
        (ChangeType.DELETE, "gone"),
    ]
    assert event.changes[1].entry is not None and event.changes[1].entry.expires_ms == T + 50


async def test_append_child_adds_ordered_children(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("chat", b"parent"))
    first = await write(store, ref, AppendChild("chat", b"hello", "text/plain"))
    second = await write(store, ref, AppendChild("chat", b"again", ttl_ms=100), now=T + 1)
    assert first == CommitResult(True, 2, (OpResult(child_key("chat", 2), 1, 2),))
    assert second == CommitResult(True, 3, (OpResult(child_key("chat", 3), 1, 3),))
    snapshot = await store.read(ref, "chat/", "", 10)
    assert [(e.key, e.data, e.expires_ms) for e in snapshot.entries] == [
        ("chat/00000000000000000002", b"hello", 0),
        ("chat/00000000000000000003", b"again", T + 1 + 100),
    ]


async def test_a_batch_may_write_the_key_its_append_creates(
    store: StateStore, ref: ConversationRef
) -> None:
    collide = child_key("log", 2)
    await write(store, ref, Put("other", b""))
    both = await write(store, ref, AppendChild("log", b"appended"), Put(collide, b"put"))
    assert both == CommitResult(True, 2, (OpResult(collide, 1, 2), OpResult(collide, 1, 2)))
    (entry,) = (await store.read(ref, "log/", "", 10)).entries
    assert entry.data == b"put"
    # Deleting that key and appending it again in one batch keeps it, once.
    await write(store, ref, Put("x", b""))  # revision 3
    again = child_key("log", 4)
    await write(store, ref, Put(again, b"old"))  # revision 4
    await write(store, ref, Delete(again), Put("y", b""))  # revision 5
    await write(store, ref, Put(child_key("log", 7), b"old"))  # revision 6
    await write(store, ref, Delete(child_key("log", 7)), AppendChild("log", b"new"))
    snapshot = await store.read(ref, "log/", "", 10)
    assert [(e.key, e.data) for e in snapshot.entries] == [
        (collide, b"put"),
        (child_key("log", 7), b"new"),
    ]


# --- idempotency (fences and sessions: test_store_coordination.py) ------------


async def test_a_retry_replays_the_original_result(store: StateStore, ref: ConversationRef) -> None:
    batch = WriteBatch((), (Put("k", b"v"),), request_id="req-1")
    first = await txn(store, ref, batch)
    await write(store, ref, Put("k", b"later"))
    before = await everything(store, ref)
    again = await txn(store, ref, batch, now=T + 1_000)
    assert again == dataclasses.replace(first, replayed=True)
    assert await everything(store, ref) == before

    reused = WriteBatch((), (Put("k", b"different"),), request_id="req-1")
    with pytest.raises(RequestIdReused):
        await txn(store, ref, reused, now=T + 2_000)
    assert await everything(store, ref) == before

    # Past the dedupe window the id is forgotten: the same batch writes again.
    fresh = await txn(store, ref, reused, now=T + DAY_MS)
    assert fresh == CommitResult(True, 3, (OpResult("k", 3, 1),))


async def test_request_ids_are_forgotten_even_when_many_expire_at_once(
    store: StateStore, ref: ConversationRef
) -> None:
    for i in range(40):
        await write(store, ref, Put("k", b"v"), now=T + i, request_id=f"r{i}")
    last = WriteBatch((), (Put("k", b"new"),), request_id="r39")
    assert (await txn(store, ref, last, now=T + 39 + DAY_MS)).revision == 41


async def test_a_retry_of_a_failed_compare_replays_the_failure(
    store: StateStore, ref: ConversationRef
) -> None:
    await write(store, ref, Put("k", b"v"))
    compare = Compare("k", Target.VERSION, Operator.EQUAL, 5)
    batch = WriteBatch((compare,), (Put("k", b"won"),), (Put("lost", b"1"),), request_id="t")
    first = await txn(store, ref, batch)
    assert not first.succeeded and first.compared == (KeyState("k", 1, 1),)
    await write(store, ref, Put("k", b"v2"))
    assert await txn(store, ref, batch) == dataclasses.replace(first, replayed=True)


# --- reads -----------------------------------------------------------------------


async def test_read_pages_by_prefix(store: StateStore, ref: ConversationRef) -> None:
    for key in ["a/3", "a/1", "é/1", "ab", "a/5", "b/1", "a/2", "a/4", "z"]:
        await write(store, ref, Put(key, key.encode()))

    async def keys(prefix: str, after: str, limit: int) -> tuple[list[str], bool]:
        snapshot = await store.read(ref, prefix, after, limit)
        assert (snapshot.revision, snapshot.compact_revision) == (9, 0)
        return [e.key for e in snapshot.entries], snapshot.more

    assert await keys("a/", "", 2) == (["a/1", "a/2"], True)
    assert await keys("a/", "a/2", 2) == (["a/3", "a/4"], True)
    assert await keys("a/", "a/4", 2) == (["a/5"], False)
    assert await keys("a/", "a/5", 2) == ([], False)
    assert await keys("a/", "a/2x", 10) == (["a/3", "a/4", "a/5"], False)
    assert await keys("a/", "0", 10) == (["a/1", "a/2", "a/3", "a/4", "a/5"], False)
    assert await keys("a/", "b", 10) == ([], False)
    assert await keys("a", "", 10) == (["a/1", "a/2", "a/3", "a/4", "a/5", "ab"], False)
    assert await keys("", "", 100) == (
        ["a/1", "a/2", "a/3", "a/4", "a/5", "ab", "b/1", "z", "é/1"],
        False,
    )
    assert await keys("", "z", 100) == (["é/1"], False)
    assert await keys("é", "", 100) == (["é/1"], False)
    assert await keys("", "", 0) == ([], True)
    assert await keys("q", "", 0) == ([], False)

    exact = await store.read(ref, "a/3", "zzz", 0, exact=True)
    assert [(e.key, e.data, e.version) for e in exact.entries] == [("a/3", b"a/3", 1)]
    assert (await store.read(ref, "a/", "", 10, exact=True)).entries == ()


async def test_events_are_retained_up_to_the_retention(
    store: StateStore, ref: ConversationRef
) -> None:
    for i in range(RETENTION + 5):
        await write(store, ref, Put(f"k{i % 3}", str(i).encode()), now=T + i)
    head, compact = RETENTION + 5, 5
    assert await store.head(ref) == (head, compact)
    assert (await store.get_conversation(ref)).compact_revision == compact
    assert (await store.read(ref, "", "", 10)).compact_revision == compact
    before = await everything(store, ref)
    for start in (0, 1, compact):
        with pytest.raises(RevisionCompacted) as compacted:
            await store.events(ref, start, head, 100)
        assert compacted.value.compact_revision == compact
    assert await everything(store, ref) == before

    async def revisions(start: int, end: int, limit: int) -> list[int]:
        events, reported = await store.events(ref, start, end, limit)
        assert reported == compact
        return [e.revision for e in events]

    assert await revisions(compact + 1, head, 100) == list(range(compact + 1, head + 1))
    assert await revisions(6, 10, 100) == [6, 7, 8, 9, 10]
    assert await revisions(6, head, 3) == [6, 7, 8]
    assert await revisions(6, 2**63 - 1, 2) == [6, 7]
    assert await revisions(head + 1, head + 10, 10) == []
    assert await revisions(10, 9, 10) == []
    assert await revisions(10, 20, 0) == []

    (last,), _ = await store.events(ref, head, head, 1)
    (previous,), _ = await store.events(ref, head - 3, head - 3, 1)
    assert last.changes[0].previous == previous.changes[0].entry
    assert last.changes[0].entry is not None and last.changes[0].entry.data == b"24"


# --- TTL -------------------------------------------------------------------------


async def test_expire_due_deletes_entries_whose_ttl_passed(
    store: StateStore, ref: ConversationRef
) -> None:
    await write(store, ref, Put("t", b"short", ttl_ms=1_000))  # due at 3000
    await write(store, ref, Put("keep", b""))
    await write(store, ref, Put("rewritten", b"", ttl_ms=500))  # due at 2500
    await write(store, ref, Put("rewritten", b"no ttl now"), now=T + 100)
    await write(store, ref, Put("later", b"", ttl_ms=500))
    await write(store, ref, Put("later", b"", ttl_ms=5_000), now=T + 100)  # due at 7100
    before = await everything(store, ref)
    assert await store.expire_due(2_999, 100) == 0
    assert await everything(store, ref) == before

    (doomed,) = (await store.read(ref, "t", "", 1, exact=True)).entries
    assert doomed.expires_ms == 3_000
    assert await store.expire_due(3_000, 100) == 1
    assert await store.head(ref) == (7, 0)
    (event,), _ = await store.events(ref, 7, 7, 1)
    expiry = Provenance(agent_id=EXPIRY_AGENT, time_ms=3_000)
    assert event == Event(7, 3_000, expiry, (Change(ChangeType.DELETE, "t", None, doomed),))
    remaining = await store.read(ref, "", "", 10)
    assert [e.key for e in remaining.entries] == ["keep", "later", "rewritten"]
    assert (await store.get_conversation(ref)).update_time_ms == 3_000

    assert await store.expire_due(7_100, 100) == 1
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["keep", "rewritten"]
    assert await store.expire_due(DAY_MS, 100) == 0


async def test_expire_due_makes_one_event_per_conversation(
    store: StateStore, ref: ConversationRef, tenant: str
) -> None:
    other = ConversationRef(tenant, "other")
    await store.create_conversation(other, {}, 0, 1_000)
    for key in ["x/2", "x/1", "é", "x/3"]:
        await write(store, ref, Put(key, b"", ttl_ms=1_000))
    await write(store, ref, Put("x/1", b"", ttl_ms=1_000))  # same expiry, written twice
    await write(store, other, Put("o", b"", ttl_ms=10))
    assert await store.expire_due(5_000, 100) == 5
    (event,), _ = await store.events(ref, 6, 6, 1)
    assert [c.key for c in event.changes] == ["x/1", "x/2", "x/3", "é"]
    assert await store.head(other) == (2, 0)
    assert (await store.read(ref, "", "", 10)).entries == ()


async def test_expire_due_respects_the_limit(store: StateStore, ref: ConversationRef) -> None:
    await write(store, ref, Put("c", b"", ttl_ms=100))
    await write(store, ref, Put("b", b"", ttl_ms=100))
    await write(store, ref, Put("a", b"", ttl_ms=200))
    assert await store.expire_due(5_000, 2) == 2
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["a"]
    (event,), _ = await store.events(ref, 4, 4, 1)
    assert [c.key for c in event.changes] == ["b", "c"]
    assert await store.expire_due(5_000, 2) == 1
    assert await store.head(ref) == (5, 0)


# --- notifications ---------------------------------------------------------------------


async def test_watchers_hear_of_commits_and_deletion(
    store: StateStore, ref: ConversationRef
) -> None:
    heard = Heard()
    store.listen(heard)
    await store.watch(ref)
    # A store whose reads replicas confirm announces commits without their
    # events: those are published before the replicas have them.
    confirmed = getattr(store, "confirmed", False)

    def events_of(revision: int) -> list[Event]:
        return [e for r, e in heard.calls if r == ref and e is not None and e.revision == revision]

    def woken_since(mark: int) -> bool:
        return (ref, None) in heard.calls[mark:]

    mark = len(heard.calls)
    result = await write(store, ref, Put("k", b"v"), AppendChild("k", b"c"))
    if confirmed:
        await heard.until(lambda: woken_since(mark))
    else:
        await heard.until(lambda: bool(events_of(result.revision)))
        logged, _ = await store.events(ref, result.revision, result.revision, 1)
        assert events_of(result.revision) == list(logged)

    await store.unwatch(ref)
    await store.watch(ref)
    mark = len(heard.calls)
    expired = await write(store, ref, Put("t", b"", ttl_ms=1))
    await store.expire_due(T + 1, 10)
    if confirmed:
        await heard.until(lambda: len([c for c in heard.calls[mark:] if c[0] == ref]) >= 2)
        assert all(e is None for _, e in heard.calls)
    else:
        await heard.until(lambda: bool(events_of(expired.revision + 1)))

    # A large event may come as a bare wake-up (None): the log has it.
    mark = len(heard.calls)
    large = await write(store, ref, Put("big", b"x" * 200_000))
    await heard.until(
        lambda: any(
            r == ref and (e is None or e.revision == large.revision) for r, e in heard.calls[mark:]
        )
    )

    mark = len(heard.calls)
    await store.delete_conversation(ref)
    await heard.until(lambda: (ref, None) in heard.calls[mark:])
    await store.unwatch(ref)
