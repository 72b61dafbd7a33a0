"""The stores under contract: every test in this folder runs against each."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from blackboard_server.adapters.memory import MemoryStore
from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.model import ConversationRef
from blackboard_server.ports import StateStore

# Small, so that a handful of writes exercises trimming of the log.
RETENTION = 20


@pytest.fixture(params=["memory", "redis", "redis-cluster", "redis-replicated"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        memory = MemoryStore(retention=RETENTION)
        yield memory
        await memory.aclose()
        return
    # The same tests on one Redis, on a three-primary Redis Cluster, and on a
    # durable primary whose writes and reads its replica confirms (WAIT).
    durability = Durability()
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    elif request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_pair").primary.url
        durability = Durability("durable", wait_replicas=1, wait_timeout_ms=1000)
    # Its own prefix gives each test its own expiry index: expire_due sees only this test's keys.
    async with await RedisStore.connect(
        url,
        retention=RETENTION,
        prefix=f"t-{uuid.uuid4().hex}",
        timeout_s=2.0,
        durability=durability,
    ) as redis:
        yield redis


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def ref(store: StateStore, tenant: str) -> ConversationRef:
    conversation = ConversationRef(tenant, f"c-{uuid.uuid4().hex[:12]}")
    await store.create_conversation(conversation, {"topic": "tests"}, 0, now_ms=1_000)
    return conversation
