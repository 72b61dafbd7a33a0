"""The health-only listener (`health_listen`) and the server's max connection age."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.integration.conftest import ServerFactory
from tests.servers import EtcdCluster, RedisServer, ServerProcess, free_port, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def test_health_port_serves_health_and_nothing_else(make_server: ServerFactory) -> None:
    async with make_server(health_listen="127.0.0.1:0") as running:
        assert running.health_port and running.health_port != running.port
        health_address = f"127.0.0.1:{running.health_port}"
        assert await check(health_address) == SERVING
        assert await check(health_address, "blackboard.v1.Blackboard") == SERVING
        request = pb.CreateConversationRequest(id=f"t-{uuid.uuid4().hex[:12]}")
        async with grpc.aio.insecure_channel(health_address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pb_grpc.BlackboardStub(channel).CreateConversation(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(running.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await pb_grpc.BlackboardStub(channel).GetConversation(
                    pb.GetConversationRequest(id=request.id), timeout=5
                )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_port_follows_the_main_servers_status(make_server: ServerFactory) -> None:
    async with make_server(health_listen="127.0.0.1:0") as running:
        health_address = f"127.0.0.1:{running.health_port}"
        await running.health.set("", NOT_SERVING)
        assert await check(health_address) == NOT_SERVING
        assert await check(running.address) == NOT_SERVING
        await running.health.set("", SERVING)
        assert await check(health_address) == SERVING


async def test_no_health_port_unless_asked(make_server: ServerFactory) -> None:
    async with make_server() as running:
        assert running.health_port == 0
        assert await check(running.address) == SERVING


async def test_old_connections_are_sent_away(make_server: ServerFactory) -> None:
    """After max_connection_age_s the server sends GOAWAY: the channel leaves READY and a
    new call opens a new connection (to whichever replica the balancer picks)."""
    async with (
        make_server(max_connection_age_s=0.5, max_connection_age_grace_s=0.5) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        async with asyncio.timeout(20):
            while channel.get_state() == grpc.ChannelConnectivity.READY:
                await asyncio.sleep(0.05)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == SERVING


@pytest.mark.timeout(90)
def test_workers_share_the_health_port(
    redis_server: RedisServer, etcd: EtcdCluster, tmp_path: Path
) -> None:
    """With --workers, every worker binds the health port (SO_REUSEPORT, like listen)."""
    health_address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        tmp_path,
        "--workers",
        "2",
        "--health-listen",
        health_address,
        "--redis-url",
        redis_server.url,
        "--durability",
        "fast",  # the test Redis has no AOF
        "--etcd-endpoints",
        ",".join(etcd.endpoints),
        "--etcd-prefix",
        f"/bb-{uuid.uuid4().hex[:8]}",
        "--shutdown-grace-s",
        "3",
    ).start()
    log = tmp_path / "server.log"
    try:

        def serving_workers() -> list[dict[str, object]]:
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            return [x for x in lines if x.get("event") == "serving"]

        wait_for(lambda: len(serving_workers()) == 2, 30, "two serving workers")
        port = int(health_address.rpartition(":")[2])
        assert [w["health_port"] for w in serving_workers()] == [port, port]
        assert '"worker exited' not in log.read_text()
        with grpc.insecure_channel(health_address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == SERVING
    finally:
        server.stop()
