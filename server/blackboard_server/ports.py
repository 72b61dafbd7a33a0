"""The small interfaces the services are written against.

The memory adapters (embedded mode) are the executable specification; the
Redis adapter passes the same contract suite (tests/contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from blackboard_server.domain.model import (
    CommitResult,
    Conversation,
    ConversationRef,
    Event,
    Snapshot,
    WriteBatch,
)

# Called with a conversation and, when the notifier has it, the committed event.
# None means "something changed (or the conversation went away): read the log".
Listener = Callable[[ConversationRef, Event | None], None]


class Clock(Protocol):
    def now_ms(self) -> int: ...


class StateStore(Protocol):
    """Conversations, entries and the per-conversation change log."""

    async def create_conversation(
        self, ref: ConversationRef, metadata: dict[str, str], idle_ttl_ms: int, now_ms: int
    ) -> Conversation:
        """Raises ConversationExists."""
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
        """Deletes the conversation, its entries and its log. Raises ConversationNotFound."""
        ...

    async def commit(
        self, ref: ConversationRef, batch: WriteBatch, fingerprint: str, now_ms: int
    ) -> CommitResult:
        """Applies `batch` atomically as at most one new revision.

        A batch whose request id was committed within the dedupe window returns
        the stored result with replayed=True (RequestIdReused if `fingerprint`
        differs). Raises ConversationNotFound, Fenced.
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

    def listen(self, listener: Listener) -> None:
        """Registers the listener for commit notifications."""
        ...

    async def watch(self, ref: ConversationRef) -> None:
        """Start delivering notifications of `ref` to the listener."""
        ...

    async def unwatch(self, ref: ConversationRef) -> None: ...

    async def aclose(self) -> None: ...
