"""One subscriber's stream: snapshot, synced, then every event after it.

The stream is a cursor over the conversation's log: the last revision the
subscriber was sent (filtered-out events count as sent). It reads from the
hub's in-memory feed while it keeps up and from the log when it does not; it
is ended with SlowSubscriber when, once caught up, it falls more than
`max_lag` revisions behind (or a write to it stalls), and carries that
revision so the client resumes exactly there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from blackboard_server.domain import history, limits
from blackboard_server.domain.errors import (
    ConversationNotFound,
    RevisionCompacted,
    ShuttingDown,
    SlowSubscriber,
)
from blackboard_server.domain.model import ConversationRef, Entry, Event
from blackboard_server.metrics import Metrics
from blackboard_server.ports import StateStore
from blackboard_server.services.blackboard import BlackboardService, Caller
from blackboard_server.services.hub import Encoder, Feed, Hub


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    prefix: str = ""
    start_revision: int = 0
    no_reset: bool = False
    with_previous: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    entries: tuple[Entry, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Synced:
    revision: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    events: tuple[Event, ...]
    # The wire encoding of each event when it is sent whole, else None.
    wire: tuple[bytes | None, ...]
    # The whole stream message, when every event is sent whole (shared between streams).
    message: bytes | None = None

    @property
    def last_revision(self) -> int:
        return self.events[-1].revision


@dataclass(frozen=True, slots=True)
class Progress:
    revision: int


@dataclass(frozen=True, slots=True)
class Reset:
    requested_revision: int
    compact_revision: int


StreamItem = SnapshotChunk | Synced | EventBatch | Progress | Reset


def resume_point(item: StreamItem, last: int) -> int:
    """The revision a client that received `item` has seen everything up to."""
    if isinstance(item, EventBatch):
        return item.last_revision
    if isinstance(item, Synced | Progress):
        return max(last, item.revision)
    if isinstance(item, Reset):
        return -1
    return last


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_lag: int
    batch: int
    snapshot_chunk: int
    progress_interval_s: float


class Subscriptions:
    def __init__(
        self,
        store: StateStore,
        hub: Hub,
        blackboard: BlackboardService,
        encoder: Encoder,
        batch_encoder: Callable[[Sequence[bytes | None]], bytes],
        limits_: limits.Limits,
        stream: StreamLimits,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._hub = hub
        self._blackboard = blackboard
        self._encode = encoder
        self._encode_batch = batch_encoder
        self._limits = limits_
        self._stream = stream

    async def stream(
        self, caller: Caller, conversation_id: str, options: SubscribeOptions
    ) -> AsyncIterator[StreamItem]:
        ref = caller.conversation(conversation_id)
        limits.prefix(options.prefix, self._limits)
        limits.non_negative(options.start_revision, "start_revision")
        async with self._hub.attach(ref) as feed:
            if options.start_revision:
                cursor = options.start_revision - 1
                _, compact = await self._store.head(ref)
                if cursor < compact:
                    if options.no_reset:
                        raise RevisionCompacted(options.start_revision, compact)
                    yield Reset(options.start_revision, compact)
                    cursor = -1
            else:
                cursor = -1
            while True:
                if cursor < 0:
                    async for chunk in self._snapshot(ref, options.prefix):
                        yield chunk
                        cursor = chunk.revision
                    yield Synced(cursor)
                try:
                    async for item in self._follow(ref, feed, cursor, options):
                        if isinstance(item, EventBatch):
                            cursor = item.last_revision
                        yield item
                except RevisionCompacted as compacted:
                    if options.no_reset:
                        raise
                    yield Reset(cursor + 1, compacted.compact_revision)
                    cursor = -1

    async def _snapshot(self, ref: ConversationRef, prefix: str) -> AsyncIterator[SnapshotChunk]:
        size = self._stream.snapshot_chunk
        page = await self._blackboard.range_at(ref, prefix, "", size, 0)
        revision = page.revision
        yield SnapshotChunk(page.entries, revision)
        while page.more and page.entries:
            page = await self._blackboard.range_at(
                ref, prefix, page.entries[-1].key, size, revision
            )
            yield SnapshotChunk(page.entries, revision)

    async def _follow(
        self, ref: ConversationRef, feed: Feed, cursor: int, options: SubscribeOptions
    ) -> AsyncIterator[EventBatch | Progress]:
        """Everything after `cursor`, in order; the generator's caller tracks the cursor."""
        quiet_since = time.monotonic()
        interval = self._stream.progress_interval_s
        live = False  # caught up with the head at least once
        while True:
            if feed.gone:
                raise ConversationNotFound(ref.id)
            if feed.closing:
                raise ShuttingDown(cursor)
            lag = feed.head - cursor
            live = live or lag <= 0
            # A resuming subscriber may start far behind and catch up from the log;
            # one that was live and then fell this far behind is not keeping up.
            if live and lag > self._stream.max_lag:
                raise SlowSubscriber(cursor, lag)
            events, wire = await self._pending(ref, feed, cursor)
            if events:
                batch = self._select(feed, events, wire, options)
                cursor = events[-1].revision
                if batch is not None:
                    yield batch
                    self._delivered(batch, lag)  # the caller wrote it before asking for more
                    quiet_since = time.monotonic()
                    if feed.head > cursor:
                        await feed.turn()  # behind the streams waiting for this wake-up
                    continue
            if time.monotonic() - quiet_since >= interval:
                yield Progress(max(cursor, feed.head))
                quiet_since = time.monotonic()
            if not events:
                await feed.wait(cursor)

    def _delivered(self, batch: EventBatch, lag: int) -> None:
        self._metrics.subscriber_lag.observe(max(lag, 0))
        age_ms = time.time_ns() // 1_000_000 - batch.events[0].time_ms
        self._metrics.delivery_lag.observe(max(age_ms, 0) / 1000)

    async def _pending(
        self, ref: ConversationRef, feed: Feed, cursor: int
    ) -> tuple[list[Event], list[bytes] | None]:
        held = feed.since(cursor, self._stream.batch)
        if held is not None:
            return held
        # Behind what the feed keeps in memory: read the log (raises RevisionCompacted).
        events, _ = await self._store.events(ref, cursor + 1, feed.head, self._stream.batch)
        return list(events), None

    def _select(
        self, feed: Feed, events: list[Event], wire: list[bytes] | None, options: SubscribeOptions
    ) -> EventBatch | None:
        chosen: list[Event] = []
        encoded: list[bytes | None] = []
        for i, event in enumerate(events):
            selected = history.select_changes(event, options.prefix)
            if selected is None:
                continue
            chosen.append(selected)
            whole = selected is event and not options.with_previous
            if whole:
                encoded.append(wire[i] if wire is not None else self._encode(event))
            else:
                encoded.append(None)
        if not chosen:
            return None
        if len(chosen) < len(events) or None in encoded:
            return EventBatch(tuple(chosen), tuple(encoded))
        # Subscribers woken together usually ask for the same range: encode it once.
        span = (events[0].revision, events[-1].revision)
        message = feed.encoded_batch(span, lambda: self._encode_batch(encoded))
        return EventBatch(tuple(chosen), tuple(encoded), message)
