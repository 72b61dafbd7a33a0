"""Commit notifications from Redis: plain pub/sub on one Redis, sharded on a cluster.

Notifications only wake readers: the log is the truth. Every confirmed
(re)subscription calls the listener with None for its conversation, since
whatever was committed before it was not announced.

One Redis: one connection (SUBSCRIBE) carries every watched channel.
A cluster: one connection per primary (SSUBSCRIBE, Redis >= 7), each carrying
the channels of the slots that primary owns. When a connection fails, Redis
refuses a subscription (MOVED) or drops one (a slot moved away, a failover),
the slot map is read again and channels move to their owners' connections.

Stopping a reader survives a lost cancellation (blackboard_server/tasks.py):
the loops check raise_if_cancelling() each turn and after every error they
handle, and stop() cancels again until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from blackboard_server.adapters import redis_codec as codec
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.model import ConversationRef, Event
from blackboard_server.ports import Listener
from blackboard_server.tasks import raise_if_cancelling, stop

log = structlog.get_logger("blackboard.redis")
ConnectionFactory = Callable[[], AbstractConnection]


@dataclass(frozen=True, slots=True)
class Verbs:
    subscribe: str
    unsubscribe: str
    message: bytes
    confirmed: bytes
    dropped: bytes
    one_per_command: bool  # SSUBSCRIBE takes channels of one slot only


PLAIN = Verbs("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe", False)
SHARDED = Verbs("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe", True)


class Book:
    """What is watched, what Redis has confirmed, and who listens."""

    def __init__(self) -> None:
        self.watched: dict[bytes, ConversationRef] = {}
        self.subscribed: dict[bytes, asyncio.Event] = {}
        self.listeners: list[Listener] = []

    def notify(self, ref: ConversationRef, event: Event | None) -> None:
        for listener in self.listeners:
            try:
                listener(ref, event)
            except Exception:
                log.exception("store listener failed", conversation=str(ref))


class ChannelReader:
    """Owns one pub/sub connection: connects, subscribes, reads, reconnects."""

    def __init__(
        self,
        book: Book,
        connect: ConnectionFactory,
        verbs: Verbs,
        *,
        timeout_s: float,
        trouble: Callable[[], None] = lambda: None,
        name: str = "",
    ) -> None:
        self.channels: set[bytes] = set()
        self._book = book
        self._connect = connect
        self._verbs = verbs
        self._timeout_s = timeout_s
        self._trouble = trouble
        self._name = name
        self._conn: AbstractConnection | None = None
        self._send_lock = asyncio.Lock()

    async def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        await self._send(self._verbs.subscribe, channel)

    async def remove(self, channel: bytes) -> None:
        """Local bookkeeping first: it never fails, even with Redis down."""
        self.channels.discard(channel)
        await self._send(self._verbs.unsubscribe, channel)

    async def _send(self, command: str, channel: bytes) -> None:
        """Sends (UN)SUBSCRIBE unless the channel's watch changed meanwhile."""
        async with self._send_lock:
            if (channel in self.channels) != (command == self._verbs.subscribe):
                return
            conn = self._conn
            if conn is not None and conn.is_connected:
                # A failed send breaks the connection; the reader reconnects and resubscribes.
                with contextlib.suppress(RedisError, OSError):
                    await conn.send_command(command, channel)

    async def run(self) -> None:
        delay = 0.05
        while True:
            raise_if_cancelling()
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                async with self._send_lock:
                    self._conn = conn
                    await self._subscribe_all(conn)
                delay = 0.05
                await self._read_messages(conn)
            except (RedisError, OSError) as exc:
                # Once per outage, not once per attempt to reconnect.
                if self._conn is not None:
                    log.warning("redis pub/sub connection lost", node=self._name, error=str(exc))
                self._trouble()
            except Exception:
                log.exception("redis pub/sub reader failed; reconnecting", node=self._name)
            finally:
                self._conn = None
                for channel in self.channels:
                    if (subscribed := self._book.subscribed.get(channel)) is not None:
                        subscribed.clear()
                await conn.disconnect(nowait=True)
            raise_if_cancelling()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _subscribe_all(self, conn: AbstractConnection) -> None:
        if not self.channels:
            return
        if self._verbs.one_per_command:
            for channel in self.channels:
                await conn.send_command(self._verbs.subscribe, channel)
        else:
            await conn.send_command(self._verbs.subscribe, *self.channels)

    async def _read_messages(self, conn: AbstractConnection) -> None:
        # An idle connection is probed with PING: a silent Redis is a lost one.
        unanswered = False
        while True:
            raise_if_cancelling()
            try:
                # push_request: over RESP3 (redis-py's default) messages arrive as pushes.
                message = await conn.read_response(timeout=self._timeout_s / 2, push_request=True)
            except ResponseError as exc:
                # MOVED for a subscription sent to a primary that no longer owns its slot.
                log.info("redis refused a subscription", node=self._name, error=str(exc))
                self._trouble()
                continue
            if message is None:
                if unanswered:
                    raise RedisTimeoutError("pub/sub connection stopped answering")
                async with self._send_lock:
                    await conn.send_command("PING")
                unanswered = True
                continue
            unanswered = False
            if isinstance(message, list) and len(message) == 3:
                await self._dispatch(*message)

    async def _dispatch(self, kind: bytes, channel: bytes, payload: Any) -> None:
        ref = self._book.watched.get(channel) if channel in self.channels else None
        if kind == self._verbs.message and ref is not None:
            self._book.notify(ref, codec.event_or_none(payload))
        elif kind == self._verbs.confirmed:
            if ref is None:  # unwatched (or moved) while the subscription was in flight
                await self._send(self._verbs.unsubscribe, channel)
                return
            self._book.subscribed[channel].set()
            self._book.notify(ref, None)
        elif kind == self._verbs.dropped and ref is not None:
            # Redis dropped a channel still watched here: its slot moved away.
            self._book.subscribed[channel].clear()
            self._trouble()


