"""Use cases of the blackboard: conversations, reads and writes.

Validation happens here, before anything reaches a store; the store applies a
write as one atomic step. Reads at a past revision undo the retained events
after it (domain/history.py), the same way for every store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from blackboard_server.domain import history, limits, merge_patch
from blackboard_server.domain.commit import compare_holds
from blackboard_server.domain.errors import (
    ConditionFailed,
    InvalidArgument,
    KeyNotFound,
    RetriesExhausted,
)
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    JSON,
    AppendChild,
    CommitResult,
    Compare,
    Conversation,
    ConversationRef,
    Delete,
    Entry,
    Event,
    Fence,
    Operator,
    OpResult,
    Put,
    Snapshot,
    Target,
    WriteBatch,
)
from blackboard_server.domain.quota import Quota
from blackboard_server.ports import Clock, Sessions, StateStore
from blackboard_server.services.quotas import QuotaBook

EVENTS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant and agent the request acts for."""

    tenant: str = "default"
    agent_id: str = ""
    session_id: str = ""

    def conversation(self, conversation_id: str) -> ConversationRef:
        return ConversationRef(self.tenant, limits.conversation_id(conversation_id))


@dataclass(frozen=True, slots=True)
class Expect:
    """What a single-key write expects: absent, a version, or a mod revision."""

    absent: bool = False
    version: int | None = None
    mod_revision: int | None = None

    def compares(self, key: str) -> tuple[Compare, ...]:
        if self.absent:
            return (Compare(key, Target.VERSION, Operator.EQUAL, 0),)
        if self.version is not None:
            return (Compare(key, Target.VERSION, Operator.EQUAL, self.version),)
        if self.mod_revision is not None:
            return (Compare(key, Target.MOD_REVISION, Operator.EQUAL, self.mod_revision),)
        return ()


NO_EXPECTATION = Expect()


@dataclass(frozen=True, slots=True)
class Written:
    revision: int
    result: OpResult
    replayed: bool


