"""Quotas the store keeps in its atomic write step, against the memory and the Redis store.

Each rejection is QuotaExceeded naming the quota, and leaves the conversation
and the tenant's usage exactly as they were.

The tenant-wide quotas (conversations, bytes) and the tenant's usage are kept
on the memory store and on one Redis only: on a Redis Cluster a tenant's
conversations lie in many slots, which no script can reach at once, and the
server refuses those settings there (tests/unit/test_config.py,
tests/integration/test_redis_cluster.py). Entries per conversation run on every store.
"""

from __future__ import annotations

import pytest

from blackboard_server.domain.errors import QuotaExceeded
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    AppendChild,
    ConversationRef,
    Delete,
    Op,
    Put,
    WriteBatch,
)
from blackboard_server.domain.quota import StoreQuota, Usage
from blackboard_server.ports import StateStore
from tests.contract.test_store_contract import T, everything

# The stores that keep the tenant's usage: not a Redis Cluster (see above).
TENANT_WIDE = pytest.mark.parametrize("store", ["memory", "redis"], indirect=True)


async def commit(
    store: StateStore, ref: ConversationRef, quota: StoreQuota, *ops: Op, request_id: str = ""
) -> int:
    batch = WriteBatch((), ops, request_id=request_id)
    return (await store.commit(ref, batch, fingerprint(batch), T, quota)).revision


async def refused(
    store: StateStore, ref: ConversationRef, quota: StoreQuota, *ops: Op, request_id: str = ""
) -> QuotaExceeded:
    before, usage = await everything(store, ref), await store.usage(ref.tenant)
    with pytest.raises(QuotaExceeded) as caught:
        await commit(store, ref, quota, *ops, request_id=request_id)
    assert await everything(store, ref) == before
    assert await store.usage(ref.tenant) == usage
    return caught.value


@TENANT_WIDE
async def test_usage_counts_keys_and_values_of_live_entries(
    store: StateStore, ref: ConversationRef
) -> None:
    free = StoreQuota()
    assert await store.usage(ref.tenant) == Usage(1, 0)
    await commit(store, ref, free, Put("a", b"12345"), Put("bb", b"1"))
    assert await store.usage(ref.tenant) == Usage(1, 1 + 5 + 2 + 1)
    await commit(store, ref, free, Put("a", b"1"))  # replaced: 4 bytes fewer
    await commit(store, ref, free, Delete("bb"))
    assert await store.usage(ref.tenant) == Usage(1, 2)
    await commit(store, ref, free, Put("é", b"xy"))  # the key's UTF-8 bytes
    assert await store.usage(ref.tenant) == Usage(1, 2 + 2 + 2)
    other = ConversationRef(ref.tenant, ref.id + "-2")
    await store.create_conversation(other, {}, 0, T)
    await commit(store, other, free, Put("k", b"vv"))
    assert await store.usage(ref.tenant) == Usage(2, 6 + 3)
    await store.delete_conversation(ref)
    assert await store.usage(ref.tenant) == Usage(1, 3)


@TENANT_WIDE
async def test_expired_entries_free_their_bytes(store: StateStore, ref: ConversationRef) -> None:
    await commit(store, ref, StoreQuota(), Put("gone", b"1234", ttl_ms=10), Put("kept", b"1"))
    assert await store.usage(ref.tenant) == Usage(1, 8 + 5)
    assert await store.expire_due(T + 11, 100) == 1
    assert await store.usage(ref.tenant) == Usage(1, 5)


async def test_entries_per_conversation(store: StateStore, ref: ConversationRef) -> None:
    quota = StoreQuota(entries_per_conversation=2)
    await commit(store, ref, quota, Put("a", b""), Put("b", b""))
    error = await refused(store, ref, quota, Put("c", b""))
    assert error.metadata == {"quota": "entries_per_conversation", "limit": "2", "value": "3"}
    await refused(store, ref, quota, AppendChild("log", b"m"))
    # Replacing, deleting, and a batch that adds one while it removes one all pass.
    await commit(store, ref, quota, Put("a", b"again"))
    await commit(store, ref, quota, Delete("a"), Put("c", b""))
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["b", "c"]


@TENANT_WIDE
async def test_bytes_per_tenant_count_every_conversation(
    store: StateStore, ref: ConversationRef
) -> None:
    quota = StoreQuota(bytes=20)
    await commit(store, ref, quota, Put("a", b"x" * 9))  # 10 bytes
    other = ConversationRef(ref.tenant, ref.id + "-2")
    await store.create_conversation(other, {}, 0, T)
    await commit(store, other, quota, Put("b", b"x" * 9))  # 20: at the limit
    error = await refused(store, ref, quota, Put("c", b""))
    assert error.metadata == {"quota": "bytes", "limit": "20", "value": "21"}
    await refused(store, other, quota, Put("b", b"x" * 10), request_id="r-1")
    # A write that shrinks usage passes even at the limit, and frees room.
    await commit(store, ref, quota, Put("a", b"x"))
    await commit(store, other, quota, Put("c", b"x" * 7))
    assert await store.usage(ref.tenant) == Usage(2, 20)
    # Another tenant has its own usage.
    stranger = ConversationRef(ref.tenant + "-x", "c")
    await store.create_conversation(stranger, {}, 0, T)
    await commit(store, stranger, quota, Put("a", b"x" * 19))


async def test_a_refused_request_id_can_be_used_once_there_is_room(
    store: StateStore, ref: ConversationRef
) -> None:
    quota = StoreQuota(entries_per_conversation=1)
    await commit(store, ref, quota, Put("a", b""))
    await refused(store, ref, quota, Put("b", b""), request_id="r-1")
    await commit(store, ref, quota, Delete("a"))
    revision = await commit(store, ref, quota, Put("b", b""), request_id="r-1")
    assert (await store.read(ref, "b", "", 1, exact=True)).entries[0].mod_revision == revision


@TENANT_WIDE
async def test_conversations_per_tenant(store: StateStore, tenant: str) -> None:
    first, second = ConversationRef(tenant, "a"), ConversationRef(tenant, "b")
    await store.create_conversation(first, {}, 0, T, max_conversations=1)
    before = await store.list_conversations(tenant, "", 10)
    with pytest.raises(QuotaExceeded) as caught:
        await store.create_conversation(second, {}, 0, T, max_conversations=1)
    assert caught.value.metadata == {"quota": "conversations", "limit": "1", "value": "2"}
    assert await store.list_conversations(tenant, "", 10) == before
    assert await store.usage(tenant) == Usage(1, 0)
    # Other tenants are not counted; a delete makes room.
    await store.create_conversation(
        ConversationRef(tenant + "-x", "a"), {}, 0, T, max_conversations=1
    )
    await store.delete_conversation(first)
    await store.create_conversation(second, {}, 0, T, max_conversations=1)
    assert [c.ref for c in (await store.list_conversations(tenant, "", 10))[0]] == [second]
