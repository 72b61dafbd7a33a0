"""The server on a three-primary Redis Cluster: conversations spread over the
shards, listing spans them, and subscribers see every write in order through
sharded pub/sub."""

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
from blackboard_server.adapters.redis_codec import Keys
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from blackboard_server.domain.model import ConversationRef
from tests.integration.test_redis_access import start_fails
from tests.integration.test_stream import Recorder, wait_until
from tests.servers import RedisClusterServers, RedisServer

pytestmark = pytest.mark.timeout(120)
CONVERSATIONS = 30
WRITES = 40


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def server(redis_cluster: RedisClusterServers, tenant: str) -> AsyncIterator[RunningServer]:
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=redis_cluster.url,
        durability="fast",
        tenant=tenant,
        progress_interval_s=0.5,
        uvloop=False,
    )
    async with serve(settings) as running:
        yield running


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.BlackboardStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.BlackboardStub(channel)


async def test_conversations_spread_over_the_shards_and_list_across_them(
    redis_cluster: RedisClusterServers, stub: pb_grpc.BlackboardStub, tenant: str
) -> None:
    ids = sorted(f"c-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(CONVERSATIONS))
    for conversation_id in ids:
        await stub.CreateConversation(pb.CreateConversationRequest(id=conversation_id))
        await stub.Put(
            pb.PutRequest(conversation_id=conversation_id, key="k", value=pb.Value(data=b"v"))
        )

    owners = {
        redis_cluster.node_of(Keys.of("bb", ConversationRef(tenant, c)).meta).port for c in ids
    }
    assert owners == {n.port for n in redis_cluster.master_nodes()}
    for conversation_id in ids:  # each conversation's keys are on its owner only
        meta = Keys.of("bb", ConversationRef(tenant, conversation_id)).meta
        holders = [
            n.port
            for n in redis_cluster.nodes
            if redis_cluster.cli(n, "EXISTS", meta).strip() == "1"
        ]
        assert holders == [redis_cluster.node_of(meta).port]

    listed: list[str] = []
    token = ""
    while True:
        page = await stub.ListConversations(
            pb.ListConversationsRequest(page_size=5, page_token=token)
        )
        listed += [c.id for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert listed == ids
    assert all(
        c.revision == 1
        for c in (
            await stub.ListConversations(pb.ListConversationsRequest(page_size=100))
        ).conversations
    )


async def test_subscribers_on_every_shard_see_every_write_in_order(
    redis_cluster: RedisClusterServers, stub: pb_grpc.BlackboardStub, tenant: str
) -> None:
    ids = [f"s-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    for conversation_id in ids:
        await stub.CreateConversation(pb.CreateConversationRequest(id=conversation_id))
    recorders = [Recorder(stub, pb.SubscribeRequest(conversation_id=c)) for c in ids]
    reading = [
        asyncio.create_task(r.read(until=lambda r: len(r.events) >= WRITES)) for r in recorders
    ]
    await wait_until(lambda: all(r.synced is not None for r in recorders))

    # Sharded pub/sub: each channel is subscribed on its own shard, none with SUBSCRIBE.
    for conversation_id in ids:
        keys = Keys.of("bb", ConversationRef(tenant, conversation_id))
        owner = redis_cluster.node_of(keys.meta)
        assert keys.channel.decode() in redis_cluster.cli(owner, "PUBSUB", "SHARDCHANNELS")
    for node in redis_cluster.master_nodes():
        assert redis_cluster.cli(node, "PUBSUB", "CHANNELS", "bb:*").strip() == ""

    async def write(conversation_id: str) -> None:
        for n in range(WRITES):
            await stub.Put(
                pb.PutRequest(
                    conversation_id=conversation_id,
                    key=f"k{n % 5}",
                    value=pb.Value(data=str(n).encode()),
                )
            )

    await asyncio.gather(*(write(c) for c in ids))
    async with asyncio.timeout(30):
        await asyncio.gather(*reading)
    for recorder in recorders:
        assert recorder.error is None
        assert recorder.revisions == list(range(1, WRITES + 1))
        values = [e.changes[0].entry.value.data for e in recorder.events]
        assert values == [str(n).encode() for n in range(WRITES)]


def migrate_slot(cluster: RedisClusterServers, key: str, target: RedisServer) -> None:
    """Moves the key's slot to `target` as `redis-cli --cluster reshard` does, with a
    pause between moving the keys and handing the slot over (ASK and TRYAGAIN then)."""
    source = cluster.node_of(key)
    slot = cluster.cli(source, "CLUSTER", "KEYSLOT", key).strip()
    source_id = cluster.cli(source, "CLUSTER", "MYID").strip()
    target_id = cluster.cli(target, "CLUSTER", "MYID").strip()
    cluster.cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    cluster.cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = cluster.cli(source, "CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
    assert keys
    cluster.cli(source, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
    time.sleep(0.3)
    for node in cluster.master_nodes():
        cluster.cli(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_a_conversation_moved_to_another_shard_keeps_its_writes_and_subscribers(
    tmp_path: Path,
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    settings = Settings(
        listen="127.0.0.1:0", redis_url=cluster.url, durability="fast", uvloop=False
    )
    try:
        async with serve(settings) as server, grpc.aio.insecure_channel(server.address) as ch:
            bb = pb_grpc.BlackboardStub(ch)
            conv = f"moving-{uuid.uuid4().hex[:6]}"
            await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
            keys = Keys.of("bb", ConversationRef(settings.tenant, conv))
            source = cluster.node_of(keys.meta)
            target = next(n for n in cluster.master_nodes() if n.port != source.port)
            recorder = Recorder(bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
            total = 120  # and one more once the slot has moved
            reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= total + 1))

            async def write() -> None:
                for n in range(total):
                    if n == 30:
                        moving = asyncio.create_task(
                            asyncio.to_thread(migrate_slot, cluster, keys.meta, target)
                        )
                    value = pb.Value(data=str(n).encode())
                    await bb.Put(
                        pb.PutRequest(conversation_id=conv, key="k", value=value), timeout=10
                    )
                    await asyncio.sleep(0.01)
                async with asyncio.timeout(30):
                    await moving

            await write()
            await wait_until(lambda: len(recorder.events) == total)
            # The server's subscription followed the slot: SSUBSCRIBE on the new owner.
            channel = keys.channel.decode()
            await wait_until(
                lambda: channel in cluster.cli(target, "PUBSUB", "SHARDCHANNELS"), timeout=10
            )
            assert channel not in cluster.cli(source, "PUBSUB", "SHARDCHANNELS")
            value = pb.Value(data=str(total).encode())
            await bb.Put(pb.PutRequest(conversation_id=conv, key="k", value=value), timeout=10)
            async with asyncio.timeout(30):
                await reading
        assert cluster.node_of(keys.meta).port == target.port
        slot = cluster.cli(source, "CLUSTER", "KEYSLOT", keys.meta).strip()
        assert cluster.cli(source, "CLUSTER", "COUNTKEYSINSLOT", slot).strip() == "0"
        assert cluster.cli(target, "EXISTS", keys.meta).strip() == "1"
        assert recorder.error is None
        assert recorder.revisions == list(range(1, total + 2))
        assert [e.changes[0].entry.value.data for e in recorder.events] == [
            str(n).encode() for n in range(total + 1)
        ]
    finally:
        cluster.stop()


@pytest.mark.parametrize(
    ("flags", "quotas_file", "refused"),
    [
        (("--quota-conversations", "10"), "", "quota_conversations: not supported"),
        (("--quota-bytes", "1000"), "", "quota_bytes: not supported"),
        ((), "[tenants.t1]\nbytes = 5\n", "tenants.t1.bytes: not supported"),
    ],
)
def test_tenant_wide_quotas_refuse_to_start_on_a_cluster(
    redis_cluster: RedisClusterServers,
    tmp_path: Path,
    flags: tuple[str, ...],
    quotas_file: str,
    refused: str,
) -> None:
    """A tenant's conversations span slots: the cluster cannot count them (docs/quotas.md)."""
    extra = list(flags)
    if quotas_file:
        (tmp_path / "quotas.toml").write_text(quotas_file)
        extra += ["--quotas-file", str(tmp_path / "quotas.toml")]
    before = stored(redis_cluster)
    result = start_fails(tmp_path, "--redis-url", redis_cluster.url, "--durability", "fast", *extra)
    lines = [line for line in result.stderr.splitlines() if "not supported" in line]
    assert len(lines) == 1 and refused in lines[0] and "Redis Cluster" in lines[0]
    assert "Traceback" not in result.stderr
    assert stored(redis_cluster) == before  # refused before writing anything


def stored(cluster: RedisClusterServers) -> list[str]:
    return [cluster.cli(node, "DBSIZE").strip() for node in cluster.master_nodes()]
