"""Subscribers for the fan-out benchmark, run as a process of their own.

Opens `--streams` Subscribe streams (snapshot mode) over `--channels` channels,
prints one JSON line {"ready": ...} once every stream has its Synced marker, then
reads one JSON line {"last": REVISION, "deadline_s": S} from stdin, waits until
every stream has received REVISION (or the deadline passes), and prints one
JSON line with what each stream received: counts, gaps, duplicates, and the lag
samples in microseconds.

The writer puts struct("<qq", intended_send_ns, actual_send_ns) at the start of
each value; this process reads the clock once per stream message (same machine,
same clock). Commit lag is measured from the event's time_unix_ms, which has
millisecond resolution: it reads up to 1 ms more than the true lag.

    python -m tests.bench_subscriber --target HOST:PORT --conversation ID --streams 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc

STAMP = struct.Struct("<qq")


@dataclass
class Stream:
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


async def follow(
    stub: pb_grpc.BlackboardStub, conversation: str, stream: Stream, synced: asyncio.Event
) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(conversation_id=conversation))
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
        if error.code() != grpc.StatusCode.CANCELLED:
            stream.error = f"{error.code().name}: {error.details()}"
    finally:
        stream.caught_up.set()  # ended: nothing more will come
        synced.set()


async def run(target: str, conversation: str, streams: int, channels: int) -> None:
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [pb_grpc.BlackboardStub(c) for c in chans]
    state = [Stream() for _ in range(streams)]
    synced = [asyncio.Event() for _ in range(streams)]
    tasks = [
        asyncio.create_task(follow(stubs[i % channels], conversation, s, e))
        for i, (s, e) in enumerate(zip(state, synced, strict=True))
    ]
    await asyncio.gather(*(e.wait() for e in synced))
    errors = [s.error for s in state if s.error]
    print(json.dumps({"ready": not errors, "errors": errors[:3]}), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:  # the benchmark went away
        return
    order = json.loads(line)
    for s in state:
        s.target = order["last"]
        if s.last >= s.target:
            s.caught_up.set()
    waiting = [asyncio.create_task(s.caught_up.wait()) for s in state]
    await asyncio.wait(waiting, timeout=order["deadline_s"])
    for task in [*tasks, *waiting]:
        task.cancel()
    await asyncio.gather(*tasks, *waiting, return_exceptions=True)
    for c in chans:
        await c.close()
    with contextlib.suppress(BrokenPipeError):  # the benchmark gave up on us
        print(json.dumps({"streams": [report(s) for s in state]}), flush=True)


def report(s: Stream) -> dict[str, Any]:
    return {
        "synced": s.synced,
        "last": s.last,
        "received": s.received,
        "messages": s.messages,
        "missing": s.missing,
        "duplicates": s.duplicates,
        "resets": s.resets,
        "error": s.error,
        "last_delivery_ns": s.last_delivery_ns,
        "commit_us": s.commit_us,
        "send_us": s.send_us,
        "intended_us": s.intended_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--conversation", required=True)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--channels", type=int, default=5)
    args = parser.parse_args()
    coro = run(args.target, args.conversation, args.streams, args.channels)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
