"""domain.history: the past rebuilt from the present and the events after it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackboard_server.domain import history, model
from blackboard_server.domain.commit import plan
from blackboard_server.domain.errors import InvalidArgument, RevisionCompacted
from blackboard_server.domain.model import (
    AppendChild,
    ChangeType,
    Delete,
    Entry,
    Event,
    Op,
    Put,
    Snapshot,
    WriteBatch,
)


@dataclass
class Board:
    """A conversation kept the way a store keeps it: current state plus the event log."""

    state: dict[str, Entry] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)
    # snapshots[r] is the state right after revision r was committed.
    snapshots: list[dict[str, Entry]] = field(default_factory=lambda: [{}])

    @property
    def head(self) -> int:
        return len(self.log)

    def write(self, *ops: Op) -> Event | None:
        p = plan(
            WriteBatch((), ops, agent_id="tester"),
            head=self.head,
            lookup=self.state.get,
            fence_mark=0,
            now_ms=1000 + self.head,
        )
        if p.event is None:
            return None
        for change in p.event.changes:
            if change.type is ChangeType.PUT:
                assert change.entry is not None
                self.state[change.key] = change.entry
            else:
                del self.state[change.key]
        self.log.append(p.event)
        self.snapshots.append(dict(self.state))
        return p.event

    def after(self, revision: int) -> list[Event]:
        return self.log[revision:]

    def read(self, prefix: str, after: str, limit: int) -> Snapshot:
        """What a store's read at the head returns (the memory store's rules)."""
        keys = sorted(k for k in self.state if k.startswith(prefix) and k > after)
        page = tuple(self.state[k] for k in keys[:limit])
        return Snapshot(page, self.head, 0, more=len(keys) > limit)

    def everything(self, prefix: str) -> Snapshot:
        """Every current key under `prefix`: a current page larger than any limit."""
        return self.read(prefix, "", len(self.state) + 1)

    def page_at(self, prefix: str, after: str, limit: int, revision: int) -> Snapshot:
        """A page at a past revision, read the way BlackboardService.range_at reads it."""
        events = self.after(revision)
        touched = len(history.undone(events, prefix, exact=False))
        current = self.read(prefix, after, limit + touched)
        return history.range_at(current, events, prefix, after, limit, revision)


def expected(snapshot: dict[str, Entry], prefix: str = "") -> tuple[Entry, ...]:
    return tuple(snapshot[k] for k in sorted(snapshot) if k.startswith(prefix))


def keys(page: Snapshot) -> list[str]:
    return [e.key for e in page.entries]


# --- check_retained ------------------------------------------------------------


def test_check_retained() -> None:
    history.check_retained(5, 5, 9)  # every event after 5 is still there
    history.check_retained(9, 5, 9)
    with pytest.raises(RevisionCompacted) as compacted:
        history.check_retained(4, 5, 9)
    assert compacted.value.compact_revision == 5
    assert compacted.value.metadata == {"revision": "4", "compact_revision": "5"}
    with pytest.raises(InvalidArgument) as ahead:
        history.check_retained(10, 5, 9)
    assert ahead.value.violations[0][0] == "revision"


# --- undone and entry_at -------------------------------------------------------


def test_undone_keeps_the_entry_before_the_first_change_after_r() -> None:
    board = Board()
    board.write(Put("a", b"1"))  # 1
    board.write(Put("a", b"2"), Put("ab", b"x"))  # 2
    board.write(Put("a", b"3"), Delete("ab"), Put("b", b"y"))  # 3
    at_1 = board.snapshots[1]
    undone = history.undone(board.after(1), "a", exact=False)
    assert undone == {"a": at_1["a"], "ab": None}
    assert history.undone(board.after(1), "a", exact=True) == {"a": at_1["a"]}
    assert history.undone(board.after(1), "", exact=False) == {
        "a": at_1["a"],
        "ab": None,
        "b": None,
    }
    assert history.undone(board.after(3), "", exact=False) == {}
    assert history.undone(board.after(0), "zzz", exact=False) == {}


def test_entry_at() -> None:
    board = Board()
    board.write(Put("a", b"1"), Put("gone", b"g"))  # 1
    board.write(Put("a", b"2"), Put("later", b"l"))  # 2
    board.write(Delete("gone"), Put("still", b"s"))  # 3
    board.write(Put("other", b"o"))  # 4
    s1, s3 = board.snapshots[1], board.snapshots[3]
    cur = board.state.get
    assert history.entry_at("a", cur("a"), board.after(1)) == s1["a"]  # modified after 1
    assert history.entry_at("a", cur("a"), board.after(2)) is cur("a")  # unchanged since 2
    assert history.entry_at("later", cur("later"), board.after(1)) is None  # created after 1
    assert history.entry_at("gone", None, board.after(1)) == s1["gone"]  # deleted after 1
    assert history.entry_at("gone", None, board.after(3)) is None
    assert history.entry_at("still", cur("still"), board.after(3)) == s3["still"]
    assert history.entry_at("never", None, board.after(0)) is None


# --- range_at ------------------------------------------------------------------


def make_board() -> Board:
    board = Board()
    board.write(Put("t/1", b"a"), Put("t/2", b"b"), Put("t/3", b"c"), Put("u/1", b"u"))  # 1
    board.write(Put("t/0", b"new"))  # 2: created after 1
    board.write(Delete("t/2"))  # 3: deleted after 1
    board.write(Put("t/3", b"c2"), Put("t/4", b"d"))  # 4: modified, created after 1
    board.write(Delete("t/4"), Put("t/9", b"z"))  # 5
    return board


def test_range_at_rebuilds_a_past_revision_from_a_complete_current_read() -> None:
    board = make_board()
    for revision in range(board.head + 1):
        for prefix in ("", "t/", "u/", "t/3", "x"):
            page = history.range_at(
                board.everything(prefix), board.after(revision), prefix, "", 100, revision
            )
            assert page.entries == expected(board.snapshots[revision], prefix), (revision, prefix)
            assert page.revision == revision and not page.more


def test_range_at_one_revision_back() -> None:
    board = make_board()
    page = board.page_at("t/", "", 100, 1)
    assert keys(page) == ["t/1", "t/2", "t/3"]
    assert [e.data for e in page.entries] == [b"a", b"b", b"c"]
    assert not page.more


def test_range_at_pages_with_after_and_more() -> None:
    board = make_board()
    first = board.page_at("t/", "", 2, 1)
    assert keys(first) == ["t/1", "t/2"] and first.more
    second = board.page_at("t/", "t/2", 2, 1)
    assert keys(second) == ["t/3"]
    assert second.entries[0].data == b"c"
    assert not second.more


def test_range_at_drops_what_sorts_after_an_incomplete_current_page() -> None:
    board = make_board()
    # At revision 1 the prefix held t/1, t/2, t/3. A current page that stops at t/1
    # (more=True) must not let the restored t/2, t/3 jump ahead of unread keys.
    current = board.read("t/", "", 2)  # t/0, t/1 at the head
    assert current.more
    page = history.range_at(current, board.after(1), "t/", "", 5, 1)
    assert keys(page) == ["t/1"]
    assert page.more


def test_range_at_with_after_past_every_key() -> None:
    board = make_board()
    page = board.page_at("t/", "t/9", 5, 1)
    assert page.entries == () and not page.more


def test_range_at_at_the_head_is_the_current_page() -> None:
    board = make_board()
    page = board.page_at("t/", "", 100, board.head)
    assert page.entries == expected(board.state, "t/")


def test_range_at_carries_the_compact_revision() -> None:
    current = Snapshot((), 9, 4)
    assert history.range_at(current, [], "", "", 10, 6) == Snapshot((), 6, 4, False)


# --- select_changes ---------------------------------------------------------------


def event_of(*ops: Op) -> Event:
    board = Board()
    board.write(*(Put(op.key, b"") for op in ops if isinstance(op, Delete)))
    made = board.write(*ops)
    assert made is not None
    return made


def test_select_changes() -> None:
    ev = event_of(Put("a/1", b""), Put("ab", b""), Delete("b/1"))
    assert history.select_changes(ev, "") is ev
    assert history.select_changes(ev, "zzz") is None
    only_a = history.select_changes(ev, "a")
    assert only_a is not None and only_a is not ev
    assert [c.key for c in only_a.changes] == ["a/1", "ab"]
    assert (only_a.revision, only_a.time_ms, only_a.provenance) == (
        ev.revision,
        ev.time_ms,
        ev.provenance,
    )
    b = history.select_changes(ev, "b/")
    assert b is not None
    assert [(c.type, c.key) for c in b.changes] == [(ChangeType.DELETE, "b/1")]
    exact = history.select_changes(ev, "a", exact=True)
    assert exact is None  # "a" is a prefix of keys but not a key
    exact = history.select_changes(ev, "ab", exact=True)
    assert exact is not None and [c.key for c in exact.changes] == ["ab"]
    assert history.select_changes(ev, "", exact=True) is None


def test_select_changes_returns_the_event_itself_when_everything_matches() -> None:
    ev = event_of(Put("p/1", b""), Put("p/2", b""))
    assert history.select_changes(ev, "p/") is ev
    single = event_of(Put("k", b""))
    assert history.select_changes(single, "k", exact=True) is single


# --- page tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revision", "last_key"),
    [(0, ""), (1, "a"), (42, "tasks/42"), (2**63 - 1, "a:b:c"), (7, "tâches/🦊"), (3, "==")],
)
def test_page_tokens_round_trip(revision: int, last_key: str) -> None:
    token = history.page_token(revision, last_key)
    assert "=" not in token and "/" not in token and "+" not in token
    assert history.parse_page_token(token) == (revision, last_key)


def test_an_empty_token_starts_at_the_beginning() -> None:
    assert history.parse_page_token("") == (0, "")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "!!!!",
        "A",
        "é",
        "not a token",
        b64(b"no-colon"),
        b64(b"x:key"),
        b64(b":key"),
        b64(b"\xff\xfe:key"),
        b64(b"-5:key"),
        b64(b"+5:key"),
        b64(b" 5:key"),
        b64("٣:key".encode()),
        b64(b"9" * 5000 + b":k"),
    ],
)
def test_garbage_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        history.parse_page_token(token)
    assert raised.value.violations[0][0] == "page_token"


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_any_string_is_a_token_or_an_invalid_argument(token: str) -> None:
    try:
        revision, _ = history.parse_page_token(token)
    except InvalidArgument as error:
        assert error.violations[0][0] == "page_token"
    else:
        assert revision >= 0


@given(st.integers(min_value=0, max_value=2**63 - 1), st.text())
def test_every_issued_token_parses_back(revision: int, last_key: str) -> None:
    assert history.parse_page_token(history.page_token(revision, last_key)) == (
        revision,
        last_key,
    )


# --- the property: every past state can be rebuilt ------------------------------

KEYS = ["a", "a/1", "a/2", "ab", "b", "b/1", "c"]
PREFIXES = ["", "a", "a/", "b", "c", "d"]


def ops_strategy() -> st.SearchStrategy[list[Op]]:
    op = st.one_of(
        st.builds(Put, st.sampled_from(KEYS), st.binary(max_size=2)),
        st.builds(Delete, st.sampled_from(KEYS)),
        st.builds(AppendChild, st.sampled_from(["a", "log"]), st.binary(max_size=2)),
    )

    def unique(ops: list[Op]) -> list[Op]:
        seen: set[str] = set()
        out: list[Op] = []
        for o in ops:
            slot = o.parent + "/*" if isinstance(o, AppendChild) else o.key
            if slot not in seen:
                seen.add(slot)
                out.append(o)
        return out

    return st.lists(op, min_size=1, max_size=3).map(unique)


@given(st.lists(ops_strategy(), max_size=25), st.integers(min_value=1, max_value=3))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_past_revision_is_rebuilt_exactly(batches: list[list[Op]], limit: int) -> None:
    board = Board()
    for ops in batches:
        board.write(*ops)
    assert [e.revision for e in board.log] == list(range(1, board.head + 1))
    every_key = {c.key for e in board.log for c in e.changes}
    for revision in range(board.head + 1):
        past = board.snapshots[revision]
        events = board.after(revision)
        for key in every_key:
            assert history.entry_at(key, board.state.get(key), events) == past.get(key)
        for prefix in PREFIXES:
            whole = history.range_at(board.everything(prefix), events, prefix, "", 10**6, revision)
            assert whole.entries == expected(past, prefix)
            assert whole.revision == revision and not whole.more
            # Paging as the service does it, `limit` keys at a time.
            collected: list[Entry] = []
            after = ""
            for _ in range(len(past) + 2):
                page = board.page_at(prefix, after, limit, revision)
                assert len(page.entries) <= limit
                collected.extend(page.entries)
                if not (page.more and page.entries):
                    break
                after = page.entries[-1].key
            else:
                pytest.fail("paging did not end")
            assert tuple(collected) == expected(past, prefix)


def test_coordination_events_are_selected_by_every_prefix() -> None:
    gone = model.Entry("presence/a", b"x", "", 1, 1, 1, session_id="s1")
    left = model.Event(
        7,
        0,
        model.Provenance(),
        (model.Change(model.ChangeType.DELETE, "presence/a", None, gone),),
        model.Coordination(model.CoordinationKind.AGENT_LEFT, "a", "s1"),
    )
    for selector, exact in (("tasks/", False), ("tasks/1", True)):
        selected = history.select_changes(left, selector, exact=exact)
        assert selected is not None
        assert selected.changes == () and selected.coordination == left.coordination
    kept = history.select_changes(left, "presence/")
    assert kept is left
