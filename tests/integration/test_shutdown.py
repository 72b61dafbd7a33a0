"""SIGTERM, step by step, on one of two replicas: health turns NOT_SERVING,
open streams end UNAVAILABLE/SHUTTING_DOWN with the last revision they were
sent, an in-flight call (a lock wait) still completes, new calls are refused
UNAVAILABLE, sessions (etcd leases) live on through the other replica, and the
process exits 0 within its grace."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.app import serve
from blackboard_server.config import Settings
from tests.integration.test_api import details
from tests.integration.test_coordination_api import Agents
from tests.servers import RedisServer, ServerProcess

GRACE_S = 8.0
Health = health_pb2.HealthCheckResponse


@pytest.fixture
def replicas(make_replicas: Callable[..., list[ServerProcess]]) -> list[ServerProcess]:
    return make_replicas(2, "--shutdown-grace-s", str(GRACE_S))


@pytest.mark.timeout(60)
async def test_sigterm_drains_in_order(replicas: list[ServerProcess]) -> None:
    draining, other = replicas
    async with (
        grpc.aio.insecure_channel(draining.address) as a,
        grpc.aio.insecure_channel(other.address) as b,
    ):
        on_a, on_b = Agents(a), Agents(b)
        conv = f"drain-{uuid.uuid4().hex[:8]}"
        await on_b.bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        for i in range(5):
            await on_b.bb.Put(
                pb.PutRequest(conversation_id=conv, key=f"k{i}", value=pb.Value(data=b"x"))
            )
        holder = await on_b.session(conv, "holder")
        waiter = await on_b.session(conv, "waiter", ttl_ms=30_000)
        held = await on_b.co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, session_id=holder.session_id, name="job")
        )

        stream = on_a.bb.Subscribe(pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        seen: list[int] = []
        async for message in stream:
            seen += [e.revision for e in message.events.events]
            if seen and seen[-1] >= 5:
                break
        health = health_pb2_grpc.HealthStub(a).Watch(health_pb2.HealthCheckRequest())
        assert (await health.read()).status == Health.SERVING
        # In flight on the draining replica when SIGTERM comes: a lock wait.
        acquiring = asyncio.ensure_future(
            on_a.co.AcquireLock(
                pb.AcquireLockRequest(
                    conversation_id=conv,
                    session_id=waiter.session_id,
                    name="job",
                    wait_ms=20_000,
                ),
                timeout=30,
            )
        )
        await asyncio.sleep(0.5)  # the wait has reached the server
        started = time.monotonic()
        draining.terminate()

        assert (await asyncio.wait_for(health.read(), 5)).status == Health.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for message in stream:
                seen += [e.revision for e in message.events.events]
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        info = details(ended.value)[0]
        assert info.reason == "SHUTTING_DOWN"
        assert int(info.metadata["last_revision"]) == seen[-1]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await on_a.bb.Get(pb.GetRequest(conversation_id=conv, key="k1"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The holder lets go through the other replica; the draining one still
        # answers the call it had in flight.
        await on_b.co.ReleaseLock(
            pb.ReleaseLockRequest(
                conversation_id=conv, session_id=holder.session_id, name="job", token=held.token
            )
        )
        granted = await acquiring
        assert granted.token > held.token and granted.session_id == waiter.session_id
        assert draining.proc is not None
        assert await asyncio.to_thread(draining.proc.wait, GRACE_S + 5) == 0
        assert time.monotonic() - started < GRACE_S + 5  # the grace, and room to exit

        # Sessions are etcd leases: they outlive the replica they were used through.
        kept = await on_b.co.KeepAlive(
            pb.KeepAliveRequest(conversation_id=conv, session_id=waiter.session_id)
        )
        assert kept.ttl_ms > 0
        held_now = await on_b.co.GetLock(pb.GetLockRequest(conversation_id=conv, name="job"))
        assert held_now.token == granted.token


async def test_stopping_never_waits_on_a_sweep_that_swallowed_its_cancel(
    redis_server: RedisServer,
) -> None:
    """The sweeper's Redis calls can swallow the cancel that stops it (wait_for
    in Python 3.11 can, inside redis-py): stopping then waited forever. A sweep
    every half millisecond makes the race likely; before the fix, a loop like
    this one hung within its first 25 stops."""
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        durability="fast",
        uvloop=False,
        sweep_interval_s=0.0005,
    )
    for stops in range(40):
        running = serve(settings)
        await running.__aenter__()
        await asyncio.sleep(random.random() * 0.02)
        stopping = asyncio.ensure_future(running.__aexit__(None, None, None))
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert done, f"stop {stops + 1} still waiting after 10 s"
        stopping.result()
