"""Subscribe: snapshot, synced, every event once and in order, resume, reset, limits."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from tests.integration.conftest import error_of
from tests.integration.test_api import details, put, value
from tests.servers import RedisServer, ServerProcess

Stub = pb_grpc.BlackboardStub


class Recorder:
    """Reads one stream and keeps what it saw."""

    def __init__(self, stub: Stub, request: pb.SubscribeRequest) -> None:
        self.call = stub.Subscribe(request)
        self.snapshot: list[pb.Entry] = []
        self.synced: int | None = None
        self.events: list[pb.Event] = []
        self.progress: list[int] = []
        self.resets: list[pb.Reset] = []
        self.kinds: list[str] = []
        self.error: grpc.aio.AioRpcError | None = None

    @property
    def revisions(self) -> list[int]:
        return [e.revision for e in self.events]

    async def read(self, until: Any = None) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("message")
                self.kinds.append(kind)
                if kind == "snapshot":
                    self.snapshot += list(message.snapshot.entries)
                elif kind == "synced":
                    self.synced = message.synced.revision
                elif kind == "events":
                    self.events += list(message.events.events)
                elif kind == "progress":
                    self.progress.append(message.progress.revision)
                elif kind == "reset":
                    self.resets.append(message.reset)
                    self.snapshot = []
                if until is not None and until(self):
                    self.call.cancel()
                    return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def stream_server(make_server: Any) -> AsyncIterator[RunningServer]:
    async with make_server(progress_interval_s=0.2, snapshot_chunk=3) as running:
        yield running


@pytest.fixture
async def sstub(stream_server: RunningServer) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(stream_server.address) as channel:
        yield pb_grpc.BlackboardStub(channel)


async def new_conv(stub: Stub) -> str:
    conversation_id = f"s-{uuid.uuid4().hex[:10]}"
    await stub.CreateConversation(pb.CreateConversationRequest(id=conversation_id))
    return conversation_id


async def test_snapshot_then_synced_then_events(sstub: Stub) -> None:
    conv = await new_conv(sstub)
    for i in range(8):
        await put(sstub, conv, f"tasks/{i}", f"v{i}")
    await put(sstub, conv, "other/x", "x")
    recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv, prefix="tasks/"))
    reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 2))
    await wait_until(lambda: recorder.synced is not None)
    await put(sstub, conv, "other/y", "y")  # filtered out
    await put(sstub, conv, "tasks/9", "v9")
    await put(sstub, conv, "tasks/0", "again")
    await reading
    assert [e.key for e in recorder.snapshot] == [f"tasks/{i}" for i in range(8)]
    assert recorder.kinds[:4] == ["snapshot"] * 3 + ["synced"]  # chunks of 3
    assert recorder.synced == 9
    assert recorder.revisions == [11, 12]
    assert [e.changes[0].entry.key for e in recorder.events] == ["tasks/9", "tasks/0"]


async def test_a_cancelled_subscriber_leaves_the_others_of_its_conversation(
    sstub: Stub,
) -> None:
    """Subscribers of one conversation wait on one shared wake-up; one going away must
    not cancel it for the others."""
    conv = await new_conv(sstub)
    leaving = sstub.Subscribe(pb.SubscribeRequest(conversation_id=conv))
    staying = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv))
    reading = asyncio.create_task(staying.read(until=lambda r: len(r.events) >= 1))
    await wait_until(lambda: staying.synced is not None)
    async with asyncio.timeout(10):
        while (await leaving.read()).WhichOneof("message") != "synced":
            pass
    await asyncio.sleep(0.1)  # both now wait for the next event
    leaving.cancel()
    await asyncio.sleep(0.2)
    await put(sstub, conv, "k", "v")
    async with asyncio.timeout(10):
        await reading
    assert staying.error is None and staying.revisions == [1]


async def test_resume_from_a_revision_is_gapless(sstub: Stub) -> None:
    conv = await new_conv(sstub)
    for i in range(10):
        await put(sstub, conv, f"k{i % 3}", str(i))
    recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv, start_revision=4))
    await recorder.read(until=lambda r: len(r.events) >= 7)
    assert recorder.revisions == list(range(4, 11))
    assert recorder.synced is None and not recorder.snapshot


async def test_idle_stream_gets_progress(sstub: Stub) -> None:
    conv = await new_conv(sstub)
    await put(sstub, conv, "k", "v")
    recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv, prefix="nothing/"))
    reading = asyncio.create_task(recorder.read(until=lambda r: len(r.progress) >= 2))
    await wait_until(lambda: recorder.synced is not None)
    await put(sstub, conv, "k", "w")  # advances the head without matching
    await reading
    assert recorder.progress[-1] == 2 and recorder.events == []


async def test_compacted_start_resets_or_fails(make_server: Any) -> None:
    async with (
        make_server(retention=5) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(stub)
        for i in range(12):
            await put(stub, conv, f"k{i % 2}", str(i))
        refused = Recorder(
            stub, pb.SubscribeRequest(conversation_id=conv, start_revision=2, no_reset=True)
        )
        await refused.read()
        assert refused.error is not None
        assert refused.error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert details(refused.error)[0].metadata["compact_revision"] == "7"
        reset = Recorder(stub, pb.SubscribeRequest(conversation_id=conv, start_revision=2))
        await reset.read(until=lambda r: r.synced is not None)
        assert reset.resets[0].requested_revision == 2
        assert reset.resets[0].compact_revision == 7
        assert reset.synced == 12
        assert {e.key: e.value.data for e in reset.snapshot} == {"k0": b"10", "k1": b"11"}


async def test_deleted_conversation_ends_the_stream(sstub: Stub) -> None:
    conv = await new_conv(sstub)
    recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv))
    reading = asyncio.create_task(recorder.read())
    await wait_until(lambda: recorder.synced is not None)
    await sstub.DeleteConversation(pb.DeleteConversationRequest(id=conv))
    await asyncio.wait_for(reading, 10)
    assert recorder.error is not None and recorder.error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_conversation_left_idle_is_deleted_and_its_stream_ended(sstub: Stub) -> None:
    idle, busy = f"idle-{uuid.uuid4().hex[:8]}", f"busy-{uuid.uuid4().hex[:8]}"
    for conversation_id in (idle, busy):
        request = pb.CreateConversationRequest(id=conversation_id, idle_ttl_ms=1500)
        await sstub.CreateConversation(request)
    recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=idle))
    reading = asyncio.create_task(recorder.read())
    await wait_until(lambda: recorder.synced is not None)
    await put(sstub, idle, "k", "v")
    # `busy` is written to every 100 ms, so it never goes 1.5 s without a write.
    loop = asyncio.get_running_loop()
    until = loop.time() + 8
    while not reading.done() and loop.time() < until:
        await put(sstub, busy, "k", "v")
        await asyncio.sleep(0.1)
    assert reading.done()
    assert recorder.error is not None and recorder.error.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await sstub.GetConversation(pb.GetConversationRequest(id=idle))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    kept = await sstub.GetConversation(pb.GetConversationRequest(id=busy))
    assert kept.revision >= 10 and kept.idle_ttl_ms == 1500


async def test_concurrent_cas_increments_and_appends_are_exact(
    server_process: ServerProcess,
) -> None:
    """16 clients x 200 CAS increments end at 3200; 16 x 200 appends leave 3200
    children; a subscriber started first sees every revision once, in order."""
    async with grpc.aio.insecure_channel(server_process.address) as channel:
        stub = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(stub)
        await put(stub, conv, "counter", "0")
        recorder = Recorder(stub, pb.SubscribeRequest(conversation_id=conv))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 6400))
        await wait_until(lambda: recorder.synced is not None)
        results = await asyncio.gather(
            *(increment(stub, conv, 200) for _ in range(16)),
            *(append(stub, conv, w, 200) for w in range(16)),
        )
        got = await stub.Get(pb.GetRequest(conversation_id=conv, key="counter"))
        assert int(got.entry.value.data) == 3200
        assert sum(r for r in results if r) > 0  # the clients really raced
        assert await count(stub, conv, "log/") == 3200
        await asyncio.wait_for(reading, 60)
        assert recorder.revisions == list(range(2, 6402))


async def increment(stub: Stub, conv: str, times: int) -> int:
    """Read-modify-write with CAS; returns how many conflicts it retried."""
    conflicts = 0
    for _ in range(times):
        backoff = 0.001
        while True:
            got = await stub.Get(pb.GetRequest(conversation_id=conv, key="counter"))
            n = int(got.entry.value.data)
            try:
                await put(
                    stub, conv, "counter", str(n + 1), expect=pb.Expect(version=got.entry.version)
                )
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                conflicts += 1
                # Jittered exponential backoff, as any CAS loop under contention does.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 0.05)
    return conflicts


async def append(stub: Stub, conv: str, worker: int, times: int) -> None:
    for i in range(times):
        await stub.Append(
            pb.AppendRequest(conversation_id=conv, key="log", value=value(f"{worker}:{i}"))
        )


async def count(stub: Stub, conv: str, prefix: str) -> int:
    total = 0
    token = ""
    while True:
        page = await stub.Range(
            pb.RangeRequest(
                conversation_id=conv,
                prefix=prefix,
                page_size=1000,
                keys_only=True,
                page_token=token,
            )
        )
        total += len(page.entries)
        token = page.next_page_token
        if not token:
            return total


async def test_cut_at_random_points_and_resumed_sees_exactly_the_uncut_stream(
    sstub: Stub,
) -> None:
    conv = await new_conv(sstub)
    total = 300
    rng = random.Random(7)

    async def writer() -> None:
        for i in range(total):
            await put(sstub, conv, f"k{i % 7}", str(i))
            if i % 25 == 0:
                await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    seen: list[pb.Event] = []
    start = 1
    cuts = 0
    while start <= total:
        recorder = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv, start_revision=start))
        cut_after = rng.randint(1, 40)
        await recorder.read(
            until=lambda r, n=cut_after: (
                len(r.events) >= n or (r.revisions and r.revisions[-1] == total)
            )
        )
        assert recorder.error is None
        seen += recorder.events
        start = seen[-1].revision + 1 if seen else 1
        cuts += 1
    await writing
    uncut = Recorder(sstub, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
    await uncut.read(until=lambda r: len(r.events) >= total)
    assert cuts > 5
    assert [e.SerializeToString() for e in seen] == [e.SerializeToString() for e in uncut.events]


def ended_slow(recorder: Recorder) -> int:
    """The resume point of a stream ended SLOW_SUBSCRIBER; it saw exactly 1..that."""
    assert recorder.error is not None
    assert recorder.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = details(recorder.error)
    assert info.reason == "SLOW_SUBSCRIBER"
    last = int(info.metadata["last_revision"])
    assert recorder.revisions == list(range(1, last + 1))
    return last


async def resumes_from(stub: Stub, conv: str, start: int, head: int) -> None:
    resumed = Recorder(stub, pb.SubscribeRequest(conversation_id=conv, start_revision=start))
    await resumed.read(until=lambda r: r.revisions and r.revisions[-1] == head)
    assert resumed.revisions == list(range(start, head + 1))


async def test_slow_subscriber_is_ended_with_its_resume_point(make_server: Any) -> None:
    async with (
        make_server(
            subscriber_max_lag=50, subscriber_batch=10, subscriber_write_timeout_s=1.0
        ) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(stub)
        recorder = Recorder(stub, pb.SubscribeRequest(conversation_id=conv))
        stream = recorder.call
        first = await stream.read()  # the (empty) snapshot; then stop reading
        assert first.WhichOneof("message") == "snapshot"
        blob = "x" * 20_000
        for i in range(400):
            await put(stub, conv, f"k{i % 5}", blob)
        await recorder.read()
        last = ended_slow(recorder)
        await resumes_from(stub, conv, last + 1, 400)


async def test_a_stalled_write_ends_only_that_stream_with_its_resume_point(
    make_server: Any,
) -> None:
    # The lag bound is out of reach: only the write timeout can end the stream.
    async with (
        make_server(
            subscriber_max_lag=1_000_000, subscriber_batch=10, subscriber_write_timeout_s=1.0
        ) as running,
        grpc.aio.insecure_channel(running.address) as channel,
        grpc.aio.insecure_channel(running.address) as reader_channel,
    ):
        stub = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(stub)
        stalled = Recorder(stub, pb.SubscribeRequest(conversation_id=conv))
        first = await stalled.call.read()  # the (empty) snapshot; then stop reading
        assert first.WhichOneof("message") == "snapshot"
        reader = Recorder(
            pb_grpc.BlackboardStub(reader_channel), pb.SubscribeRequest(conversation_id=conv)
        )
        reading = asyncio.create_task(reader.read())
        while reader.synced is None:  # its snapshot is taken before the first put
            await asyncio.sleep(0.01)
        blob = "x" * 20_000
        for i in range(300):
            await put(stub, conv, f"k{i % 5}", blob)
        await asyncio.sleep(2.5)  # more than the timeout and the watchdog's period
        await stalled.read()
        last = ended_slow(stalled)
        assert 0 < last < 300
        # The stream that kept reading was not touched and has everything.
        assert not reading.done()
        assert reader.revisions == list(range(1, 301))
        reading.cancel()
        await resumes_from(stub, conv, last + 1, 300)


async def test_thousands_of_subscribers_arriving_at_once_all_start(
    server_process: ServerProcess,
) -> None:
    # More calls than gRPC's own default bound on calls waiting to be taken up
    # (1000, with random refusals up to 3000), as when a replica's subscribers
    # all reconnect to another.
    channels = [grpc.aio.insecure_channel(server_process.address) for _ in range(5)]
    stubs = [pb_grpc.BlackboardStub(c) for c in channels]
    try:
        conv = await new_conv(stubs[0])
        await put(stubs[0], conv, "k", "v")

        async def until_synced(stub: pb_grpc.BlackboardStub) -> int:
            call = stub.Subscribe(pb.SubscribeRequest(conversation_id=conv))
            async for message in call:
                if message.WhichOneof("message") == "synced":
                    call.cancel()
                    return message.synced.revision
            return -1

        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(until_synced(stubs[i % 5]) for i in range(2500)), return_exceptions=True
            ),
            120,
        )
        failed = [o for o in outcomes if not isinstance(o, int)]
        assert failed == [], f"{len(failed)} of 2500 failed, e.g. {failed[0]!r}"
        assert set(outcomes) == {1}
    finally:
        for channel in channels:
            await channel.close()


async def test_shutdown_ends_streams_resumably(make_server: Any) -> None:
    async with make_server(shutdown_grace_s=2) as running:
        channel = grpc.aio.insecure_channel(running.address)
        stub = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(stub)
        await put(stub, conv, "k", "v")
        recorder = Recorder(stub, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read())
        await wait_until(lambda: recorder.revisions == [1])
    await asyncio.wait_for(reading, 10)
    await channel.close()
    assert recorder.error is not None
    assert recorder.error.code() == grpc.StatusCode.UNAVAILABLE
    info, _ = details(recorder.error)
    assert info.reason == "SHUTTING_DOWN" and info.metadata["last_revision"] == "1"


async def test_resume_across_a_server_restart_on_redis(redis_server: RedisServer) -> None:
    settings = Settings(
        listen="127.0.0.1:0", redis_url=redis_server.url, durability="fast", uvloop=False
    )
    conv = f"restart-{uuid.uuid4().hex[:8]}"
    seen: list[int] = []
    total = 120
    for round_ in range(3):
        async with serve(settings) as running:
            # Closed after the server, so the stream sees the server's shutdown status.
            channel = grpc.aio.insecure_channel(running.address)
            stub = pb_grpc.BlackboardStub(channel)
            if round_ == 0:
                await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
            start = seen[-1] + 1 if seen else 1
            recorder = Recorder(
                stub, pb.SubscribeRequest(conversation_id=conv, start_revision=start)
            )
            reading = asyncio.create_task(recorder.read())
            for i in range(40):
                await put(stub, conv, f"k{i % 4}", f"{round_}:{i}")
            last = 40 * (round_ + 1)
            await wait_until(lambda r=recorder, n=last: r.revisions and r.revisions[-1] == n)
        await asyncio.wait_for(reading, 10)  # ended by the shutdown
        await channel.close()
        assert recorder.error is not None
        assert recorder.error.code() == grpc.StatusCode.UNAVAILABLE
        seen += recorder.revisions
    assert seen == list(range(1, total + 1))


async def test_unknown_conversation_stream_fails(sstub: Stub) -> None:
    error = await error_of(
        anext(aiter(sstub.Subscribe(pb.SubscribeRequest(conversation_id="no-such-conversation"))))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
