"""Redis goes away: calls fail UNAVAILABLE within their deadline, never hang, and
the server recovers by itself when Redis returns. Nothing acknowledged is lost
with a durable (AOF, fsync always) Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_client import RetryPolicy
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from tests.faults.load import Load, history, run_load
from tests.integration.test_api import details, put
from tests.integration.test_stream import Recorder, wait_until
from tests.servers import EtcdCluster, RedisServer, start_replicas


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    server = RedisServer(tmp_path / "redis", durable=True).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
async def running(redis: RedisServer) -> AsyncIterator[RunningServer]:
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis.url,
        redis_timeout_s=1.0,
        progress_interval_s=0.3,
        uvloop=False,
    )
    async with serve(settings) as server:
        yield server


async def test_outage_fails_fast_and_recovers(redis: RedisServer, running: RunningServer) -> None:
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = pb_grpc.BlackboardStub(channel)
        conv = f"outage-{uuid.uuid4().hex[:8]}"
        await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
        acknowledged = [(await put(stub, conv, f"k{i}", str(i))).revision for i in range(20)]
        recorder = Recorder(stub, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 40))
        await wait_until(lambda: len(recorder.events) >= 20)

        redis.kill()
        for call in (
            put(stub, conv, "during", "x", request_id="during-1"),
            stub.Get(pb.GetRequest(conversation_id=conv, key="k1")),
            stub.Range(pb.RangeRequest(conversation_id=conv)),
        ):
            started = time.monotonic()
            try:
                await asyncio.wait_for(call, 10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert details(error)[0].reason == "BACKEND_UNAVAILABLE"
            else:
                raise AssertionError("a call succeeded with Redis down")
            assert time.monotonic() - started < 3.0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Put(
                pb.PutRequest(conversation_id=conv, key="d", value=pb.Value(data=b"x")), timeout=0.3
            )
        assert raised.value.code() in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE,
        )
        assert time.monotonic() - started < 1.5

        redis.start()  # same port, same AOF file
        async with asyncio.timeout(20):
            while True:
                try:
                    await put(stub, conv, "after", "y", request_id="after-1")
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
        for i in range(20, 39):
            acknowledged.append((await put(stub, conv, f"k{i}", str(i))).revision)
        await asyncio.wait_for(reading, 20)
        revisions = recorder.revisions
        assert revisions == list(range(1, len(revisions) + 1))  # no gap across the outage
        assert set(acknowledged) <= set(revisions)
        page = await stub.Range(pb.RangeRequest(conversation_id=conv, prefix="k"))
        assert {e.key for e in page.entries} == {f"k{i}" for i in range(39)}


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_durable_redis_killed_under_load_loses_nothing_acknowledged(
    redis: RedisServer, etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Two replicas, writers and subscribers on both; Redis (AOF, fsync always)
    is killed -9 and started again on its port and directory. Writers do not
    retry, so each call during the outage shows how it failed."""
    deadline = 2.0
    servers = start_replicas(tmp_path, redis, etcd, 2, "--redis-timeout-s", "1.0")
    phases: dict[str, float] = {}

    async def outage() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3.0)
        redis.kill()
        phases["down"] = loop.time()
        await asyncio.sleep(3.0)
        await asyncio.to_thread(redis.start)
        phases["up"] = loop.time()
        await asyncio.sleep(5.0)

    try:
        outcome = await run_load(
            [s.address for s in servers],
            tmp_path,
            Load(
                conversations=3,
                writers_per_conversation=2,
                writes_per_second=150.0,
                subscribers_per_conversation=4,
            ),
            outage,
            writer_retry=RetryPolicy.never(),
            timeout=deadline,
        )
    finally:
        for server in servers:
            server.stop()
    ops = {r["op"]: r for r in history(tmp_path) if r["t"] == "invoke"}
    unknown = [r for r in history(tmp_path) if r["t"] == "unknown"]
    after = [
        r
        for r in history(tmp_path)
        if r["t"] == "ok" and ops[r["op"]]["f"] != "get" and r["at"] > phases["up"]
    ]
    print(
        f"\n{outcome.acknowledged} writes acknowledged ({len(after)} after Redis returned), "
        f"{len(unknown)} failed during the outage: {sorted(set(outcome.writes.errors))}"
    )
    assert outcome.verdict.ok, outcome.verdict.summary()
    assert unknown, "no call met the outage: it proved nothing"
    unexpected = [
        r["error"]
        for r in unknown
        if r["error"].split(":")[0] not in ("Unavailable", "BackendUnavailable")
    ]
    assert not unexpected, f"{len(unexpected)} failed otherwise, e.g. {unexpected[:3]}"
    assert all(r["at"] - ops[r["op"]]["at"] < deadline + 1.0 for r in unknown)
    assert after, "the service did not come back by itself"
    assert all(s.revision >= outcome.revisions[s.conv] > 0 for s in outcome.subscribers)
