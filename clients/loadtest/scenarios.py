"""The scenario registry, and the scenarios on entries alone.

A scenario sets up what it needs (`setup`), does one unit of work per `step`
(the load loop calls it N at a time, or at a rate), and undoes what it holds
(`teardown`). It notes what the server acknowledged in `ctx.ledger`, so the
check at the end can read it all back. Add one with `@register`; `bench.py`
composes them into `make bench`, and other modules may register more.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from loadtest.check import Ledger
from loadtest.loop import Recorder
from loadtest.streams import Stream, stamped
from loadtest.target import Endpoint

CALL_TIMEOUT_S = 30.0  # a stuck server ends the run with errors instead of hanging it
CONFLICT = (grpc.StatusCode.FAILED_PRECONDITION,)


@dataclass
class Options:
    """What every scenario may be tuned with (bb-loadtest's flags)."""

    conversations: int = 1
    keys: int = 16  # keys per worker (write), per conversation (read)
    read_ratio: float = 0.9
    subscribers: int = 0  # per conversation
    subscriber_procs: int = 0  # 0: subscribers run in the harness's own process
    subscriber_channels: int = 5
    locks: int = 4  # lock names (or election roles) per conversation
    tasks: int = 64  # task ids per conversation (team)
    wait_s: float = 5.0  # a lock or campaign wait
    sdk: bool = False  # writes through the SDK's Client.put instead of the raw stub
    sdk_writer: bool = False  # puts through the SDK's Writer (the Write stream)


@dataclass
class Context:
    """What a scenario works with: the server, the recorder, and the ledger."""

    ep: Endpoint
    channels: list[grpc.aio.Channel]
    rec: Recorder
    ledger: Ledger
    opts: Options
    conversations: list[str]
    concurrency: int
    session_ttl_ms: int
    streams: list[tuple[str, Stream]] = field(default_factory=list)  # in-process subscribers
    followers: list[asyncio.Task[None]] = field(default_factory=list)  # their tasks
    wall_offset_ns: int = field(default_factory=lambda: time.time_ns() - time.monotonic_ns())
    sdk_client: Any = None
    sdk_writer: Any = None  # an open blackboard_client.Writer

    def data(self, worker: int) -> pb_grpc.BlackboardAsyncStub:
        return pb_grpc.BlackboardStub(self.channels[worker % len(self.channels)])

    def coord(self, worker: int) -> pb_grpc.CoordinationAsyncStub:
        return pb_grpc.CoordinationStub(self.channels[worker % len(self.channels)])

    def conversation(self, worker: int, seq: int = 0) -> str:
        """Worker w's conversation; with `seq`, its steps go round every conversation
        (worker w, step s: conversation w + s x N, N the number of workers)."""
        return self.conversations[(worker + seq * self.concurrency) % len(self.conversations)]

    def meta(self, worker: int) -> tuple[tuple[str, str], ...]:
        return self.ep.metadata(f"lt-agent-{worker:05d}")

    def value(self, start_ns: int = 0) -> pb.Value:
        """A stamped value: subscribers measure their lag from `start_ns` (default: now)."""
        return pb.Value(data=stamped((start_ns or time.monotonic_ns()) + self.wall_offset_ns))

    async def put(
        self,
        worker: int,
        key: str,
        start_ns: int = 0,
        fence: pb.Fence | None = None,
        data: bytes | None = None,
        conv: str = "",
    ) -> int:
        """A put (of a stamped value unless `data`) in `conv` (default: the worker's),
        noted in the ledger; returns its revision."""
        conv = conv or self.conversation(worker)
        value = self.value(start_ns or time.monotonic_ns()) if data is None else pb.Value(data=data)
        call: Any
        if self.sdk_writer is not None and fence is None:
            call = self.sdk_writer.put(conv, key, value.data)
        elif self.sdk_client is not None and fence is None:
            call = self.sdk_client.put(conv, key, value.data)  # its WriteResult has .revision
        else:
            request = pb.PutRequest(conversation_id=conv, key=key, value=value, fence=fence)
            call = self.data(worker).Put(
                request, metadata=self.meta(worker), timeout=CALL_TIMEOUT_S
            )
        try:
            revision = int((await self.rec.timed("put", call, start_ns)).revision)
        except Exception:
            self.ledger.failed(conv, key)
            raise
        self.ledger.put(conv, key, revision)
        return revision


class Scenario:
    name: ClassVar[str]
    help: ClassVar[str]
    concurrency: ClassVar[int] = 64  # the default number in flight
    rate: ClassVar[float] = 0.0  # the default target rate (0: closed loop)
    subscribers: ClassVar[int] = 0  # the default subscribers per conversation
    exclusive: ClassVar[bool] = False  # open loop: one step at a time per worker

    async def setup(self, ctx: Context) -> None:
        """Before the load: what the steps need (sessions, seed data)."""

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        raise NotImplementedError

    async def teardown(self, ctx: Context) -> None:
        """After the load, before the check: give back what is held."""

    def results(self) -> dict[str, Any]:
        """Figures of the scenario's own, for the report."""
        return {}


SCENARIOS: dict[str, type[Scenario]] = {}
S = TypeVar("S", bound=type[Scenario])


def register(cls: S) -> S:
    SCENARIOS[cls.name] = cls
    return cls


@register
class WriteHeavy(Scenario):
    name = "write-heavy"
    help = "each worker puts its own keys, back to back"

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        key = f"agents/w{worker:05d}/k{seq % ctx.opts.keys:04d}"
        await ctx.put(worker, key, start_ns, conv=ctx.conversation(worker, seq))


@register
class ReadHeavy(Scenario):
    name = "read-heavy"
    help = "gets of seeded keys, with a share of puts (--read-ratio)"

    async def setup(self, ctx: Context) -> None:
        for w in range(len(ctx.conversations)):
            for k in range(ctx.opts.keys):
                await ctx.put(w, f"docs/k{k:04d}")

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        key = f"docs/k{(worker * 7919 + seq) % ctx.opts.keys:04d}"
        if (seq * 0.6180339887) % 1.0 >= ctx.opts.read_ratio:
            await ctx.put(worker, key, start_ns)
            return
        request = pb.GetRequest(conversation_id=ctx.conversation(worker), key=key)
        call = ctx.data(worker).Get(request, metadata=ctx.meta(worker), timeout=CALL_TIMEOUT_S)
        await ctx.rec.timed("get", call, start_ns)


@register
class FanOut(Scenario):
    name = "fan-out"
    help = "writers put while --subscribers streams per conversation follow every change"
    concurrency = 1
    rate = 200.0  # in all: with several conversations, the writes go round them
    subscribers = 10  # per conversation, unless --subscribers says otherwise

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        key = f"fanout/k{seq % ctx.opts.keys:02d}"
        await ctx.put(worker, key, start_ns, conv=ctx.conversation(worker, seq))


@register
class Counter(Scenario):
    name = "counter"
    help = "compare-and-set increments of shared counters; the final values must be exact"
    concurrency = 16

    async def setup(self, ctx: Context) -> None:
        for w in range(len(ctx.conversations)):
            for k in range(ctx.opts.locks):
                await ctx.put(w, f"counters/c{k}", data=b"0")
                ctx.ledger.counters[(ctx.conversation(w), f"counters/c{k}")] = 0

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        conv, stub, meta = ctx.conversation(worker), ctx.data(worker), ctx.meta(worker)
        key = f"counters/c{seq % ctx.opts.locks}"
        while True:
            got = await ctx.rec.timed(
                "get",
                stub.Get(pb.GetRequest(conversation_id=conv, key=key), metadata=meta, timeout=30),
                start_ns,
            )
            start_ns = 0
            entry = got.entry
            n = int(entry.value.data or b"0") + 1
            request = pb.PutRequest(
                conversation_id=conv,
                key=key,
                value=pb.Value(data=str(n).encode()),
                expect=pb.Expect(version=entry.version),
            )
            try:
                reply = await ctx.rec.timed(
                    "cas-put", stub.Put(request, metadata=meta, timeout=30), expected=CONFLICT
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    continue  # someone else incremented first: read again
                ctx.ledger.failed(conv, key)
                raise
            ctx.ledger.incremented(conv, key, reply.revision)
            return
