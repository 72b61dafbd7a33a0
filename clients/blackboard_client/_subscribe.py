"""The change stream: what a subscriber sees, and how it survives breaks.

A subscription yields stream items in order:

    Snapshot* Synced (Events | Progress)*          starting from a snapshot
    (Events | Progress)*                           starting at a revision

and, whenever the state the consumer holds is no longer valid, `Reset`
followed by a fresh `Snapshot* Synced`. The server sends a reset when the
resume point is no longer retained; the SDK adds one of its own when the
stream broke in the middle of a snapshot, so "on Reset, drop what you have"
is the only rule a consumer needs.

When the stream breaks (UNAVAILABLE, SHUTTING_DOWN, SLOW_SUBSCRIBER, a
CANCELLED the client did not ask for, or the server simply ending it), the
subscription reconnects from the last revision it delivered + 1 and drops
anything at or below it, so every event reaches the consumer exactly once, in
order. Given several replicas, the reconnect goes to one that is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._errors import BlackboardError, SlowSubscriber, Unavailable, error_from_rpc
from blackboard_client._model import Entry, Event
from blackboard_client._retry import RetryPolicy, transient
from blackboard_client._stream import ClosingStream


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One chunk of a consistent snapshot; every chunk has the same revision."""

    entries: tuple[Entry, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Synced:
    """The snapshot is complete; events after `revision` follow."""

    revision: int


@dataclass(frozen=True, slots=True)
class Events:
    events: tuple[Event, ...]

    @property
    def revision(self) -> int:
        return self.events[-1].revision


@dataclass(frozen=True, slots=True)
class Progress:
    """Nothing matched for a while; the conversation's head is `revision`."""

    revision: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop local state: a fresh `Snapshot* Synced` follows.

    `compact_revision` is 0 when the SDK restarted a snapshot that a broken
    stream had cut short.
    """

    requested_revision: int
    compact_revision: int


StreamItem = Snapshot | Synced | Events | Progress | Reset

#: Opens one server stream starting at a revision (0: snapshot first).
Opener = Callable[[int], AsyncGenerator[StreamItem, None]]


def item_from_pb(msg: pb.SubscribeResponse) -> StreamItem:
    which = msg.WhichOneof("message")
    if which == "snapshot":
        entries = tuple(_convert.entry(e) for e in msg.snapshot.entries)
        return Snapshot(entries, msg.snapshot.revision)
    if which == "synced":
        return Synced(msg.synced.revision)
    if which == "events":
        return Events(tuple(_convert.event(e) for e in msg.events.events))
    if which == "progress":
        return Progress(msg.progress.revision)
    if which == "reset":
        return Reset(msg.reset.requested_revision, msg.reset.compact_revision)
    raise ValueError(f"unknown stream message {which!r}")


def grpc_opener(
    rpc: Callable[..., Any], request: pb.SubscribeRequest, metadata: Sequence[tuple[str, str]]
) -> Opener:
    """Opens the stub's Subscribe from a revision, decoding its items and errors."""

    async def open_stream(start: int) -> AsyncGenerator[StreamItem, None]:
        attempt = pb.SubscribeRequest()
        attempt.CopyFrom(request)
        attempt.start_revision = start
        call = rpc(attempt, metadata=metadata)
        try:
            async for message in call:
                yield item_from_pb(message)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()

    return open_stream


class Cursor:
    """Where a subscription stands: pure bookkeeping, no I/O.

    `last` is the last revision delivered (None while no snapshot has been
    completed); `resume_from()` is the start revision of the next stream.
    """

    def __init__(self, start_revision: int) -> None:
        self.last: int | None = start_revision - 1 if start_revision > 0 else None
        self.in_snapshot = False

    def resume_from(self) -> int:
        return 0 if self.last is None else self.last + 1

    def accept(self, item: StreamItem) -> Iterator[StreamItem]:
        """The items to deliver for one received item, updating the position."""
        if isinstance(item, Reset):
            self.last, self.in_snapshot = None, False
            yield item
        elif isinstance(item, Snapshot):
            if self.last is not None:
                # A snapshot nobody announced: the consumer must drop its state.
                yield Reset(self.last + 1, 0)
                self.last = None
            self.in_snapshot = True
            yield item
        elif isinstance(item, Synced):
            self.last, self.in_snapshot = item.revision, False
            yield item
        elif isinstance(item, Events):
            fresh = tuple(e for e in item.events if self.last is None or e.revision > self.last)
            if fresh:
                self.last = fresh[-1].revision
                yield Events(fresh)
        elif self.last is None or item.revision > self.last:
            if self.last is not None:
                self.last = item.revision
            yield item

    def broken(self) -> Iterator[StreamItem]:
        """The items to deliver when a stream ends: a reset if it cut a snapshot short."""
        if self.in_snapshot:
            self.in_snapshot = False
            yield Reset(0, 0)


def resumable(error: BlackboardError) -> bool:
    return transient(error) or isinstance(error, SlowSubscriber)


class Subscription(ClosingStream[StreamItem]):
    """An async iterator of `StreamItem`s that resumes by itself.

    Also an async context manager; leaving it (or `aclose()`) ends the stream.
    Gives up after `retry.attempts` consecutive failed reconnects, raising the
    last error.
    """

    def __init__(self, opener: Opener, *, start_revision: int, retry: RetryPolicy) -> None:
        self._opener = opener
        self._retry = retry
        self._cursor = Cursor(start_revision)
        self._items = self._run()

    @property
    def revision(self) -> int:
        """The last revision delivered (0 before the first snapshot completes)."""
        return self._cursor.last or 0

    async def _run(self) -> AsyncGenerator[StreamItem, None]:
        failures = 0
        while True:
            error: BlackboardError = Unavailable("the server ended the stream")
            stream = self._opener(self._cursor.resume_from())
            try:
                async for received in stream:
                    failures = 0
                    for item in self._cursor.accept(received):
                        yield item
            except BlackboardError as e:
                if not resumable(e):
                    raise
                error = e
            finally:
                await stream.aclose()
            for item in self._cursor.broken():
                yield item
            failures += 1
            if failures >= self._retry.attempts:
                raise error
            await asyncio.sleep(self._retry.backoff(failures))
