"""What one write does, decided from what it reads. Pure.

The memory store runs `plan` directly; the Redis store's Lua step
(adapters/lua/commit.lua) is a port of it, and the contract suite and the
stateful equivalence test hold the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from blackboard_server.domain import quota as quotas
from blackboard_server.domain.errors import Fenced, SessionNotFound
from blackboard_server.domain.model import (
    AppendChild,
    Change,
    ChangeType,
    Compare,
    Delete,
    DeleteSessionEntries,
    Entry,
    Event,
    Fence,
    KeyState,
    Operator,
    OpResult,
    Provenance,
    Put,
    Target,
    WriteBatch,
    child_key,
)

Lookup = Callable[[str], Entry | None]
SessionKeys = Callable[[str], Iterable[str]]
SessionEnded = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Plan:
    succeeded: bool
    event: Event | None  # None when the applied branch changed nothing
    results: tuple[OpResult, ...]
    compared: tuple[KeyState, ...]
    ended_sessions: tuple[str, ...] = ()  # sessions whose entries this commit removed


def check_fence(fence: Fence | None, current: int) -> None:
    """A fenced write needs the token of the current holder, which the store recorded
    when the lock or term was taken: an older token has lost it, and a token the
    store never saw was not issued to a holder."""
    if fence is not None and current != fence.token:
        raise Fenced(fence.mark, fence.token, current)


def _no_keys(session_id: str) -> Iterable[str]:
    return ()


def _not_ended(session_id: str) -> bool:
    return False


def compare_holds(compare: Compare, entry: Entry | None) -> bool:
    if compare.target is Target.VALUE:
        if entry is None:
            return False
        left: bytes | int = entry.data
        right: bytes | int = compare.value
    else:
        left = _number(compare.target, entry)
        right = compare.number
    match compare.operator:
        case Operator.EQUAL:
            return left == right
        case Operator.NOT_EQUAL:
            return left != right
        case Operator.GREATER:
            return left > right  # type: ignore[operator]
        case Operator.LESS:
            return left < right  # type: ignore[operator]
    return False


def _number(target: Target, entry: Entry | None) -> int:
    if entry is None:
        return 0
    if target is Target.VERSION:
        return entry.version
    if target is Target.CREATE_REVISION:
        return entry.create_revision
    return entry.mod_revision


def plan(
    batch: WriteBatch,
    *,
    head: int,
    lookup: Lookup,
    fence_mark: int,
    now_ms: int,
    session_keys: SessionKeys = _no_keys,
    session_ended: SessionEnded = _not_ended,
    quota: quotas.StoreQuota = quotas.UNLIMITED,
    entries: int = 0,
    tenant_bytes: int = 0,
) -> Plan:
    """Decides the outcome of `batch` against the state seen through `lookup`.

    Raises Fenced before anything else is looked at, so a fenced-out writer
    learns nothing about the state; SessionNotFound for a put bound to a
    session whose end was recorded; QuotaExceeded when the changes would grow
    the conversation's `entries` or the tenant's `tenant_bytes` past `quota`.
    A batch that carries a coordination record always commits a revision, even
    with no changes.
    """
    check_fence(batch.fence, fence_mark)
    held = all(compare_holds(c, lookup(c.key)) for c in batch.compares)
    compared: tuple[KeyState, ...] = ()
    if not held:
        compared = tuple(_state(c.key, lookup(c.key)) for c in batch.compares)
    ops = batch.success if held else batch.failure
    revision = head + 1
    provenance = Provenance(
        agent_id=batch.agent_id,
        session_id=batch.session_id,
        request_id=batch.request_id,
        fence=batch.fence,
        time_ms=now_ms,
    )
    changes: list[Change] = []
    results: list[OpResult] = []
    ended: list[str] = []
    for op in ops:
        if isinstance(op, DeleteSessionEntries):
            ended.append(op.session_id)
            changes.extend(_unbind(op.session_id, lookup, session_keys))
            continue
        if isinstance(op, Put) and op.session_id and session_ended(op.session_id):
            raise SessionNotFound(op.session_id)
        change, result = _apply(op, lookup, revision, provenance)
        results.append(result)
        if change is not None:
            changes.append(change)
    if not changes and batch.coordination is None:
        return Plan(held, None, tuple(results), compared)
    added_entries, added_bytes = quotas.usage_delta(changes)
    if quota is not quotas.UNLIMITED:
        quotas.check_write(
            quota,
            entries=entries,
            tenant_bytes=tenant_bytes,
            added_entries=added_entries,
            added_bytes=added_bytes,
        )
    event = Event(revision, now_ms, provenance, tuple(changes), batch.coordination)
    return Plan(held, event, tuple(results), compared, tuple(ended))


def _unbind(session_id: str, lookup: Lookup, session_keys: SessionKeys) -> list[Change]:
    """Deletes of every entry still bound to the session, in key order."""
    changes = []
    for key in sorted(session_keys(session_id)):
        entry = lookup(key)
        if entry is not None and entry.session_id == session_id:
            changes.append(Change(ChangeType.DELETE, key, None, entry))
    return changes


def _state(key: str, entry: Entry | None) -> KeyState:
    if entry is None:
        return KeyState(key, 0, 0)
    return KeyState(key, entry.version, entry.mod_revision)


def _apply(
    op: Put | AppendChild | Delete, lookup: Lookup, revision: int, provenance: Provenance
) -> tuple[Change | None, OpResult]:
    if isinstance(op, Put | AppendChild):
        key = op.key if isinstance(op, Put) else child_key(op.parent, revision)
        previous = lookup(key)
        session = op.session_id if isinstance(op, Put) else ""
        entry = Entry(
            key=key,
            data=op.data,
            content_type=op.content_type,
            version=previous.version + 1 if previous else 1,
            create_revision=previous.create_revision if previous else revision,
            mod_revision=revision,
            expires_ms=provenance.time_ms + op.ttl_ms if op.ttl_ms else 0,
            session_id=session,
            provenance=provenance,
        )
        change = Change(ChangeType.PUT, key, entry, previous)
        return change, OpResult(key, entry.version, entry.create_revision)
    previous = lookup(op.key)
    if previous is None:
        return None, OpResult(op.key, 0, 0)
    change = Change(ChangeType.DELETE, op.key, None, previous)
    return change, OpResult(op.key, previous.version, previous.create_revision)
