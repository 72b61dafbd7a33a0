"""Subscribers: follow a conversation's change stream and prove it gapless.

Every value the harness writes starts with STAMP (intended and actual send
time, wall clock ns), so a subscriber on the same machine measures the lag
from the writer's send and from its intended send; the commit lag comes from
the event's server time (millisecond resolution: it reads up to 1 ms high).
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc

STAMP = struct.Struct("<qq")
PAYLOAD = b"x" * 100  # what every write carries after its stamp: a small status value


def stamped(intended_wall_ns: int) -> bytes:
    return STAMP.pack(intended_wall_ns, time.time_ns()) + PAYLOAD


@dataclass
class Stream:
    """What one subscriber saw: revisions in order, gaps, duplicates, lag samples (us)."""

    synced: int = -1  # the snapshot revision; events after it are expected
    last: int = -1  # the last revision received
    received: int = 0
    messages: int = 0
    missing: int = 0  # revisions skipped over
    duplicates: int = 0  # revisions at or below one already received
    resets: int = 0
    error: str = ""
    last_delivery_ns: int = 0
    commit_us: list[int] = field(default_factory=list)
    send_us: list[int] = field(default_factory=list)
    intended_us: list[int] = field(default_factory=list)
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 1 << 62

    def on_events(self, events: Any, now_ns: int) -> None:
        self.messages += 1
        self.last_delivery_ns = now_ns
        now_us = now_ns // 1000
        for event in events:
            revision = event.revision
            if revision <= self.last:
                self.duplicates += 1
                continue
            if self.last >= 0:
                self.missing += revision - self.last - 1
            self.last = revision
            self.received += 1
            self.commit_us.append(now_us - event.time_unix_ms * 1000)
            data = event.changes[0].entry.value.data if event.changes else b""
            if len(data) >= STAMP.size:
                intended_ns, sent_ns = STAMP.unpack_from(data)
                self.send_us.append(now_us - sent_ns // 1000)
                self.intended_us.append(now_us - intended_ns // 1000)
        if self.last >= self.target:
            self.caught_up.set()

    def wait_for(self, revision: int) -> None:
        self.target = revision
        if self.last >= revision or self.error:
            self.caught_up.set()

    def report(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "last": self.last,
            "received": self.received,
            "messages": self.messages,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "resets": self.resets,
            "error": self.error,
            "last_delivery_ns": self.last_delivery_ns,
            "commit_us": self.commit_us,
            "send_us": self.send_us,
            "intended_us": self.intended_us,
        }


async def follow(
    stub: pb_grpc.BlackboardAsyncStub,
    conversation: str,
    stream: Stream,
    synced: asyncio.Event,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Reads the whole conversation's stream (snapshot first) until cancelled."""
    call = stub.Subscribe(pb.SubscribeRequest(conversation_id=conversation), metadata=metadata)
    try:
        async for message in call:
            kind = message.WhichOneof("message")
            if kind == "events":
                stream.on_events(message.events.events, time.time_ns())
            elif kind == "synced":
                stream.synced = stream.last = message.synced.revision
                synced.set()
            elif kind == "reset":
                stream.resets += 1
    except grpc.aio.AioRpcError as error:
        # Our own cancellation of the task arrives as CancelledError, not here: a
        # CANCELLED status came from the server or the connection, and is an error.
        stream.error = f"{error.code().name}: {error.details()}"
    finally:
        stream.caught_up.set()  # ended: nothing more will come
        synced.set()


async def caught_up(streams: list[Stream], within_s: float) -> None:
    """Waits until every stream has reached its `wait_for` revision (or ended)."""
    waiting = [asyncio.create_task(s.caught_up.wait()) for s in streams]
    if waiting:
        await asyncio.wait(waiting, timeout=within_s)
    for task in waiting:
        task.cancel()
