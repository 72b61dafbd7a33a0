"""The small interfaces the services are written against.

The memory adapters (embedded mode) are the executable specification; the
Redis adapter passes the same contract suite (tests/contract).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from blackboard_server.domain.coordination import Census, Holder, SessionInfo
from blackboard_server.domain.model import (
    CommitResult,
    Conversation,
    ConversationRef,
    Event,
    FenceKind,
    Snapshot,
    WriteBatch,
)
from blackboard_server.domain.quota import UNLIMITED, StoreQuota, Usage

# Called with a conversation and, when the notifier has it, the committed event.
# None means "something changed (or the conversation went away): read the log".
Listener = Callable[[ConversationRef, Event | None], None]


class Clock(Protocol):
    def now_ms(self) -> int: ...


class StateStore(Protocol):
    """Conversations, entries and the per-conversation change log."""

    async def create_conversation(
        self,
        ref: ConversationRef,
        metadata: dict[str, str],
        idle_ttl_ms: int,
        now_ms: int,
        *,
        max_conversations: int = 0,
    ) -> Conversation:
        """Raises ConversationExists; QuotaExceeded if the tenant has max_conversations (0:
        unlimited) already, counted in the same atomic step as the create."""
        ...

    async def usage(self, tenant: str) -> Usage:
        """The tenant's conversations and bytes stored (domain/quota.py)."""
        ...

    async def get_conversation(self, ref: ConversationRef) -> Conversation:
        """Raises ConversationNotFound."""
        ...

    async def list_conversations(
        self, tenant: str, after: str, limit: int
    ) -> tuple[list[Conversation], bool]:
        """A page of the tenant's conversations after `after`, by id; and whether more follow."""
        ...

    async def delete_conversation(self, ref: ConversationRef) -> None:
        """Deletes the conversation, its entries, its log and its grants.
        Raises ConversationNotFound."""
        ...

    async def grants(self, ref: ConversationRef) -> dict[str, int]:
        """The roles (domain.auth.Role values) granted on the conversation, by subject.
        Raises ConversationNotFound."""
        ...

    async def set_grant(self, ref: ConversationRef, subject: str, role: int) -> bool:
        """Grants `role` to `subject`, replacing its grant; role 0 revokes. Whether the
        subject had a grant before. Raises ConversationNotFound."""
        ...

    async def commit(
        self,
        ref: ConversationRef,
        batch: WriteBatch,
        fingerprint: str,
        now_ms: int,
        quota: StoreQuota = UNLIMITED,
    ) -> CommitResult:
        """Applies `batch` atomically as at most one new revision.

        A batch whose request id was committed within the dedupe window returns
        the stored result with replayed=True (RequestIdReused if `fingerprint`
        differs). Raises ConversationNotFound, Fenced, and QuotaExceeded when
        the write would grow usage past `quota` (domain/quota.py::check_write).
        """
        ...

    async def read(
        self, ref: ConversationRef, prefix: str, after: str, limit: int, *, exact: bool = False
    ) -> Snapshot:
        """Entries at the head: the key `prefix` if exact, else the keys under it after `after`."""
        ...

    async def events(
        self, ref: ConversationRef, start: int, end: int, limit: int
    ) -> tuple[Sequence[Event], int]:
        """Events with start <= revision <= end (at most `limit`), and the compact revision.

        Raises RevisionCompacted when start <= the compact revision.
        """
        ...

    async def head(self, ref: ConversationRef) -> tuple[int, int]:
        """(head revision, compact revision). Raises ConversationNotFound."""
        ...

    async def expire_due(self, now_ms: int, limit: int) -> int:
        """Deletes up to `limit` entries whose TTL has passed, one event per conversation."""
        ...

    async def expire_idle(self, now_ms: int, limit: int) -> int:
        """Deletes, as DeleteConversation does, up to `limit` conversations that have an
        idle TTL and saw no committed write for that long; returns how many."""
        ...

    def listen(self, listener: Listener) -> None:
        """Registers the listener for commit notifications."""
        ...

    async def watch(self, ref: ConversationRef) -> None:
        """Start delivering notifications of `ref` to the listener."""
        ...

    async def unwatch(self, ref: ConversationRef) -> None: ...

    async def aclose(self) -> None: ...


class Sessions(Protocol):
    async def session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        """Raises SessionNotFound."""
        ...


class Coordinator(Protocol):
    """Sessions, locks and elections of conversations (etcd, or memory when embedded).

    Locks and elections are one mechanism: claims queued by token, the first
    holds. A claim belongs to a session and goes when the session ends. Tokens
    only grow.
    """

    async def open_session(
        self, ref: ConversationRef, agent_id: str, ttl_ms: int, *, max_sessions: int = 0
    ) -> SessionInfo:
        """QuotaExceeded when the tenant has max_sessions live sessions already (0:
        unlimited). Counted over every replica, but not atomically with the open:
        opens racing on several replicas may pass the limit by the number racing."""
        ...

    async def keep_alive(self, ref: ConversationRef, session_id: str) -> int:
        """Renews the session; returns the TTL left in ms. Raises SessionNotFound."""
        ...

    async def close_session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        """Ends the session and drops its claims. Raises SessionNotFound."""
        ...

    async def session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        """Raises SessionNotFound."""
        ...

    async def sessions(self, ref: ConversationRef) -> list[SessionInfo]:
        """The live sessions of the conversation, by session id."""
        ...

    async def held(self, ref: ConversationRef, session_id: str) -> list[Holder]:
        """The locks and roles the session holds now."""
        ...

    async def acquire(
        self,
        ref: ConversationRef,
        kind: FenceKind,
        name: str,
        session_id: str,
        value: bytes,
        wait_ms: int,
    ) -> Holder:
        """Claims the lock (or campaigns for the role) and returns once it holds.

        wait_ms == 0 tries once: LockHeld if another session holds it. Otherwise
        waits up to wait_ms: WaitExpired. Either way the claim is withdrawn on
        failure. A session that already holds it gets its holder back.
        """
        ...

    async def release(
        self, ref: ConversationRef, kind: FenceKind, name: str, session_id: str, token: int
    ) -> Holder:
        """Releases (resigns); NotHolder unless the session holds it with that token."""
        ...

    async def proclaim(
        self, ref: ConversationRef, name: str, session_id: str, token: int, value: bytes
    ) -> Holder:
        """Sets the leader's value; NotHolder unless the session leads with that token."""
        ...

    async def holder(self, ref: ConversationRef, kind: FenceKind, name: str) -> Holder | None: ...

    def observe(
        self, ref: ConversationRef, kind: FenceKind, name: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Holder | None]]:
        """The holder now, then every change of holder or value (None: nobody)."""
        ...

    async def census(self) -> Census:
        """Counts live sessions, held locks and led roles over every tenant.

        For gauges: it reads all coordination state, so call it seldom.
        """
        ...

    def running(self) -> AbstractAsyncContextManager[object]:
        """Owns the coordinator's background work (expiry, watches, campaigns)."""
        ...

    def observations(self) -> AsyncIterator[tuple[ConversationRef, WriteBatch]]:
        """What this replica must record: expiries and changes of holder it saw.

        With several replicas each conversation's observations come out of
        exactly one of them (chosen by election); a replica that loses that
        role stops yielding them.
        """
        ...

    async def aclose(self) -> None: ...
