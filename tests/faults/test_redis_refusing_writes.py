"""Redis refusing writes for a while, as a read-only replica (a failover in progress) or
out of memory: writes fail with BackendUnavailable, which callers may retry, and work
again once Redis takes them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.model import ConversationRef, Put, WriteBatch
from tests.servers import RedisServer, free_port


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with await RedisStore.connect(own_redis.url, timeout_s=1.0) as store:
        yield store


async def test_writes_to_a_replica_are_unavailable(
    own_redis: RedisServer, store: RedisStore
) -> None:
    ref = ConversationRef("t", "c")
    await store.create_conversation(ref, {}, 0, 1)
    batch = WriteBatch((), (Put("k", b"v"),))
    async with Redis.from_url(own_redis.url) as admin:
        await admin.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there
        try:
            with pytest.raises(BackendUnavailable, match="read only replica"):
                await store.commit(ref, batch, "", 2)
            with pytest.raises(BackendUnavailable, match="read only replica"):
                await store.create_conversation(ConversationRef("t", "d"), {}, 0, 2)
        finally:
            await admin.replicaof("NO", "ONE")
    assert (await store.commit(ref, batch, "", 3)).revision == 1


async def test_writes_to_a_redis_out_of_memory_are_unavailable(
    own_redis: RedisServer, store: RedisStore
) -> None:
    ref = ConversationRef("t", "c")
    async with Redis.from_url(own_redis.url) as admin:
        await admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(BackendUnavailable, match="used memory"):
                await store.create_conversation(ref, {}, 0, 1)
        finally:
            await admin.config_set("maxmemory", "0")
    await store.create_conversation(ref, {}, 0, 1)
