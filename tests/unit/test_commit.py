"""domain.commit: what one write does, decided from what it reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blackboard_server.domain import coordination
from blackboard_server.domain.commit import Plan, check_fence, compare_holds, plan
from blackboard_server.domain.coordination import Holder, SessionInfo
from blackboard_server.domain.errors import Fenced, SessionNotFound
from blackboard_server.domain.model import (
    AppendChild,
    Change,
    ChangeType,
    Compare,
    ConversationRef,
    Coordination,
    CoordinationKind,
    Delete,
    DeleteSessionEntries,
    Entry,
    Event,
    Fence,
    FenceKind,
    KeyState,
    Op,
    Operator,
    OpResult,
    Provenance,
    Put,
    Target,
    WriteBatch,
    child_key,
)

EQ, NE, GT, LT = Operator.EQUAL, Operator.NOT_EQUAL, Operator.GREATER, Operator.LESS
NOW = 1_700_000_000_000

ENTRY = Entry(
    key="k", data=b"m", content_type="text/plain", version=3, create_revision=2, mod_revision=5
)


def lookup_of(*entries: Entry) -> Callable[[str], Entry | None]:
    state = {e.key: e for e in entries}
    return state.get


# --- compares ---------------------------------------------------------------

# (operand relative to the entry's number) -> expected result per operator.
# The entry's number is on the left: GREATER holds when entry > operand.
NUMBER_CASES = {
    -1: {EQ: False, NE: True, GT: True, LT: False},
    0: {EQ: True, NE: False, GT: False, LT: False},
    +1: {EQ: False, NE: True, GT: False, LT: True},
}


@pytest.mark.parametrize(
    ("target", "actual"),
    [(Target.VERSION, 3), (Target.CREATE_REVISION, 2), (Target.MOD_REVISION, 5)],
)
@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize("operator", list(Operator))
def test_number_compares_on_a_present_key(
    target: Target, actual: int, offset: int, operator: Operator
) -> None:
    compare = Compare("k", target, operator, number=actual + offset)
    assert compare_holds(compare, ENTRY) is NUMBER_CASES[offset][operator]


@pytest.mark.parametrize("target", [Target.VERSION, Target.CREATE_REVISION, Target.MOD_REVISION])
@pytest.mark.parametrize(
    ("operator", "number", "expected"),
    [
        (EQ, 0, True),
        (EQ, 1, False),
        (NE, 0, False),
        (NE, 3, True),
        (GT, 0, False),
        (GT, -1, True),
        (LT, 1, True),
        (LT, 0, False),
    ],
)
def test_number_compares_on_an_absent_key_see_zero(
    target: Target, operator: Operator, number: int, expected: bool
) -> None:
    assert compare_holds(Compare("k", target, operator, number=number), None) is expected


@pytest.mark.parametrize("operator", list(Operator))
@pytest.mark.parametrize("value", [b"", b"m", b"x", b"\xff" * 4])
def test_a_value_compare_never_matches_an_absent_key(operator: Operator, value: bytes) -> None:
    assert compare_holds(Compare("k", Target.VALUE, operator, value=value), None) is False


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        (EQ, b"m", True),
        (EQ, b"n", False),
        (EQ, b"", False),
        (NE, b"m", False),
        (NE, b"mm", True),
        (GT, b"a", True),
        (GT, b"m", False),
        (GT, b"z", False),
        (LT, b"z", True),
        (LT, b"mm", True),  # a proper prefix sorts first
        (LT, b"m", False),
        (LT, b"", False),
    ],
)
def test_value_compares_are_bytewise(operator: Operator, value: bytes, expected: bool) -> None:
    assert compare_holds(Compare("k", Target.VALUE, operator, value=value), ENTRY) is expected


def test_a_value_compare_ignores_the_number_operand() -> None:
    compare = Compare("k", Target.VALUE, EQ, number=3, value=b"m")
    assert compare_holds(compare, ENTRY)
    empty = Entry("e", b"", "", 1, 1, 1)
    assert compare_holds(Compare("e", Target.VALUE, EQ), empty)


# --- plan: puts, deletes, versions -------------------------------------------


def run(
    *ops: Op,
    state: tuple[Entry, ...] = (),
    head: int = 10,
    compares: tuple[Compare, ...] = (),
    failure: tuple[Op, ...] = (),
    fence_mark: int = 0,
    **batch: object,
) -> Plan:
    write = WriteBatch(compares, ops, failure, **batch)  # type: ignore[arg-type]
    return plan(write, head=head, lookup=lookup_of(*state), fence_mark=fence_mark, now_ms=NOW)


def test_a_put_of_a_new_key_creates_version_1_at_the_next_revision() -> None:
    p = run(Put("a", b"1", "application/json"), head=10)
    assert p.succeeded and p.compared == ()
    assert p.event is not None
    assert p.event.revision == 11 and p.event.time_ms == NOW
    (change,) = p.event.changes
    assert change.type is ChangeType.PUT and change.key == "a" and change.previous is None
    entry = change.entry
    assert entry is not None
    assert (entry.key, entry.data, entry.content_type) == ("a", b"1", "application/json")
    assert (entry.version, entry.create_revision, entry.mod_revision) == (1, 11, 11)
    assert entry.expires_ms == 0 and entry.session_id == ""
    assert p.results == (OpResult("a", 1, 11),)


def test_a_put_of_an_existing_key_bumps_its_version_and_keeps_create_revision() -> None:
    p = run(Put("k", b"new"), state=(ENTRY,), head=7)
    assert p.event is not None
    (change,) = p.event.changes
    assert change.previous == ENTRY
    assert change.entry is not None
    assert (change.entry.version, change.entry.create_revision) == (4, 2)
    assert change.entry.mod_revision == 8
    assert change.entry.data == b"new" and change.entry.content_type == ""
    assert p.results == (OpResult("k", 4, 2),)


def test_ttl_and_session_are_recorded_on_the_entry() -> None:
    p = run(Put("a", b"", ttl_ms=500, session_id="s1"), Put("b", b""))
    assert p.event is not None
    a, b = (c.entry for c in p.event.changes)
    assert a is not None and b is not None
    assert (a.expires_ms, a.session_id) == (NOW + 500, "s1")
    assert (b.expires_ms, b.session_id) == (0, "")


def test_a_delete_of_an_existing_key_records_what_it_removed() -> None:
    p = run(Delete("k"), state=(ENTRY,), head=9)
    assert p.event is not None and p.event.revision == 10
    (change,) = p.event.changes
    assert change.type is ChangeType.DELETE
    assert (change.key, change.entry, change.previous) == ("k", None, ENTRY)
    assert p.results == (OpResult("k", 3, 2),)


def test_a_delete_of_an_absent_key_changes_nothing() -> None:
    p = run(Delete("missing"), head=4)
    assert p.succeeded
    assert p.event is None
    assert p.results == (OpResult("missing", 0, 0),)


def test_absent_deletes_are_left_out_of_an_event_that_changes_something() -> None:
    p = run(Delete("missing"), Put("a", b""), Delete("k"), state=(ENTRY,), head=4)
    assert p.event is not None and p.event.revision == 5
    assert [(c.type, c.key) for c in p.event.changes] == [
        (ChangeType.PUT, "a"),
        (ChangeType.DELETE, "k"),
    ]
    assert [r.key for r in p.results] == ["missing", "a", "k"]


def test_an_empty_branch_commits_no_event() -> None:
    p = run(head=3)
    assert p.succeeded and p.event is None and p.results == ()


def test_every_op_of_a_batch_shares_one_revision_and_sees_the_state_before_it() -> None:
    other = Entry("o", b"x", "", 1, 1, 1)
    p = run(Put("k", b"1"), Put("n", b"2"), Delete("o"), state=(ENTRY, other), head=20)
    assert p.event is not None
    assert {c.entry.mod_revision for c in p.event.changes if c.entry} == {21}
    assert [c.key for c in p.event.changes] == ["k", "n", "o"]
    assert p.results == (OpResult("k", 4, 2), OpResult("n", 1, 21), OpResult("o", 1, 1))


# --- plan: compares and branches ---------------------------------------------


def test_when_every_compare_holds_the_success_branch_applies() -> None:
    p = run(
        Put("a", b"s"),
        state=(ENTRY,),
        compares=(Compare("k", Target.VERSION, EQ, 3), Compare("z", Target.VERSION, EQ, 0)),
        failure=(Put("a", b"f"),),
    )
    assert p.succeeded and p.compared == ()
    assert p.event is not None
    assert [c.entry.data for c in p.event.changes if c.entry] == [b"s"]


def test_when_a_compare_fails_the_failure_branch_applies_and_states_are_reported() -> None:
    p = run(
        Put("a", b"s"),
        state=(ENTRY,),
        compares=(Compare("k", Target.VERSION, EQ, 3), Compare("z", Target.VERSION, EQ, 1)),
        failure=(Put("a", b"f"), Delete("k")),
    )
    assert not p.succeeded
    assert p.compared == (KeyState("k", 3, 5), KeyState("z", 0, 0))
    assert p.event is not None and p.event.revision == 11
    assert [(c.type, c.key) for c in p.event.changes] == [
        (ChangeType.PUT, "a"),
        (ChangeType.DELETE, "k"),
    ]
    assert p.event.changes[0].entry is not None
    assert p.event.changes[0].entry.data == b"f"


def test_a_failed_compare_with_an_empty_failure_branch_commits_nothing() -> None:
    p = run(Put("a", b""), compares=(Compare("a", Target.VALUE, EQ, value=b"x"),))
    assert not p.succeeded
    assert p.event is None and p.results == ()
    assert p.compared == (KeyState("a", 0, 0),)


# --- plan: appends -----------------------------------------------------------


def test_child_keys_are_zero_padded_and_sort_in_commit_order() -> None:
    assert child_key("log", 7) == "log/00000000000000000007"
    assert len(child_key("", 1)) == 21
    revisions = [1, 9, 10, 99, 100, 12345, 10**18, 2**63 - 1]
    keys = [child_key("p", r) for r in revisions]
    assert sorted(keys) == keys


def test_an_append_adds_a_child_named_by_the_revision() -> None:
    p = run(AppendChild("log", b"hello", "text/plain", ttl_ms=5), head=41)
    assert p.event is not None
    (change,) = p.event.changes
    assert change.key == "log/00000000000000000042"
    assert change.type is ChangeType.PUT and change.previous is None
    entry = change.entry
    assert entry is not None
    assert (entry.key, entry.data, entry.content_type) == (change.key, b"hello", "text/plain")
    assert (entry.version, entry.create_revision, entry.mod_revision) == (1, 42, 42)
    assert entry.expires_ms == NOW + 5
    assert p.results == (OpResult("log/00000000000000000042", 1, 42),)


def test_appends_under_different_parents_in_one_batch() -> None:
    p = run(AppendChild("a", b"1"), AppendChild("b", b"2"), head=0)
    assert p.event is not None
    assert [c.key for c in p.event.changes] == [child_key("a", 1), child_key("b", 1)]


# --- plan: fences -------------------------------------------------------------


def test_a_stale_fence_raises_before_any_compare_is_looked_at() -> None:
    looked: list[str] = []

    def lookup(key: str) -> Entry | None:
        looked.append(key)
        return None

    batch = WriteBatch(
        (Compare("k", Target.VERSION, EQ, 0),),
        (Put("k", b""),),
        (Put("f", b""),),
        fence=Fence(FenceKind.LOCK, "writer", 5),
    )
    with pytest.raises(Fenced) as raised:
        plan(batch, head=1, lookup=lookup, fence_mark=6, now_ms=NOW)
    assert looked == []
    assert raised.value.current_token == 6
    assert raised.value.metadata == {"fence": "lock:writer", "token": "5", "current_token": "6"}


def test_the_current_holders_token_passes_and_leaves_the_plan_as_without_a_fence() -> None:
    fence = Fence(FenceKind.ELECTION, "leader", 5)
    batch = WriteBatch((), (Put("k", b""),), fence=fence)
    p = plan(batch, head=1, lookup=lookup_of(), fence_mark=5, now_ms=NOW)
    assert p.event is not None and p.event.revision == 2
    assert p.event.provenance.fence == fence
    check_fence(fence, 5)


@pytest.mark.parametrize(
    "mark",
    [
        pytest.param(0, id="never-recorded"),
        pytest.param(4, id="newer-than-recorded"),
        pytest.param(6, id="stale"),
        pytest.param(10**12, id="far-newer-recorded"),
    ],
)
def test_any_other_token_is_fenced_and_reports_the_recorded_one(mark: int) -> None:
    fence = Fence(FenceKind.LOCK, "job", 5)
    batch = WriteBatch((), (Delete("absent"),), fence=fence)
    with pytest.raises(Fenced) as raised:
        plan(batch, head=1, lookup=lookup_of(), fence_mark=mark, now_ms=NOW)
    assert raised.value.current_token == mark
    assert raised.value.metadata == {"fence": "lock:job", "token": "5", "current_token": str(mark)}
    with pytest.raises(Fenced):
        check_fence(fence, mark)


def test_a_fence_is_checked_before_sessions_are_looked_at() -> None:
    asked: list[str] = []

    def ended(session_id: str) -> bool:
        asked.append(session_id)
        return True

    def keys(session_id: str) -> list[str]:
        asked.append(session_id)
        return ["k"]

    batch = WriteBatch(
        (),
        (DeleteSessionEntries("s0"), Put("k", b"", session_id="s1")),
        fence=Fence(FenceKind.LOCK, "job", 2),
    )
    with pytest.raises(Fenced):
        plan(
            batch,
            head=1,
            lookup=lookup_of(ENTRY),
            fence_mark=3,
            now_ms=NOW,
            session_keys=keys,
            session_ended=ended,
        )
    assert asked == []


def test_a_write_without_a_fence_ignores_fence_marks() -> None:
    batch = WriteBatch((), (Put("k", b""),))
    assert plan(batch, head=0, lookup=lookup_of(), fence_mark=99, now_ms=NOW).event is not None
    check_fence(None, 10**9)


def test_fence_marks_name_the_kind() -> None:
    assert Fence(FenceKind.LOCK, "x", 1).mark == "lock:x"
    assert Fence(FenceKind.ELECTION, "x", 1).mark == "election:x"
    with pytest.raises(Fenced) as raised:
        check_fence(Fence(FenceKind.ELECTION, "x", 1), 2)
    assert raised.value.metadata["fence"] == "election:x"


# --- plan: provenance ----------------------------------------------------------


def test_provenance_is_carried_into_the_event_and_every_entry() -> None:
    fence = Fence(FenceKind.LOCK, "writer", 3)
    p = run(
        Put("a", b""),
        AppendChild("log", b""),
        Delete("k"),
        state=(ENTRY,),
        agent_id="agent-1",
        session_id="sess-1",
        request_id="req-1",
        fence=fence,
        fence_mark=3,
    )
    expected = Provenance("agent-1", "sess-1", "req-1", fence, NOW)
    assert p.event is not None
    assert p.event.provenance == expected
    entries = [c.entry for c in p.event.changes if c.entry is not None]
    assert len(entries) == 2
    assert all(e.provenance == expected for e in entries)
    # The deleted entry keeps the provenance of the write that made it.
    assert p.event.changes[2].previous == ENTRY


# --- plan: coordination records --------------------------------------------------

REF = ConversationRef("t", "c")
RECORD = Coordination(CoordinationKind.LOCK_ACQUIRED, "agent-1", "sess-1", "job", 7, b"v")


def test_a_coordination_record_alone_commits_an_event_that_carries_it() -> None:
    p = run(head=4, coordination=RECORD, agent_id="agent-1", session_id="sess-1")
    assert p.succeeded and p.results == () and p.compared == () and p.ended_sessions == ()
    assert p.event == Event(5, NOW, Provenance("agent-1", "sess-1", "", None, NOW), (), RECORD)


def test_a_coordination_record_commits_even_when_its_compares_fail() -> None:
    p = run(
        Put("a", b""),
        compares=(Compare("a", Target.VERSION, EQ, 9),),
        head=4,
        coordination=RECORD,
    )
    assert not p.succeeded and p.compared == (KeyState("a", 0, 0),)
    assert p.event is not None
    assert (p.event.revision, p.event.changes, p.event.coordination) == (5, (), RECORD)


def test_a_coordination_record_shares_its_event_with_the_changes() -> None:
    p = run(Put("a", b"1"), Delete("missing"), head=2, coordination=RECORD)
    assert p.event is not None and p.event.coordination == RECORD
    assert [(c.type, c.key) for c in p.event.changes] == [(ChangeType.PUT, "a")]
    assert p.results == (OpResult("a", 1, 3), OpResult("missing", 0, 0))


def test_data_writes_carry_no_coordination_record() -> None:
    p = run(Put("a", b""))
    assert p.event is not None and p.event.coordination is None


@pytest.mark.parametrize("expired", [False, True])
@pytest.mark.parametrize("kind", list(FenceKind))
def test_the_records_of_a_hold_are_events_whatever_the_fence_mark(
    kind: FenceKind, expired: bool
) -> None:
    holder = Holder(REF, kind, "job", "sess-1", "agent-1", 7, b"value")
    # Marks are the store's bookkeeping: plan neither checks nor needs them.
    for batch in (coordination.acquired(holder), coordination.ended(holder, expired=expired)):
        p = plan(batch, head=0, lookup=lookup_of(), fence_mark=99, now_ms=NOW)
        assert p.event is not None and p.event.coordination == batch.coordination
        assert p.event.changes == () and p.event.provenance.request_id == batch.request_id


# --- plan: session-bound entries -----------------------------------------------

BOUND_A = Entry("a", b"1", "", 1, 1, 1, session_id="s1")
BOUND_B = Entry("b/x", b"2", "", 2, 1, 3, session_id="s1")
OTHER = Entry("c", b"3", "", 1, 2, 2, session_id="s2")
UNBOUND = Entry("d", b"4", "", 2, 2, 4)


def ended_with(
    batch: WriteBatch,
    bound: dict[str, list[str]],
    *,
    ended: frozenset[str] = frozenset(),
    asked: list[str] | None = None,
) -> Plan:
    """Plans `batch` with a binding index `bound` (session -> keys, possibly stale)."""

    def session_keys(session_id: str) -> list[str]:
        if asked is not None:
            asked.append(f"keys:{session_id}")
        return bound.get(session_id, [])

    def session_ended(session_id: str) -> bool:
        if asked is not None:
            asked.append(f"ended:{session_id}")
        return session_id in ended

    return plan(
        batch,
        head=10,
        lookup=lookup_of(BOUND_A, BOUND_B, OTHER, UNBOUND),
        fence_mark=0,
        now_ms=NOW,
        session_keys=session_keys,
        session_ended=session_ended,
    )


def test_a_session_end_deletes_the_entries_still_bound_to_it_in_key_order() -> None:
    # The index may be behind: "gone" no longer exists, "c" and "d" were rebound.
    bound = {"s1": ["gone", "b/x", "d", "c", "a"], "s2": ["c"]}
    asked: list[str] = []
    p = ended_with(WriteBatch((), (DeleteSessionEntries("s1"),)), bound, asked=asked)
    assert asked == ["keys:s1"]
    assert p.succeeded and p.results == () and p.ended_sessions == ("s1",)
    assert p.event is not None and p.event.revision == 11 and p.event.coordination is None
    assert p.event.changes == (
        Change(ChangeType.DELETE, "a", None, BOUND_A),
        Change(ChangeType.DELETE, "b/x", None, BOUND_B),
    )


def test_a_session_end_with_nothing_bound_commits_only_with_a_record() -> None:
    bare = ended_with(WriteBatch((), (DeleteSessionEntries("s9"),)), {})
    assert bare.event is None and bare.results == ()
    left = coordination.session_ended(SessionInfo(REF, "s9", "agent-9", 1_000), expired=False)
    p = ended_with(left, {})
    assert p.ended_sessions == ("s9",)
    record = Coordination(CoordinationKind.AGENT_LEFT, "agent-9", "s9")
    provenance = Provenance("agent-9", "s9", left.request_id, None, NOW)
    assert p.event == Event(11, NOW, provenance, (), record)


def test_a_session_end_record_deletes_the_bound_entries_in_its_own_event() -> None:
    info = SessionInfo(REF, "s2", "agent-2", 1_000)
    p = ended_with(coordination.session_ended(info, expired=True), {"s2": ["c"]})
    assert p.ended_sessions == ("s2",)
    assert p.event is not None
    assert p.event.coordination == Coordination(CoordinationKind.AGENT_EXPIRED, "agent-2", "s2")
    assert p.event.changes == (Change(ChangeType.DELETE, "c", None, OTHER),)


def test_session_ends_follow_the_branch_that_applies() -> None:
    asked: list[str] = []
    compares = (Compare("a", Target.VERSION, EQ, 5),)
    batch = WriteBatch(compares, (DeleteSessionEntries("s1"),), (DeleteSessionEntries("s2"),))
    p = ended_with(batch, {"s1": ["a", "b/x"], "s2": ["c"]}, asked=asked)
    assert asked == ["keys:s2"]
    assert not p.succeeded and p.ended_sessions == ("s2",)
    assert p.event is not None and [c.key for c in p.event.changes] == ["c"]


def test_only_puts_bound_to_a_session_ask_whether_it_ended() -> None:
    asked: list[str] = []
    batch = WriteBatch(
        (), (Put("n", b""), AppendChild("log", b""), Delete("a"), Put("m", b"", session_id="s3"))
    )
    p = ended_with(batch, {}, ended=frozenset({"s1"}), asked=asked)
    assert asked == ["ended:s3"]
    assert p.event is not None and p.ended_sessions == ()
    assert [c.entry.session_id for c in p.event.changes if c.entry] == ["", "", "s3"]


def test_a_put_bound_to_an_ended_session_fails_the_whole_batch() -> None:
    batch = WriteBatch((), (Put("n", b""), Put("m", b"", session_id="s1")))
    with pytest.raises(SessionNotFound) as raised:
        ended_with(batch, {}, ended=frozenset({"s1"}))
    assert raised.value.metadata == {"session": "s1"}
    # On the branch that does not apply it is never looked at.
    guarded = WriteBatch((Compare("a", Target.VERSION, EQ, 1),), (Put("n", b""),), batch.success)
    assert ended_with(guarded, {}, ended=frozenset({"s1"})).succeeded
