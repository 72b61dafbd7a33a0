"""etcd failures seen through the gRPC API: kill -9 of the etcd leader during
lock and election churn, then loss of quorum."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import serve
from blackboard_server.config import Settings
from tests.integration.test_api import details
from tests.servers import EtcdCluster, RedisServer

CALL_BOUND_S = 2.0 + 1.0  # the server's etcd timeout, plus room for the call itself


async def churn(
    co: pb_grpc.CoordinationStub,
    conv: str,
    name: str,
    stop: asyncio.Event,
    outcomes: list[tuple[float, str, float]],
) -> None:
    """Acquires and releases (or campaigns and resigns) over and over, noting each outcome."""
    session = await co.OpenSession(pb.OpenSessionRequest(conversation_id=conv, ttl_ms=10_000))
    election = name.startswith("role")
    while not stop.is_set():
        started = time.monotonic()
        try:
            if election:
                held = await co.Campaign(
                    pb.CampaignRequest(
                        conversation_id=conv, session_id=session.session_id, role=name, wait_ms=1000
                    ),
                    timeout=5,
                )
                await co.Resign(
                    pb.ResignRequest(
                        conversation_id=conv,
                        session_id=session.session_id,
                        role=name,
                        token=held.token,
                    ),
                    timeout=5,
                )
            else:
                held = await co.AcquireLock(
                    pb.AcquireLockRequest(
                        conversation_id=conv, session_id=session.session_id, name=name, wait_ms=1000
                    ),
                    timeout=5,
                )
                await co.ReleaseLock(
                    pb.ReleaseLockRequest(
                        conversation_id=conv,
                        session_id=session.session_id,
                        name=name,
                        token=held.token,
                    ),
                    timeout=5,
                )
            outcomes.append((started, "OK", time.monotonic() - started))
        except grpc.aio.AioRpcError as error:
            outcomes.append((started, error.code().name, time.monotonic() - started))
            await asyncio.sleep(0.05)


async def test_etcd_leader_kill_and_quorum_loss(
    etcd_cluster: EtcdCluster, redis_server: RedisServer
) -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        uvloop=False,
        redis_url=redis_server.url,
        durability="fast",
        etcd_endpoints=",".join(etcd_cluster.endpoints),
        etcd_timeout_s=2.0,
        etcd_prefix=f"/bb-{uuid.uuid4().hex[:8]}",
    )
    async with serve(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        bb, co = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        conv = f"etcd-{uuid.uuid4().hex[:8]}"
        await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        stop = asyncio.Event()
        outcomes: list[tuple[float, str, float]] = []
        workers = [
            asyncio.create_task(churn(co, conv, name, stop, outcomes))
            for name in ("lock-a", "lock-a", "lock-b", "role-x", "role-x")
        ]
        async with asyncio.timeout(10):
            while len([o for o in outcomes if o[1] == "OK"]) < 20:
                await asyncio.sleep(0.05)

        killed_at = time.monotonic()
        etcd_cluster.leader().kill()
        async with asyncio.timeout(15):
            while not any(o[0] > killed_at + 0.1 and o[1] == "OK" for o in outcomes):
                await asyncio.sleep(0.05)
        resumed = min(o[0] + o[2] for o in outcomes if o[0] > killed_at + 0.1 and o[1] == "OK")
        stop.set()
        await asyncio.gather(*workers)
        assert resumed - killed_at < 5.0, resumed - killed_at
        assert all(o[2] < CALL_BOUND_S * 2 for o in outcomes)  # lock + release: two calls
        assert {o[1] for o in outcomes} <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}

        # Now lose quorum: one of the two survivors goes too.
        survivors = [m for m in etcd_cluster.members if m.proc and m.proc.poll() is None]
        survivors[0].kill()
        session_call = co.OpenSession(pb.OpenSessionRequest(conversation_id=conv), timeout=10)
        started = time.monotonic()
        try:
            await session_call
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert details(error)[0].reason == "BACKEND_UNAVAILABLE"
        else:
            raise AssertionError("a session opened without an etcd quorum")
        assert time.monotonic() - started < CALL_BOUND_S
