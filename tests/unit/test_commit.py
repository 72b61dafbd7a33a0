"""domain.commit: what one write does, decided from what it reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blackboard_server.domain.commit import Plan, check_fence, compare_holds, plan
from blackboard_server.domain.errors import Fenced
from blackboard_server.domain.model import (
    AppendChild,
    ChangeType,
    Compare,
    Delete,
    Entry,
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
    **batch: object,
) -> Plan:
    write = WriteBatch(compares, ops, failure, **batch)  # type: ignore[arg-type]
    return plan(write, head=head, lookup=lookup_of(*state), fence_mark=0, now_ms=NOW)


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


@pytest.mark.parametrize("mark", [0, 4, 5])
def test_an_equal_or_newer_token_passes(mark: int) -> None:
    fence = Fence(FenceKind.ELECTION, "leader", 5)
    batch = WriteBatch((), (Put("k", b""),), fence=fence)
    p = plan(batch, head=1, lookup=lookup_of(), fence_mark=mark, now_ms=NOW)
    assert p.event is not None and p.event.revision == 2


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
    )
    expected = Provenance("agent-1", "sess-1", "req-1", fence, NOW)
    assert p.event is not None
    assert p.event.provenance == expected
    entries = [c.entry for c in p.event.changes if c.entry is not None]
    assert len(entries) == 2
    assert all(e.provenance == expected for e in entries)
    # The deleted entry keeps the provenance of the write that made it.
    assert p.event.changes[2].previous == ENTRY
