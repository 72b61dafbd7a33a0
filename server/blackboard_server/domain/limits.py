"""Input validation and size limits. Pure: every check raises a domain error.

Keys are `/`-separated paths of 1..max_key_bytes UTF-8 bytes. A segment is
non-empty, is not `.` or `..`, and has no whitespace, control characters or
any of `* ? { } \\`. Conversation ids are 1..128 characters of [A-Za-z0-9._:-].
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from blackboard_server.domain.errors import InvalidArgument, LimitExceeded
from blackboard_server.domain.model import (
    AppendChild,
    Compare,
    DeleteSessionEntries,
    Op,
    Put,
    WriteBatch,
    child_key,
)

_CONVERSATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_IDENTIFIER = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_FORBIDDEN_IN_KEY = frozenset("*?{}\\")
# Printable ASCII but space and the forbidden characters: what almost every key is made
# of, checked in one match instead of character by character.
_PLAIN_KEY = re.compile(r"[!-)+->@-\[\]-z|~]*")


@dataclass(frozen=True, slots=True)
class Limits:
    max_key_bytes: int = 512
    max_value_bytes: int = 1 << 20
    max_txn_ops: int = 128
    max_page_size: int = 1000
    default_page_size: int = 100
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 16 << 10
    max_ttl_ms: int = 365 * 24 * 3600 * 1000
    # The Write stream: writes in one message, and writes of one stream in flight
    # (past that the server stops reading the stream until outcomes have gone out).
    max_stream_message_writes: int = 1000
    max_stream_in_flight: int = 4096


def conversation_id(value: str, field: str = "conversation_id") -> str:
    if not _CONVERSATION_ID.fullmatch(value):
        raise InvalidArgument(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def identifier(value: str, field: str) -> str:
    """Request ids, agent ids, lock names: optional, short, printable."""
    if value and not _IDENTIFIER.fullmatch(value):
        raise InvalidArgument(
            field, "must be at most 128 characters of A-Z a-z 0-9 . _ : @ / + = -"
        )
    return value


def key(value: str, limits: Limits, field: str = "key") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if _byte_length(value) > limits.max_key_bytes:
        raise InvalidArgument(field, f"must be at most {limits.max_key_bytes} bytes")
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgument(field, "segments must be non-empty and not '.' or '..'")
    _check_characters(value, field)
    return value


def prefix(value: str, limits: Limits, field: str = "prefix") -> str:
    """A raw string prefix of keys; empty selects every key."""
    if _byte_length(value) > limits.max_key_bytes:
        raise InvalidArgument(field, f"must be at most {limits.max_key_bytes} bytes")
    _check_characters(value, field)
    return value


def _byte_length(value: str) -> int:
    if value.isascii():
        return len(value)
    # surrogatepass: a lone surrogate is then rejected as a character, not by an encode error.
    return len(value.encode("utf-8", "surrogatepass"))


def _check_characters(value: str, field: str) -> None:
    if _PLAIN_KEY.fullmatch(value):
        return
    for ch in value:
        if ch in _FORBIDDEN_IN_KEY or ch.isspace() or unicodedata.category(ch)[0] == "C":
            raise InvalidArgument(field, f"character {ch!r} is not allowed")


def value_size(data: bytes, limits: Limits, field: str = "value") -> None:
    if len(data) > limits.max_value_bytes:
        raise LimitExceeded("max_value_bytes", len(data), limits.max_value_bytes)


def non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return value


def ttl(value: int, limits: Limits, field: str = "ttl_ms") -> int:
    non_negative(value, field)
    if value > limits.max_ttl_ms:
        raise InvalidArgument(field, f"must be at most {limits.max_ttl_ms}")
    return value


def page_size(value: int, limits: Limits, field: str = "page_size") -> int:
    non_negative(value, field)
    if value == 0:
        return limits.default_page_size
    return min(value, limits.max_page_size)


def metadata(value: dict[str, str], limits: Limits) -> dict[str, str]:
    if len(value) > limits.max_metadata_entries:
        raise LimitExceeded("max_metadata_entries", len(value), limits.max_metadata_entries)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
    if size > limits.max_metadata_bytes:
        raise LimitExceeded("max_metadata_bytes", size, limits.max_metadata_bytes)
    return value


def write_batch(batch: WriteBatch, limits: Limits, *, single: bool = False) -> WriteBatch:
    """Checks every key, value and count of a batch before it reaches a store.

    `single` is for the one-key calls (Put, Delete, Append): errors then name
    the request's own fields (`key`, `ttl_ms`) rather than `success[0].key`.
    """
    ops = len(batch.compares) + len(batch.success) + len(batch.failure)
    if ops > limits.max_txn_ops:
        raise LimitExceeded("max_txn_ops", ops, limits.max_txn_ops)
    identifier(batch.request_id, "request_id")
    for i, compare in enumerate(batch.compares):
        _compare(compare, limits, f"compares[{i}]")
    for branch, ops_ in (("success", batch.success), ("failure", batch.failure)):
        _ops(ops_, limits, "" if single else branch)
    if batch.fence is not None:
        identifier(batch.fence.name, "fence.name")
        if not batch.fence.name:
            raise InvalidArgument("fence.name", "must not be empty")
        if batch.fence.token <= 0:
            raise InvalidArgument("fence.token", "must be positive")
    return batch


def _compare(compare: Compare, limits: Limits, field: str) -> None:
    key(compare.key, limits, f"{field}.key")
    value_size(compare.value, limits, f"{field}.value")


def _ops(ops: tuple[Op, ...], limits: Limits, branch: str) -> None:
    written: set[str] = set()
    for i, op in enumerate(ops):
        field = f"{branch}[{i}]." if branch else ""
        if isinstance(op, DeleteSessionEntries):
            continue  # made by the server when a session ends, never sent by a client
        if isinstance(op, Put):
            identifier(op.session_id, f"{field}session_id")
        name = op.parent if isinstance(op, AppendChild) else op.key
        key(name, limits, f"{field}key")
        if isinstance(op, AppendChild) and _byte_length(child_key(name, 0)) > limits.max_key_bytes:
            # The child's own key must be one that Get and Delete accept.
            raise InvalidArgument(f"{field}key", "leaves no room for the child's 21-byte name")
        if isinstance(op, Put | AppendChild):
            value_size(op.data, limits, f"{field}value")
            ttl(op.ttl_ms, limits, f"{field}ttl_ms")
        if isinstance(op, Put | AppendChild) and len(op.content_type) > 128:
            raise InvalidArgument(f"{field}content_type", "must be at most 128 characters")
        # Children appended in one batch would share the batch's revision, so one per parent.
        slot = name + "/*" if isinstance(op, AppendChild) else name
        if slot in written:
            raise InvalidArgument(f"{field}key", f"{name!r} appears twice")
        written.add(slot)
