"""Fan-out: one feed per conversation with local subscribers.

A feed holds the conversation's most recent events in order and without gaps,
each encoded for the wire once. Subscribers do not get their own copies: each
keeps a cursor into the feed and pulls what is new when woken, so a thousand
subscribers cost one encoding per event and a wake-up each, and a slow one
costs nothing but its cursor.

Notifications are hints. A notification that does not continue the feed
(a gap after a missed message, a reconnect, a deleted conversation) wakes the
feed's pump, which reads the log, the source of truth. The pump also polls at
an interval, so even a lost notification delays an event by at most that.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from blackboard_server.domain.errors import ConversationNotFound, RevisionCompacted
from blackboard_server.domain.model import ConversationRef, Event
from blackboard_server.ports import StateStore
from blackboard_server.tasks import stop

Encoder = Callable[[Event], bytes]
PAGE = 1000
LATEST = 2**53  # an end revision past any head (Lua numbers are doubles)
BATCH_CACHE = 16  # encoded stream messages a feed keeps for subscribers at the same cursor
WAKE_CHUNK = 32  # subscribers woken per pass of the event loop, over all feeds


class Releaser:
    """Wakes subscribers WAKE_CHUNK per pass of the event loop, in the order given.

    Woken all at once, a thousand subscribers would each write a message in one
    pass of the loop, and nothing else (a new call, a Put's reply) would run
    until they all had. One releaser serves every feed of a hub, so a hundred
    conversations ticking together are spread over passes the same way.
    """

    def __init__(self) -> None:
        self._due: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    def wake(self, waiters: deque[asyncio.Future[None]]) -> None:
        """Takes every waiter from `waiters`, to be woken from the next pass on
        (so the ticks of one pass all join the same queue)."""
        self._due.extend(waiters)
        waiters.clear()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        due = self._due
        for _ in range(min(WAKE_CHUNK, len(due))):
            waiter = due.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
        self._scheduled = bool(due)
        if self._scheduled:
            asyncio.get_running_loop().call_soon(self._release)


class Feed:
    """One conversation's recent events, and the subscribers waiting on them.

    Waking is coalesced: the first event after a quiet spell wakes subscribers
    at once, later ones at most every `coalesce_s`, so under load each wake-up
    carries several events in one stream message instead of one message per
    event per subscriber. The pump's periodic tick wakes waiters too, which is
    how an idle stream learns it is time for a progress message without a
    timer of its own.
    """

    def __init__(
        self,
        ref: ConversationRef,
        head: int,
        capacity: int,
        coalesce_s: float = 0.0,
        messages_per_s: float = 0.0,
        releaser: Releaser | None = None,
    ) -> None:
        self.ref = ref
        self.head = head  # every revision up to here is known (in memory or in the log)
        self.gone = False  # the conversation was deleted
        self.closing = False  # this replica is shutting down
        self._events: deque[Event] = deque(maxlen=capacity)
        self._wire: deque[bytes] = deque(maxlen=capacity)
        self._coalesce = coalesce_s
        self._messages_per_s = messages_per_s
        self._woken_at = 0.0
        self._pending_wake: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()  # for the next wake-up
        self._releaser = releaser or Releaser()
        self.kick = asyncio.Event()  # asks the pump to read the log
        self.subscribers = 0
        self.detached = False  # the last subscriber left: its pump stops
        self._batches: dict[tuple[int, int], bytes] = {}

    def encoded_batch(self, span: tuple[int, int], encode: Callable[[], bytes]) -> bytes:
        """The stream message for the events in `span`, encoded by the first who asks."""
        message = self._batches.get(span)
        if message is None:
            if len(self._batches) >= BATCH_CACHE:
                del self._batches[next(iter(self._batches))]
            message = self._batches[span] = encode()
        return message

    def advance(self, event: Event, wire: bytes) -> bool:
        if event.revision != self.head + 1:
            return False
        self._events.append(event)
        self._wire.append(wire)
        self.head = event.revision
        self._wake()
        return True

    def restart_at(self, revision: int) -> None:
        """The log was compacted past the feed: continue from `revision`."""
        self._events.clear()
        self._wire.clear()
        self.head = revision
        self._wake()

    def end(self, *, gone: bool = False, closing: bool = False) -> None:
        self.gone = self.gone or gone
        self.closing = self.closing or closing
        self.tick()

    def _wake(self) -> None:
        if not self._waiters or self._pending_wake is not None:
            return  # nobody waits, or a wake-up is already due
        loop = asyncio.get_running_loop()
        due = self._woken_at + self.wake_interval
        if loop.time() >= due:
            self.tick()
        else:
            self._pending_wake = loop.call_at(due, self.tick)

    @property
    def wake_interval(self) -> float:
        """Seconds at least between wake-ups under load: `coalesce_s`, or longer when
        that many subscribers woken as often would take more than `messages_per_s`
        stream messages a second."""
        if not self._messages_per_s:
            return self._coalesce
        return max(self._coalesce, self.subscribers / self._messages_per_s)

    def tick(self) -> None:
        """Wakes every waiter now, in the order they began to wait (through the
        releaser: a chunk per loop pass), so under load every stream gets its turn
        before any gets two."""
        if self._pending_wake is not None:
            self._pending_wake.cancel()
            self._pending_wake = None
        if self._waiters:
            self._woken_at = asyncio.get_running_loop().time()
            self._releaser.wake(self._waiters)

    def since(self, after: int, limit: int) -> tuple[list[Event], list[bytes]] | None:
        """Events after revision `after` held in memory; None if they are older than that."""
        if after >= self.head:
            return [], []
        held = len(self._events)
        first = self.head - held + 1
        if after + 1 < first:
            return None
        # Indexed from the right: a subscriber that keeps up wants the last few of
        # thousands, and a deque walks to an index from its nearer end.
        start = after + 1 - first - held
        stop = min(start + limit, 0)
        events, wire = self._events, self._wire
        return [events[i] for i in range(start, stop)], [wire[i] for i in range(start, stop)]

    async def wait(self, after: int) -> None:
        """Returns once the head has passed `after`, the feed ended, or a tick came."""
        if self.head > after or self.gone or self.closing:
            return
        await self._queue()

    async def turn(self) -> None:
        """Waits for the next wake-up, due now if `coalesce_s` has passed since the last.

        A subscriber that has just written a message and still has events to send
        queues here instead of writing again at once: each stream gets one message
        per wake-up, the streams take turns in order, and what comes meanwhile
        goes in its next message.
        """
        waiter = self._queue()
        self._wake()
        await waiter

    def _queue(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter  # a cancelled waiter cancels only its own future


class Hub:
    def __init__(
        self,
        store: StateStore,
        encoder: Encoder,
        *,
        capacity: int,
        poll_interval_s: float,
        tick_interval_s: float,
        coalesce_s: float = 0.0,
        messages_per_s: float = 0.0,
    ) -> None:
        self._store = store
        self._encode = encoder
        self._capacity = capacity
        self._poll = poll_interval_s
        self._tick = tick_interval_s
        self._coalesce = coalesce_s
        self._messages_per_s = messages_per_s
        self._releaser = Releaser()
        self._feeds: dict[ConversationRef, Feed] = {}
        self._pumps: dict[ConversationRef, asyncio.Task[None]] = {}
        self._running_pumps: set[asyncio.Task[None]] = set()  # also those already detached
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        store.listen(self._on_notify)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Owns the pumps: they live in this task group and end with it."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                yield self
            finally:
                self.close()
                # Cancelled until done: a store call can swallow a cancel (tasks.py),
                # and the task group would wait on the pump.
                await asyncio.gather(*(stop(pump) for pump in list(self._running_pumps)))

    def close(self) -> None:
        """Ends every stream with a resumable status (the replica is draining)."""
        self._closing = True
        for feed in self._feeds.values():
            feed.end(closing=True)

    @property
    def subscribers(self) -> int:
        return sum(f.subscribers for f in self._feeds.values())

    @asynccontextmanager
    async def attach(self, ref: ConversationRef) -> AsyncIterator[Feed]:
        feed = self._feeds.get(ref)
        if feed is None:
            feed = await self._open(ref)
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(ref) is feed:
                del self._feeds[ref]
                # The flag stops the pump even if this cancellation is swallowed by its
                # poll timeout firing at the same moment (asyncio.timeout in 3.11 can).
                feed.detached = True
                pump = self._pumps.pop(ref, None)
                if pump is not None:
                    pump.cancel()

    async def _open(self, ref: ConversationRef) -> Feed:
        assert self._tasks is not None, "Hub.running() must be entered first"
        await self._store.watch(ref)
        try:
            head, _ = await self._store.head(ref)
        except BaseException:
            await self._store.unwatch(ref)
            raise
        existing = self._feeds.get(ref)
        if existing is not None:  # another subscriber opened it while we awaited
            return existing
        feed = Feed(ref, head, self._capacity, self._coalesce, self._messages_per_s, self._releaser)
        if self._closing:
            feed.end(closing=True)
        self._feeds[ref] = feed
        pump = self._tasks.create_task(self._pump(feed))
        self._pumps[ref] = pump
        self._running_pumps.add(pump)
        pump.add_done_callback(self._running_pumps.discard)
        return feed

    def _on_notify(self, ref: ConversationRef, event: Event | None) -> None:
        feed = self._feeds.get(ref)
        if feed is None:
            return
        if event is not None and event.revision <= feed.head:
            return  # already have it
        if event is not None and feed.advance(event, self._encode(event)):
            return
        feed.kick.set()

    async def _pump(self, feed: Feed) -> None:
        """Reads the log when kicked or every poll interval; ticks the feed's waiters."""
        loop = asyncio.get_running_loop()
        next_poll = next_tick = loop.time()
        try:
            while not feed.gone and not feed.detached:
                with suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(next_poll, next_tick) - loop.time())):
                        await feed.kick.wait()
                now = loop.time()
                if now >= next_tick:
                    feed.tick()
                    next_tick = now + self._tick
                if feed.kick.is_set() or now >= next_poll:
                    feed.kick.clear()
                    await self._catch_up(feed)
                    next_poll = loop.time() + self._poll
        finally:
            with suppress(Exception):
                await self._store.unwatch(feed.ref)

    async def _catch_up(self, feed: Feed) -> None:
        """Reads the log after the feed's head, a page at a time, to its end.

        One read per page, and no separate read of the head: with confirmed
        reads (redis_store.py) each read costs a write and a WAIT.
        """
        try:
            while True:
                try:
                    events, _ = await self._store.events(feed.ref, feed.head + 1, LATEST, PAGE)
                except RevisionCompacted as compacted:
                    feed.restart_at(compacted.compact_revision)
                    continue
                for event in events:
                    feed.advance(event, self._encode(event))
                if len(events) < PAGE:
                    return
        except ConversationNotFound:
            feed.end(gone=True)
        except Exception:
            return