class BlackboardService:
    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        limits_: limits.Limits,
        *,
        patch_retries: int = 32,
        sessions: Sessions | None = None,
        quotas: QuotaBook | None = None,
    ) -> None:
        self._quotas = quotas or QuotaBook(Quota())
        self._store = store
        self._clock = clock
        self._limits = limits_
        self._patch_retries = patch_retries
        self._sessions = sessions

    # --- conversations --------------------------------------------------------

    async def create_conversation(
        self, caller: Caller, conversation_id: str, metadata: dict[str, str], idle_ttl_ms: int
    ) -> Conversation:
        ref = caller.conversation(conversation_id)
        limits.metadata(metadata, self._limits)
        limits.non_negative(idle_ttl_ms, "idle_ttl_ms")
        return await self._store.create_conversation(
            ref,
            metadata,
            idle_ttl_ms,
            self._clock.now_ms(),
            max_conversations=self._quotas.of(caller.tenant).conversations,
        )

    async def get_conversation(self, caller: Caller, conversation_id: str) -> Conversation:
        return await self._store.get_conversation(caller.conversation(conversation_id))

    async def list_conversations(
        self, caller: Caller, page_size: int, page_token: str
    ) -> tuple[list[Conversation], str]:
        size = limits.page_size(page_size, self._limits)
        _, after = history.parse_page_token(page_token)
        page, more = await self._store.list_conversations(caller.tenant, after, size)
        token = history.page_token(0, page[-1].ref.id) if more and page else ""
        return page, token

    async def delete_conversation(self, caller: Caller, conversation_id: str) -> None:
        await self._store.delete_conversation(caller.conversation(conversation_id))

    # --- writes ---------------------------------------------------------------

    async def put(
        self,
        caller: Caller,
        conversation_id: str,
        op: Put,
        expect: Expect = NO_EXPECTATION,
        request_id: str = "",
        fence: Fence | None = None,
    ) -> Written:
        if op.session_id:
            # The store refuses sessions it saw end; this refuses ones that never began.
            if self._sessions is None:
                raise InvalidArgument("session_id", "this server has no sessions")
            await self._sessions.session(caller.conversation(conversation_id), op.session_id)
        batch = self._batch(caller, expect.compares(op.key), (op,), request_id, fence)
        return _single(await self._commit(caller, conversation_id, batch))

    async def append(
        self,
        caller: Caller,
        conversation_id: str,
        op: AppendChild,
        request_id: str = "",
        fence: Fence | None = None,
    ) -> Written:
        batch = self._batch(caller, (), (op,), request_id, fence)
        return _single(await self._commit(caller, conversation_id, batch))

    async def delete(
        self,
        caller: Caller,
        conversation_id: str,
        key: str,
        expect: Expect = NO_EXPECTATION,
        request_id: str = "",
        fence: Fence | None = None,
    ) -> Written:
        batch = self._batch(caller, expect.compares(key), (Delete(key),), request_id, fence)
        written = _single(await self._commit(caller, conversation_id, batch))
        if written.result.version == 0:
            raise KeyNotFound(key)
        return written

    async def txn(
        self,
        caller: Caller,
        conversation_id: str,
        compares: tuple[Compare, ...],
        success: tuple[Put | Delete, ...],
        failure: tuple[Put | Delete, ...],
        request_id: str = "",
        fence: Fence | None = None,
    ) -> CommitResult:
        batch = WriteBatch(
            compares, success, failure, request_id, fence, caller.agent_id, caller.session_id
        )
        ref = caller.conversation(conversation_id)
        limits.write_batch(batch, self._limits)
        quota = self._quotas.of(caller.tenant).store
        return await self._store.commit(ref, batch, fingerprint(batch), self._clock.now_ms(), quota)

    async def patch(
        self,
        caller: Caller,
        conversation_id: str,
        key: str,
        raw_patch: bytes,
        expect: Expect = NO_EXPECTATION,
        request_id: str = "",
        fence: Fence | None = None,
    ) -> tuple[Written, bytes]:
        """Read, merge, and write back only if nothing changed in between; retry if it did.

        The request's fingerprint is the patch itself, so a retried call with the
        same request id replays even though the document it merged into moved on.
        """
        ref = caller.conversation(conversation_id)
        limits.key(key, self._limits)
        limits.value_size(raw_patch, self._limits, "merge_patch")
        patch = merge_patch.parse_patch(raw_patch)
        digest = fingerprint(
            self._batch(caller, expect.compares(key), (Put(key, raw_patch),), request_id, fence)
        )
        for _ in range(self._patch_retries):
            current = await self._current(ref, key)
            user_compares = expect.compares(key)
            if user_compares and not _holds(user_compares, current):
                raise ConditionFailed(key, *_state(current))
            data = merge_patch.apply(current, key, patch)
            limits.value_size(data, self._limits)
            unchanged = Compare(
                key, Target.MOD_REVISION, Operator.EQUAL, current.mod_revision if current else 0
            )
            batch = self._batch(caller, (unchanged,), (Put(key, data, JSON),), request_id, fence)
            quota = self._quotas.of(caller.tenant).store
            result = await self._store.commit(ref, batch, digest, self._clock.now_ms(), quota)
            if result.replayed:
                replayed = await self.get(caller, conversation_id, key, result.revision)
                return Written(result.revision, result.results[0], True), replayed[0].data
            if result.succeeded:
                return Written(result.revision, result.results[0], False), data
        raise RetriesExhausted(f"patch of {key!r} lost {self._patch_retries} races in a row")

    def _batch(
        self,
        caller: Caller,
        compares: tuple[Compare, ...],
        ops: tuple[Put | Delete | AppendChild, ...],
        request_id: str,
        fence: Fence | None,
    ) -> WriteBatch:
        return WriteBatch(compares, ops, (), request_id, fence, caller.agent_id, caller.session_id)

    async def _commit(
        self, caller: Caller, conversation_id: str, batch: WriteBatch
    ) -> CommitResult:
        ref = caller.conversation(conversation_id)
        limits.write_batch(batch, self._limits, single=True)
        # Stores compare fingerprints only to tell a retry from a reused request id.
        digest = fingerprint(batch) if batch.request_id else ""
        quota = self._quotas.of(caller.tenant).store
        result = await self._store.commit(ref, batch, digest, self._clock.now_ms(), quota)
        if not result.succeeded:
            state = result.compared[0]
            raise ConditionFailed(state.key, state.version, state.mod_revision)
        return result

    async def _current(self, ref: ConversationRef, key: str) -> Entry | None:
        snapshot = await self._store.read(ref, key, "", 1, exact=True)
        return snapshot.entries[0] if snapshot.entries else None

    # --- reads ----------------------------------------------------------------

    async def get(
        self, caller: Caller, conversation_id: str, key: str, revision: int = 0
    ) -> tuple[Entry, int]:
        ref = caller.conversation(conversation_id)
        limits.key(key, self._limits)
        limits.non_negative(revision, "revision")
        snapshot = await self._store.read(ref, key, "", 1, exact=True)
        entry = snapshot.entries[0] if snapshot.entries else None
        if revision and revision != snapshot.revision:
            history.check_retained(revision, snapshot.compact_revision, snapshot.revision)
            events = await self._events(ref, revision + 1, snapshot.revision)
            entry = history.entry_at(key, entry, events)
        if entry is None:
            raise KeyNotFound(key)
        return entry, revision or snapshot.revision

    async def range(
        self,
        caller: Caller,
        conversation_id: str,
        prefix: str,
        revision: int = 0,
        page_size: int = 0,
        page_token: str = "",
        keys_only: bool = False,
    ) -> tuple[Snapshot, str]:
        """A page of entries under `prefix` at one revision, and the next page's token."""
        ref = caller.conversation(conversation_id)
        limits.prefix(prefix, self._limits)
        limits.non_negative(revision, "revision")
        size = limits.page_size(page_size, self._limits)
        token_revision, after = history.parse_page_token(page_token)
        if token_revision and revision and token_revision != revision:
            raise InvalidArgument("page_token", "belongs to a read at another revision")
        revision = revision or token_revision
        page = await self.range_at(ref, prefix, after, size, revision)
        token = ""
        if page.more and page.entries:
            token = history.page_token(page.revision, page.entries[-1].key)
        return page, token

    async def range_at(
        self, ref: ConversationRef, prefix: str, after: str, size: int, revision: int
    ) -> Snapshot:
        if not revision:
            return await self._store.read(ref, prefix, after, size)
        head, compact = await self._store.head(ref)
        history.check_retained(revision, compact, head)
        events = list(await self._events(ref, revision + 1, head))
        while True:
            touched = len(history.undone(events, prefix, exact=False))
            current = await self._store.read(ref, prefix, after, size + touched)
            if current.revision > head:
                events.extend(await self._events(ref, head + 1, current.revision))
                head = current.revision
                if len(history.undone(events, prefix, exact=False)) > touched:
                    continue  # more keys moved while we read: read a larger page
            return history.range_at(current, events, prefix, after, size, revision)

    async def history(
        self,
        caller: Caller,
        conversation_id: str,
        selector: str,
        exact: bool,
        from_revision: int,
        to_revision: int,
        page_size: int,
    ) -> tuple[list[Event], int, int]:
        """Events touching the selection; the next page's start (0: done); the compact revision."""
        ref = caller.conversation(conversation_id)
        if exact:
            limits.key(selector, self._limits)
        else:
            limits.prefix(selector, self._limits)
        limits.non_negative(from_revision, "from_revision")
        limits.non_negative(to_revision, "to_revision")
        size = limits.page_size(page_size, self._limits)
        head, compact = await self._store.head(ref)
        start = from_revision or compact + 1
        end = min(to_revision or head, head)
        if start > end:
            return [], 0, compact
        events, compact = await self._store.events(ref, start, end, size)
        selected = [
            e
            for e in (history.select_changes(ev, selector, exact=exact) for ev in events)
            if e is not None
        ]
        last = events[-1].revision if events else end
        return selected, (last + 1 if last < end else 0), compact

    async def _events(self, ref: ConversationRef, start: int, end: int) -> Sequence[Event]:
        collected: list[Event] = []
        while start <= end:
            page, _ = await self._store.events(ref, start, end, EVENTS_PAGE)
            if not page:
                break
            collected.extend(page)
            start = page[-1].revision + 1
        return collected


def _single(result: CommitResult) -> Written:
    return Written(result.revision, result.results[0], result.replayed)


def _holds(compares: tuple[Compare, ...], entry: Entry | None) -> bool:
    return all(compare_holds(c, entry) for c in compares)


def _state(entry: Entry | None) -> tuple[int, int]:
    return (entry.version, entry.mod_revision) if entry else (0, 0)
