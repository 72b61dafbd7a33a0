"""Two server replicas on one Redis and one etcd: a subscriber on one sees what
is written through the other, and an agent's death is recorded exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.integration.test_coordination_api import Agents
from tests.integration.test_stream import Recorder, wait_until
from tests.servers import RedisServer, ServerProcess

Kind = pb.CoordinationEvent


@pytest.fixture
def replicas(make_replicas: Callable[..., list[ServerProcess]]) -> list[ServerProcess]:
    return make_replicas(2)


async def test_writes_through_one_replica_reach_subscribers_of_the_other(
    replicas: list[ServerProcess],
) -> None:
    async with (
        grpc.aio.insecure_channel(replicas[0].address) as a,
        grpc.aio.insecure_channel(replicas[1].address) as b,
    ):
        writer, reader = pb_grpc.BlackboardStub(a), pb_grpc.BlackboardStub(b)
        conv = f"rep-{uuid.uuid4().hex[:8]}"
        await writer.CreateConversation(pb.CreateConversationRequest(id=conv))
        recorder = Recorder(reader, pb.SubscribeRequest(conversation_id=conv))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 200))
        await wait_until(lambda: recorder.synced is not None)
        for i in range(200):
            await writer.Put(
                pb.PutRequest(
                    conversation_id=conv, key=f"k{i % 9}", value=pb.Value(data=str(i).encode())
                )
            )
        await asyncio.wait_for(reading, 20)
        assert recorder.revisions == list(range(1, 201))


async def test_an_agents_death_is_recorded_once_with_two_replicas(
    replicas: list[ServerProcess],
) -> None:
    async with (
        grpc.aio.insecure_channel(replicas[0].address) as a,
        grpc.aio.insecure_channel(replicas[1].address) as b,
    ):
        first, second = Agents(a), Agents(b)
        conv = f"death-{uuid.uuid4().hex[:8]}"
        await first.bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        recorder = Recorder(second.bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read())

        doomed = await first.session(conv, "doomed", ttl_ms=1000)
        lock = await first.co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, session_id=doomed.session_id, name="job")
        )
        await first.co.Campaign(
            pb.CampaignRequest(
                conversation_id=conv, session_id=doomed.session_id, role="planner", value=b"doomed"
            )
        )
        await first.bb.Put(
            pb.PutRequest(
                conversation_id=conv,
                key="claims/job",
                value=pb.Value(data=b"doomed"),
                session_id=doomed.session_id,
            )
        )
        # The agent dies: nobody renews its session any more.
        heir = await second.session(conv, "heir")
        loop = asyncio.get_running_loop()
        started = loop.time()
        taken = await second.co.AcquireLock(
            pb.AcquireLockRequest(
                conversation_id=conv, session_id=heir.session_id, name="job", wait_ms=10_000
            )
        )
        assert loop.time() - started < 1.0 + 1.0 + 0.5  # TTL + 1 s (+ slack for the call)
        assert taken.token > lock.token

        def kinds() -> list[int]:
            return [e.coordination.kind for e in recorder.events if e.HasField("coordination")]

        await wait_until(
            lambda: Kind.AGENT_EXPIRED in kinds() and Kind.LEADER_LOST in kinds(), timeout=10
        )
        await asyncio.sleep(1.0)  # room for a duplicate from the other replica to show up
        reading.cancel()
        seen = kinds()
        for kind in (Kind.AGENT_EXPIRED, Kind.LOCK_EXPIRED, Kind.LEADER_LOST):
            assert seen.count(kind) == 1, (kind, seen)
        assert seen.count(Kind.LOCK_ACQUIRED) == 2
        assert recorder.revisions == list(range(1, len(recorder.revisions) + 1))
        expired = next(e for e in recorder.events if e.coordination.kind == Kind.AGENT_EXPIRED)
        assert [c.entry.key for c in expired.changes] == ["claims/job"]


async def test_dropped_notifications_lose_nothing_across_replicas(
    replicas: list[ServerProcess], redis_server: RedisServer
) -> None:
    """Pub/sub is only a wake-up: with every replica's pub/sub connection killed
    again and again while writes go on, a subscriber on the other replica still
    gets every revision, in order, from the log."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_server.url)
    async with (
        grpc.aio.insecure_channel(replicas[0].address) as a,
        grpc.aio.insecure_channel(replicas[1].address) as b,
    ):
        writer, reader = pb_grpc.BlackboardStub(a), pb_grpc.BlackboardStub(b)
        conv = f"drop-{uuid.uuid4().hex[:8]}"
        await writer.CreateConversation(pb.CreateConversationRequest(id=conv))
        total = 300
        recorder = Recorder(reader, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= total))
        killed = 0
        for i in range(total):
            if i % 30 == 10:
                killed += await admin.client_kill_filter(_type="pubsub")
            await writer.Put(
                pb.PutRequest(conversation_id=conv, key=f"k{i % 7}", value=pb.Value(data=b"v"))
            )
        await asyncio.wait_for(reading, 30)
        await admin.aclose()
        assert killed >= 2  # the replicas lost their pub/sub connections, some more than once
        assert recorder.revisions == list(range(1, total + 1))
