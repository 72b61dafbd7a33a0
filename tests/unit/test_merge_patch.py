"""domain.merge_patch: RFC 7386 JSON merge patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from blackboard_server.domain import merge_patch
from blackboard_server.domain.errors import InvalidArgument, NotJson
from blackboard_server.domain.model import JSON, Entry

# RFC 7386 appendix A: (original, patch, result).
RFC_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


def entry(data: bytes, content_type: str = JSON) -> Entry:
    return Entry("doc", data, content_type, 1, 1, 1)


@pytest.mark.parametrize(("target", "patch", "result"), RFC_EXAMPLES)
def test_rfc_7386_examples(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch.merge(target, patch) == result
    assert target == before  # the target is not modified in place


@pytest.mark.parametrize(("target", "patch", "result"), RFC_EXAMPLES)
def test_rfc_7386_examples_through_stored_bytes(target: Any, patch: Any, result: Any) -> None:
    stored = entry(json.dumps(target).encode())
    parsed = merge_patch.parse_patch(json.dumps(patch).encode())
    assert json.loads(merge_patch.apply(stored, "doc", parsed)) == result


def test_an_absent_target_starts_as_null() -> None:
    assert json.loads(merge_patch.apply(None, "doc", {"a": 1, "b": None})) == {"a": 1}
    assert merge_patch.apply(None, "doc", [1, 2]) == b"[1,2]"
    assert merge_patch.apply(None, "doc", None) == b"null"


def test_an_empty_content_type_counts_as_json() -> None:
    stored = entry(b'{"a": 1}', content_type="")
    assert json.loads(merge_patch.apply(stored, "doc", {"b": 2})) == {"a": 1, "b": 2}


def test_output_is_compact_utf8() -> None:
    out = merge_patch.apply(None, "doc", {"name": "Zoë", "tags": ["🦊"]})
    assert out == '{"name":"Zoë","tags":["🦊"]}'.encode()


@pytest.mark.parametrize(
    "stored",
    [
        entry(b'{"a": 1}', content_type="text/plain"),
        entry(b"\x00\x01", content_type="application/octet-stream"),
        entry(b"not json"),
        entry(b'{"a": '),
        entry(b"\xff\xfe"),
        entry(b""),
        entry(b"[" * 100_000),
    ],
)
def test_a_target_that_is_not_json_is_not_json(stored: Entry) -> None:
    with pytest.raises(NotJson) as raised:
        merge_patch.apply(stored, "doc", {"a": 1})
    assert raised.value.metadata == {"key": "doc"}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"{'a': 1}",
        b'{"a": 1,}',
        b"\xff",
        b'{"a": NaN}',
        b"Infinity",
        b"-Infinity",
        b"[" * 100_000,
        b'{"a":' * 100_000,
    ],
)
def test_an_invalid_patch_is_an_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgument) as raised:
        merge_patch.parse_patch(raw)
    assert raised.value.violations[0][0] == "merge_patch"


@pytest.mark.parametrize("raw", [b"null", b"1", b'"s"', b"[]", b"{}", b'{"a": {"b": null}}'])
def test_valid_patches_parse(raw: bytes) -> None:
    assert merge_patch.parse_patch(raw) == json.loads(raw)


def test_a_lone_surrogate_escape_in_a_patch_still_yields_valid_json() -> None:
    patch = merge_patch.parse_patch(b'{"a": "\\ud800", "b": "\\u00e9"}')
    out = merge_patch.apply(None, "doc", patch)
    assert json.loads(out) == {"a": "\ud800", "b": "é"}


def test_a_deep_patch_that_parses_either_applies_or_is_an_invalid_argument() -> None:
    # Deep enough that parsing may succeed while merging it runs out of stack.
    for depth in (200, 900, 960, 990, 1200):
        raw = b'{"a":' * depth + b"1" + b"}" * depth
        try:
            patch = merge_patch.parse_patch(raw)
            out = merge_patch.apply(None, "doc", patch)
        except InvalidArgument as error:
            assert error.violations[0][0] == "merge_patch"
        else:
            assert out == raw
