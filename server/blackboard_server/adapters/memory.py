"""The in-process store of embedded mode: fast, not durable, and the executable
specification every other store is tested against."""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from blackboard_server.domain import commit
from blackboard_server.domain import quota as quotas
from blackboard_server.domain.errors import (
    ConversationExists,
    ConversationNotFound,
    RequestIdReused,
    RevisionCompacted,
)
from blackboard_server.domain.model import (
    Change,
    ChangeType,
    CommitResult,
    Conversation,
    ConversationRef,
    Entry,
    Event,
    Provenance,
    Snapshot,
    WriteBatch,
)
from blackboard_server.ports import Listener

EXPIRY_AGENT = "blackboard:ttl"


@dataclass(slots=True)
class _Conversation:
    ref: ConversationRef
    metadata: dict[str, str]
    create_time_ms: int
    update_time_ms: int
    idle_ttl_ms: int
    head: int = 0
    compact: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted
    log: deque[Event] = field(default_factory=deque)
    fences: dict[str, int] = field(default_factory=dict)
    replies: dict[str, tuple[str, CommitResult, int]] = field(default_factory=dict)
    reply_expiry: deque[tuple[int, str]] = field(default_factory=deque)
    bindings: dict[str, set[str]] = field(default_factory=dict)  # session -> bound keys
    ended: dict[str, int] = field(default_factory=dict)  # session -> when its end was recorded
    bytes: int = 0  # keys and values of the live entries (domain/quota.py)
    grants: dict[str, int] = field(default_factory=dict)  # subject -> role

    def view(self) -> Conversation:
        return Conversation(
            self.ref,
            dict(self.metadata),
            self.create_time_ms,
            self.update_time_ms,
            self.idle_ttl_ms,
            self.head,
            self.compact,
        )


