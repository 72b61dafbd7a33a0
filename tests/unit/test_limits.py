"""Input validation: every bad input is a domain error naming the field it came from."""

from __future__ import annotations

import pytest

from blackboard_server.domain import limits
from blackboard_server.domain.errors import InvalidArgument, LimitExceeded
from blackboard_server.domain.model import (
    AppendChild,
    Compare,
    Delete,
    Fence,
    FenceKind,
    Operator,
    Put,
    Target,
    WriteBatch,
    child_key,
)

LIMITS = limits.Limits()
SMALL = limits.Limits(max_key_bytes=32, max_value_bytes=8, max_txn_ops=4, max_ttl_ms=1000)


def field_of(raised: pytest.ExceptionInfo[InvalidArgument]) -> str:
    error = raised.value
    assert type(error) is InvalidArgument
    (field, _), *rest = error.violations
    assert not rest
    assert error.metadata["field"] == field
    return field


# --- keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "tasks/42",
        "a/b/c/d",
        ".hidden/x",
        "a/.../b",
        "a/b..c",
        "x:y@z=+-_,;!#$%&'()[]<>|~^`\"",
        "tâches/été",
        "任务/第一",
        "emoji/🦊",
    ],
)
def test_valid_keys_are_returned_unchanged(value: str) -> None:
    assert limits.key(value, LIMITS) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/a",
        "a/",
        "a//b",
        "/",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "../a",
        "a/..",
    ],
)
def test_empty_dot_and_dotdot_segments_are_rejected(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.key(value, LIMITS)
    assert field_of(raised) == "key"


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        "a\tb",
        "a\nb",
        "a\rb",
        "trailing ",
        "nbsp\u00a0x",
        "line\u2028sep",
        "ideographic\u3000space",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "c1\x85",
        "zero\u200bwidth",
        "bom\ufeff",
        "private\ue000use",
        "star*",
        "question?",
        "brace{",
        "brace}",
        "back\\slash",
    ],
)
def test_whitespace_control_and_glob_characters_are_rejected(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.key(value, LIMITS, field="put.key")
    assert field_of(raised) == "put.key"
    assert "not allowed" in raised.value.message


def test_every_ascii_character_is_allowed_or_not_by_the_rule() -> None:
    for code in range(128):
        ch = chr(code)
        if ch in "*?{}\\" or ch.isspace() or not ch.isprintable():
            with pytest.raises(InvalidArgument):
                limits.key(f"a{ch}b", LIMITS)
        else:
            assert limits.key(f"a{ch}b", LIMITS) == f"a{ch}b"


def test_a_lone_surrogate_is_an_invalid_argument_not_an_encode_error() -> None:
    with pytest.raises(InvalidArgument):
        limits.key("a\ud800b", LIMITS)
    with pytest.raises(InvalidArgument):
        limits.prefix("a\udfff", LIMITS)


def test_key_length_counts_utf8_bytes_not_characters() -> None:
    assert limits.key("a" * 32, SMALL)
    with pytest.raises(InvalidArgument) as raised:
        limits.key("a" * 33, SMALL)
    assert field_of(raised) == "key"
    assert "32 bytes" in raised.value.message
    # 16 two-byte characters are 32 bytes; 17 are 34 bytes although only 17 characters.
    assert limits.key("é" * 16, SMALL)
    with pytest.raises(InvalidArgument):
        limits.key("é" * 17, SMALL)
    # Four-byte characters: 8 of them fill 32 bytes, one more ASCII byte does not fit.
    assert limits.key("🦊" * 8, SMALL)
    with pytest.raises(InvalidArgument):
        limits.key("🦊" * 8 + "a", SMALL)


def test_default_key_limit_is_512_bytes() -> None:
    assert limits.key("k" * 512, LIMITS)
    with pytest.raises(InvalidArgument):
        limits.key("k" * 513, LIMITS)


# --- prefixes ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "tasks/", "a", "a/b/", "a//", "é/"])
def test_valid_prefixes(value: str) -> None:
    assert limits.prefix(value, LIMITS) == value


@pytest.mark.parametrize("value", ["a b", "a*", "x\n", "a\x00", "tab\t/"])
def test_invalid_prefix_characters(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.prefix(value, LIMITS)
    assert field_of(raised) == "prefix"


def test_prefix_length_is_in_bytes() -> None:
    assert limits.prefix("é" * 16, SMALL)
    with pytest.raises(InvalidArgument) as raised:
        limits.prefix("é" * 17, SMALL, field="selector")
    assert field_of(raised) == "selector"


# --- conversation ids and identifiers ---------------------------------------


@pytest.mark.parametrize("value", ["c", "conv-1", "a.b_c:d-e", "X" * 128, "0"])
def test_valid_conversation_ids(value: str) -> None:
    assert limits.conversation_id(value) == value


@pytest.mark.parametrize(
    "value", ["", "X" * 129, "a b", "a/b", "é", "a\n", "\na", "a*", "a@b", "a\x00"]
)
def test_invalid_conversation_ids(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.conversation_id(value)
    assert field_of(raised) == "conversation_id"
    with pytest.raises(InvalidArgument) as raised:
        limits.conversation_id(value, field="id")
    assert field_of(raised) == "id"


@pytest.mark.parametrize("value", ["", "req-1", "agent@team/a+b=c:d.e_f", "r" * 128])
def test_valid_identifiers(value: str) -> None:
    assert limits.identifier(value, "request_id") == value


@pytest.mark.parametrize("value", ["r" * 129, "a b", "a\n", "é", "a*", "a\\b", "\x00"])
def test_invalid_identifiers(value: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.identifier(value, "agent_id")
    assert field_of(raised) == "agent_id"


# --- values, numbers, pages, metadata ---------------------------------------


def test_value_size_is_bounded() -> None:
    limits.value_size(b"x" * 8, SMALL)
    limits.value_size(b"", SMALL)
    with pytest.raises(LimitExceeded) as raised:
        limits.value_size(b"x" * 9, SMALL)
    assert raised.value.limit == "max_value_bytes"
    assert raised.value.metadata["limit"] == "max_value_bytes"
    assert raised.value.metadata["maximum"] == "8"
    assert raised.value.metadata["value"] == "9"


def test_ttl_bounds() -> None:
    assert limits.ttl(0, SMALL) == 0
    assert limits.ttl(1000, SMALL) == 1000
    with pytest.raises(InvalidArgument) as raised:
        limits.ttl(1001, SMALL)
    assert field_of(raised) == "ttl_ms"
    with pytest.raises(InvalidArgument) as raised:
        limits.ttl(-1, SMALL, field="put.ttl_ms")
    assert field_of(raised) == "put.ttl_ms"
    assert "negative" in raised.value.message


def test_non_negative() -> None:
    assert limits.non_negative(0, "revision") == 0
    assert limits.non_negative(7, "revision") == 7
    with pytest.raises(InvalidArgument) as raised:
        limits.non_negative(-1, "revision")
    assert field_of(raised) == "revision"


def test_page_size_defaults_and_caps() -> None:
    custom = limits.Limits(default_page_size=10, max_page_size=50)
    assert limits.page_size(0, custom) == 10
    assert limits.page_size(1, custom) == 1
    assert limits.page_size(50, custom) == 50
    assert limits.page_size(51, custom) == 50
    assert limits.page_size(10**9, custom) == 50
    assert limits.page_size(0, LIMITS) == 100
    assert limits.page_size(5000, LIMITS) == 1000
    with pytest.raises(InvalidArgument) as raised:
        limits.page_size(-1, custom)
    assert field_of(raised) == "page_size"


def test_metadata_limits() -> None:
    small = limits.Limits(max_metadata_entries=2, max_metadata_bytes=10)
    ok = {"a": "b", "c": "dddddd"}  # 10 bytes
    assert limits.metadata(ok, small) is ok
    with pytest.raises(LimitExceeded) as raised:
        limits.metadata({"a": "", "b": "", "c": ""}, small)
    assert raised.value.limit == "max_metadata_entries"
    with pytest.raises(LimitExceeded) as raised:
        limits.metadata({"a": "é" * 5}, small)  # 1 + 10 bytes
    assert raised.value.limit == "max_metadata_bytes"


# --- write batches ----------------------------------------------------------


def batch(*success: Put | Delete | AppendChild, **kwargs: object) -> WriteBatch:
    return WriteBatch(compares=(), success=success, **kwargs)  # type: ignore[arg-type]


def test_a_valid_batch_is_returned_unchanged() -> None:
    b = WriteBatch(
        compares=(Compare("a", Target.VALUE, Operator.EQUAL, value=b"x"),),
        success=(Put("a", b"1", "text/plain", ttl_ms=10), Delete("b"), AppendChild("log", b"m")),
        failure=(Put("a", b"2"), AppendChild("log", b"n")),
        request_id="req-1",
        fence=Fence(FenceKind.LOCK, "writer", 1),
    )
    assert limits.write_batch(b, LIMITS) is b


def test_too_many_ops_counts_compares_and_both_branches() -> None:
    compare = Compare("c", Target.VERSION, Operator.EQUAL)
    at_limit = WriteBatch((compare,), (Put("a", b""),), (Put("b", b""), Delete("d")))
    assert limits.write_batch(at_limit, SMALL) is at_limit
    over = WriteBatch((compare, compare), (Put("a", b""),), (Put("b", b""), Delete("d")))
    with pytest.raises(LimitExceeded) as raised:
        limits.write_batch(over, SMALL)
    assert raised.value.limit == "max_txn_ops"
    assert raised.value.metadata["maximum"] == "4"


@pytest.mark.parametrize(
    ("ops", "field"),
    [
        ((Put("a", b""), Put("a", b"")), "success[1].key"),
        ((Put("a", b""), Delete("b"), Delete("a")), "success[2].key"),
        ((Delete("x"), Delete("x")), "success[1].key"),
        ((AppendChild("log", b""), Put("k", b""), AppendChild("log", b"")), "success[2].key"),
    ],
)
def test_a_key_written_twice_in_one_branch_is_rejected(
    ops: tuple[Put | Delete | AppendChild, ...], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.write_batch(batch(*ops), LIMITS)
    assert field_of(raised) == field
    assert "twice" in raised.value.message


def test_branches_are_checked_for_duplicates_separately() -> None:
    b = WriteBatch((), (Put("a", b""), AppendChild("a", b"")), (Put("a", b""), Delete("b")))
    assert limits.write_batch(b, LIMITS) is b  # a put of `a` and an append under `a` differ
    with pytest.raises(InvalidArgument) as raised:
        limits.write_batch(WriteBatch((), (), (Put("a", b""), Put("a", b""))), LIMITS)
    assert field_of(raised) == "failure[1].key"


def test_every_key_value_and_ttl_of_a_batch_is_checked_with_its_field() -> None:
    cases: list[tuple[WriteBatch, str]] = [
        (WriteBatch((Compare("a b", Target.VERSION, Operator.EQUAL),), ()), "compares[0].key"),
        (batch(Put("ok", b""), Put("../x", b"")), "success[1].key"),
        (WriteBatch((), (), (Delete(""),)), "failure[0].key"),
        (batch(AppendChild("lo g", b"")), "success[0].key"),
        (batch(Put("a", b"", ttl_ms=-1)), "success[0].ttl_ms"),
        (batch(AppendChild("a", b"", ttl_ms=1001)), "success[0].ttl_ms"),
        (batch(Put("a", b"", content_type="t" * 129)), "success[0].content_type"),
        (batch(AppendChild("a", b"", content_type="t" * 129)), "success[0].content_type"),
        (batch(Put("a", b""), request_id="has space"), "request_id"),
    ]
    for b, field in cases:
        with pytest.raises(InvalidArgument) as raised:
            limits.write_batch(b, SMALL)
        assert field_of(raised) == field, b


def test_values_in_a_batch_are_size_checked() -> None:
    for b in (
        batch(Put("a", b"x" * 9)),
        batch(AppendChild("a", b"x" * 9)),
        WriteBatch((Compare("a", Target.VALUE, Operator.EQUAL, value=b"x" * 9),), ()),
    ):
        with pytest.raises(LimitExceeded) as raised:
            limits.write_batch(b, SMALL)
        assert raised.value.limit == "max_value_bytes"


def test_content_type_of_128_characters_is_allowed() -> None:
    b = batch(Put("a", b"", content_type="t" * 128), AppendChild("b", b"", content_type="t" * 128))
    assert limits.write_batch(b, SMALL) is b


def test_an_append_parent_leaves_room_for_the_child_name() -> None:
    # The child key is the parent plus "/" and 20 digits; it must itself be a valid key.
    roomy = limits.Limits(max_key_bytes=64)
    longest = "p" * (64 - 21)
    assert limits.key(child_key(longest, 10**19), roomy)
    assert limits.write_batch(batch(AppendChild(longest, b"")), roomy)
    with pytest.raises(InvalidArgument) as raised:
        limits.write_batch(batch(AppendChild(longest + "p", b"")), roomy)
    assert field_of(raised) == "success[0].key"


@pytest.mark.parametrize(
    ("fence", "field"),
    [
        (Fence(FenceKind.LOCK, "", 1), "fence.name"),
        (Fence(FenceKind.ELECTION, "has space", 1), "fence.name"),
        (Fence(FenceKind.LOCK, "n" * 129, 1), "fence.name"),
        (Fence(FenceKind.LOCK, "writer", 0), "fence.token"),
        (Fence(FenceKind.ELECTION, "leader", -5), "fence.token"),
    ],
)
def test_a_bad_fence_is_rejected(fence: Fence, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        limits.write_batch(batch(Put("a", b""), fence=fence), LIMITS)
    assert field_of(raised) == field


def test_a_good_fence_passes() -> None:
    b = batch(Put("a", b""), fence=Fence(FenceKind.ELECTION, "role/leader@x", 1))
    assert limits.write_batch(b, LIMITS) is b