class Notifications:
    """Watching conversations: channels placed on readers, readers run as tasks."""

    def __init__(self, book: Book, *, timeout_s: float) -> None:
        self.book = book
        self._timeout_s = timeout_s
        self._placed: dict[bytes, ChannelReader] = {}
        self._tasks: dict[ChannelReader, asyncio.Task[None]] = {}

    def reader_for(self, channel: bytes) -> ChannelReader:
        raise NotImplementedError

    def start(self, reader: ChannelReader) -> ChannelReader:
        if reader not in self._tasks:
            self._tasks[reader] = asyncio.create_task(reader.run(), name="redis-pubsub")
        return reader

    async def watch(self, ref: ConversationRef, channel: bytes) -> None:
        """Returns once Redis confirms the subscription."""
        book = self.book
        if channel not in book.watched:
            book.watched[channel] = ref
            book.subscribed[channel] = asyncio.Event()
        subscribed = book.subscribed[channel]
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.place(channel)
                await subscribed.wait()
        except TimeoutError:
            await self.unwatch(channel)
            raise BackendUnavailable("redis", f"no subscription to {ref}") from None

    async def place(self, channel: bytes) -> None:
        reader = self.reader_for(channel)
        current = self._placed.get(channel)
        if current is reader:
            if not self.book.subscribed[channel].is_set():
                await reader.add(channel)  # its SUBSCRIBE was lost, or refused
            return
        if current is not None:
            await current.remove(channel)
        self._placed[channel] = reader
        await reader.add(channel)

    async def unwatch(self, channel: bytes) -> None:
        if self.book.watched.pop(channel, None) is not None:
            del self.book.subscribed[channel]
        reader = self._placed.pop(channel, None)
        if reader is not None:
            await reader.remove(channel)

    async def stop_reader(self, reader: ChannelReader) -> None:
        task = self._tasks.pop(reader, None)
        if task is not None:
            await stop(task)

    async def aclose(self) -> None:
        for reader in list(self._tasks):
            await self.stop_reader(reader)


class PlainNotifications(Notifications):
    """One Redis: a single SUBSCRIBE connection."""

    def __init__(self, book: Book, connect: ConnectionFactory, *, timeout_s: float) -> None:
        super().__init__(book, timeout_s=timeout_s)
        self._reader = self.start(ChannelReader(book, connect, PLAIN, timeout_s=timeout_s))

    def reader_for(self, channel: bytes) -> ChannelReader:
        return self._reader


__all__ = [
    "PLAIN",
    "SHARDED",
    "Book",
    "ChannelReader",
    "Notifications",
    "PlainNotifications",
]