class MemoryStore:
    def __init__(self, *, retention: int = 10_000, dedupe_window_ms: int = 24 * 3600 * 1000):
        self._retention = retention
        self._dedupe_window_ms = dedupe_window_ms
        self._conversations: dict[ConversationRef, _Conversation] = {}
        self._expiries: list[tuple[int, ConversationRef, str]] = []  # heap
        self._listeners: list[Listener] = []
        self._usage: dict[str, quotas.Usage] = {}  # tenant -> its conversations and bytes
        self._idle: set[ConversationRef] = set()  # the conversations with an idle TTL

    # --- conversations --------------------------------------------------------

    async def create_conversation(
        self,
        ref: ConversationRef,
        metadata: dict[str, str],
        idle_ttl_ms: int,
        now_ms: int,
        *,
        max_conversations: int = 0,
    ) -> Conversation:
        if ref in self._conversations:
            raise ConversationExists(ref.id)
        usage = self._usage.setdefault(ref.tenant, quotas.Usage())
        quotas.check_count("conversations", max_conversations, usage.conversations)
        conv = _Conversation(ref, dict(metadata), now_ms, now_ms, idle_ttl_ms)
        self._conversations[ref] = conv
        usage.conversations += 1
        if idle_ttl_ms > 0:
            self._idle.add(ref)
        return conv.view()

    async def usage(self, tenant: str) -> quotas.Usage:
        usage = self._usage.get(tenant, quotas.Usage())
        return quotas.Usage(usage.conversations, usage.bytes)

    async def get_conversation(self, ref: ConversationRef) -> Conversation:
        return self._get(ref).view()

    async def list_conversations(
        self, tenant: str, after: str, limit: int
    ) -> tuple[list[Conversation], bool]:
        ids = sorted(r.id for r in self._conversations if r.tenant == tenant and r.id > after)
        page = [self._conversations[ConversationRef(tenant, i)].view() for i in ids[:limit]]
        return page, len(ids) > limit

    async def delete_conversation(self, ref: ConversationRef) -> None:
        conv = self._get(ref)
        del self._conversations[ref]
        self._idle.discard(ref)
        usage = self._usage[ref.tenant]
        usage.conversations -= 1
        usage.bytes -= conv.bytes
        self._notify(ref, None)

    async def grants(self, ref: ConversationRef) -> dict[str, int]:
        return dict(self._get(ref).grants)

    async def set_grant(self, ref: ConversationRef, subject: str, role: int) -> bool:
        grants = self._get(ref).grants
        had = subject in grants
        if role:
            grants[subject] = role
        else:
            grants.pop(subject, None)
        return had

    def _get(self, ref: ConversationRef) -> _Conversation:
        conv = self._conversations.get(ref)
        if conv is None:
            raise ConversationNotFound(ref.id)
        return conv

    # --- writes ---------------------------------------------------------------

    async def commit(
        self,
        ref: ConversationRef,
        batch: WriteBatch,
        fingerprint: str,
        now_ms: int,
        quota: quotas.StoreQuota = quotas.UNLIMITED,
    ) -> CommitResult:
        conv = self._get(ref)
        self._forget_replies(conv, now_ms)
        if batch.request_id and batch.request_id in conv.replies:
            stored_fingerprint, result, _ = conv.replies[batch.request_id]
            if stored_fingerprint != fingerprint:
                raise RequestIdReused(batch.request_id)
            return result
        fence_mark = conv.fences.get(batch.fence.mark, 0) if batch.fence else 0
        plan = commit.plan(
            batch,
            head=conv.head,
            lookup=conv.entries.get,
            fence_mark=fence_mark,
            now_ms=now_ms,
            session_keys=lambda session: conv.bindings.get(session, ()),
            session_ended=conv.ended.__contains__,
            quota=quota,
            entries=len(conv.entries),
            tenant_bytes=self._usage[ref.tenant].bytes,
        )
        if plan.event is None:
            return CommitResult(plan.succeeded, conv.head, plan.results, plan.compared)
        for mark, token in batch.marks:
            conv.fences[mark] = max(conv.fences.get(mark, 0), token)
        for session in plan.ended_sessions:
            conv.ended[session] = now_ms
        self._forget_ended(conv, now_ms)
        self._append(conv, plan.event)
        result = CommitResult(plan.succeeded, plan.event.revision, plan.results, plan.compared)
        if batch.request_id:
            conv.replies[batch.request_id] = (fingerprint, _replayed(result), now_ms)
            conv.reply_expiry.append((now_ms + self._dedupe_window_ms, batch.request_id))
        return result

    def _append(self, conv: _Conversation, event: Event) -> None:
        added = 0
        for change in event.changes:
            # From the entry stored now, not change.previous: an event may change a key twice.
            current = conv.entries.get(change.key)
            added -= quotas.entry_size(current) if current is not None else 0
            added += quotas.entry_size(change.entry) if change.entry is not None else 0
            self._rebind(conv, change.key, change.entry)
            if change.entry is not None:
                # Not `previous is None`: an event may change one key twice (a Put of
                # the key an AppendChild of the same batch creates).
                if change.key not in conv.entries:
                    bisect.insort(conv.keys, change.key)
                conv.entries[change.key] = change.entry
                if change.entry.expires_ms:
                    heapq.heappush(self._expiries, (change.entry.expires_ms, conv.ref, change.key))
            else:
                del conv.entries[change.key]
                del conv.keys[bisect.bisect_left(conv.keys, change.key)]
        conv.bytes += added
        self._usage[conv.ref.tenant].bytes += added
        conv.head = event.revision
        conv.update_time_ms = event.time_ms
        conv.log.append(event)
        while len(conv.log) > self._retention:
            conv.compact = conv.log.popleft().revision
        self._notify(conv.ref, event)

    @staticmethod
    def _rebind(conv: _Conversation, key: str, entry: Entry | None) -> None:
        """Keeps the session -> keys index in step with the entry now at `key`."""
        current = conv.entries.get(key)
        if current is not None and current.session_id:
            bound = conv.bindings[current.session_id]
            bound.discard(key)
            if not bound:
                del conv.bindings[current.session_id]
        if entry is not None and entry.session_id:
            conv.bindings.setdefault(entry.session_id, set()).add(key)

    def _forget_ended(self, conv: _Conversation, now_ms: int) -> None:
        """Ended sessions are remembered for the dedupe window, like request ids."""
        cutoff = now_ms - self._dedupe_window_ms
        for session in [s for s, at in conv.ended.items() if at <= cutoff]:
            del conv.ended[session]

    def _forget_replies(self, conv: _Conversation, now_ms: int) -> None:
        while conv.reply_expiry and conv.reply_expiry[0][0] <= now_ms:
            _, request_id = conv.reply_expiry.popleft()
            conv.replies.pop(request_id, None)

    async def expire_idle(self, now_ms: int, limit: int) -> int:
        convs = (self._conversations[ref] for ref in self._idle)
        idle = [c.ref for c in convs if c.update_time_ms + c.idle_ttl_ms <= now_ms][:limit]
        for ref in idle:
            await self.delete_conversation(ref)
        return len(idle)

    async def expire_due(self, now_ms: int, limit: int) -> int:
        due: dict[ConversationRef, set[str]] = {}
        count = 0
        while self._expiries and self._expiries[0][0] <= now_ms and count < limit:
            expires_ms, ref, key = heapq.heappop(self._expiries)
            conv = self._conversations.get(ref)
            entry = conv.entries.get(key) if conv else None
            # The heap holds a key twice when it was written twice with the same expiry.
            if entry is not None and entry.expires_ms == expires_ms and key not in due.get(ref, ()):
                due.setdefault(ref, set()).add(key)
                count += 1
        for ref, keys in due.items():
            conv = self._conversations[ref]
            provenance = Provenance(agent_id=EXPIRY_AGENT, time_ms=now_ms)
            changes = tuple(
                Change(ChangeType.DELETE, k, None, conv.entries[k]) for k in sorted(keys)
            )
            self._append(conv, Event(conv.head + 1, now_ms, provenance, changes))
        return count

    # --- reads ----------------------------------------------------------------

    async def read(
        self, ref: ConversationRef, prefix: str, after: str, limit: int, *, exact: bool = False
    ) -> Snapshot:
        conv = self._get(ref)
        if exact:
            entry = conv.entries.get(prefix)
            found = (entry,) if entry is not None else ()
            return Snapshot(found, conv.head, conv.compact)
        start = (
            bisect.bisect_right(conv.keys, after)
            if after >= prefix
            else (bisect.bisect_left(conv.keys, prefix))
        )
        page: list[Entry] = []
        more = False
        for key in conv.keys[start:]:
            if not key.startswith(prefix):
                break
            if len(page) == limit:
                more = True
                break
            page.append(conv.entries[key])
        return Snapshot(tuple(page), conv.head, conv.compact, more)

    async def events(
        self, ref: ConversationRef, start: int, end: int, limit: int
    ) -> tuple[Sequence[Event], int]:
        conv = self._get(ref)
        if start <= conv.compact:
            raise RevisionCompacted(start, conv.compact)
        first = conv.compact + 1
        stop = min(end, conv.head, start + limit - 1)
        return [conv.log[r - first] for r in range(start, stop + 1)], conv.compact

    async def head(self, ref: ConversationRef) -> tuple[int, int]:
        conv = self._get(ref)
        return conv.head, conv.compact

    # --- notifications --------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def watch(self, ref: ConversationRef) -> None:
        """Every commit notifies in process; there is nothing to subscribe to."""

    async def unwatch(self, ref: ConversationRef) -> None:
        """See watch."""

    def _notify(self, ref: ConversationRef, event: Event | None) -> None:
        for listener in self._listeners:
            listener(ref, event)

    async def aclose(self) -> None:
        self._conversations.clear()


def _replayed(result: CommitResult) -> CommitResult:
    return CommitResult(
        result.succeeded, result.revision, result.results, result.compared, replayed=True
    )


__all__ = ["EXPIRY_AGENT", "MemoryStore"]
