"""Durable mode with a replica: writes and reads count only once the replica has them.

One Redis primary with one replica (both AOF always). While the replica is
stopped, a write runs on the primary but is not confirmed: it fails with
BackendUnavailable and outcome "unknown". Retried with the same request id
once the replica is back, it returns the first attempt's result, now
confirmed, and writes nothing new.

Reads are confirmed the same way (redis_store.py): while the replica is
stopped every read fails BackendUnavailable, without an outcome and without
returning what it read; in fast mode reads neither write nor WAIT.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import ConversationRef, Put, WriteBatch
from tests.servers import RedisPair

pytestmark = pytest.mark.timeout(60)
WAIT_MS = 300
DURABLE = Durability("durable", check=True, wait_replicas=-1, wait_timeout_ms=WAIT_MS)  # auto: 1


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[RedisPair]:
    pair = RedisPair(tmp_path).start()
    yield pair
    pair.stop()


async def commit(store: RedisStore, ref: ConversationRef, key: str, request_id: str) -> int:
    batch = WriteBatch((), (Put(key, key.encode()),), request_id=request_id)
    return (await store.commit(ref, batch, fingerprint(batch), 2_000)).revision


async def commands(pair: RedisPair) -> dict[str, int]:
    """How often the primary ran each command."""
    async with Redis.from_url(pair.primary.url) as client:
        stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


async def test_a_write_its_replica_does_not_confirm_is_unavailable_with_an_unknown_outcome(
    pair: RedisPair,
) -> None:
    async with await RedisStore.connect(
        pair.primary.url, timeout_s=2.0, durability=DURABLE
    ) as store:
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        first = WriteBatch((), (Put("a", b"1"),), request_id="r-1")
        assert (await store.commit(ref, first, fingerprint(first), 2_000)).revision == 1

        pair.pause()
        second = WriteBatch((), (Put("b", b"2"),), request_id="r-2")
        with pytest.raises(BackendUnavailable) as raised:
            await store.commit(ref, second, fingerprint(second), 3_000)
        assert raised.value.metadata == {"outcome": "unknown"}
        pair.resume()
        # Retried as a client would, with the same request id, until the replica
        # (catching up after its pause) confirms.
        for attempt in range(20):
            try:
                again = await store.commit(ref, second, fingerprint(second), 4_000 + attempt)
                break
            except BackendUnavailable as error:
                assert error.metadata == {"outcome": "unknown"}
        assert again.replayed and again.revision == 2
        assert await store.head(ref) == (2, 0)


async def test_a_read_its_replica_does_not_confirm_is_unavailable_and_returns_nothing(
    pair: RedisPair,
) -> None:
    async with await RedisStore.connect(
        pair.primary.url, timeout_s=2.0, durability=DURABLE
    ) as store:
        assert store.confirmed
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {"topic": "x"}, 0, 1_000)
        await commit(store, ref, "a", "r-1")
        before = (
            await store.get_conversation(ref),
            await store.head(ref),
            await store.read(ref, "", "", 10),
            await store.events(ref, 1, 1, 10),
        )
        reads: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get_conversation(ref),
            lambda: store.head(ref),
            lambda: store.read(ref, "", "", 10),
            lambda: store.read(ref, "a", "", 1, exact=True),
            lambda: store.events(ref, 1, 1, 10),
        ]
        pair.pause()
        try:
            for read in reads:
                started = time.monotonic()
                with pytest.raises(BackendUnavailable, match="the read was confirmed by 0 of 1"):
                    await read()
                assert time.monotonic() - started < 2.0  # the WAIT timeout, not a hang
        finally:
            pair.resume()
        # Nothing changed: the same answers once the replica is back.
        for _ in range(50):
            try:
                after = (
                    await store.get_conversation(ref),
                    await store.head(ref),
                    await store.read(ref, "", "", 10),
                    await store.events(ref, 1, 1, 10),
                )
                break
            except BackendUnavailable:  # the replica still catching up
                continue
        assert after == before


async def test_an_unconfirmed_write_is_not_read_until_confirmed(pair: RedisPair) -> None:
    """A write the replica has not confirmed is never what a read returns."""
    async with await RedisStore.connect(
        pair.primary.url, timeout_s=2.0, durability=DURABLE
    ) as store:
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        pair.pause()
        try:
            with pytest.raises(BackendUnavailable):
                await commit(store, ref, "a", "r-1")
            # It ran on the primary (revision 1 is there) but is not confirmed.
            async with Redis.from_url(pair.primary.url) as client:
                assert await client.hget(f"bb:{{t/{ref.id}}}:m", "rev") == b"1"
            with pytest.raises(BackendUnavailable):
                await store.head(ref)
            with pytest.raises(BackendUnavailable):
                await store.events(ref, 1, 1, 10)
        finally:
            pair.resume()


async def waits_and_sets_of_reads(pair: RedisPair, durability: Durability) -> tuple[int, int]:
    """How many WAITs and SETs the primary ran for four reads of one conversation."""
    async with await RedisStore.connect(
        pair.primary.url, timeout_s=2.0, durability=durability
    ) as store:
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        await commit(store, ref, "a", "r-1")
        before = await commands(pair)
        await store.read(ref, "", "", 10)
        await store.events(ref, 1, 1, 10)
        await store.head(ref)
        await store.get_conversation(ref)
        after = await commands(pair)
    return (
        after.get("wait", 0) - before.get("wait", 0),
        after.get("set", 0) - before.get("set", 0),
    )


async def test_a_confirmed_read_costs_one_write_and_one_wait(pair: RedisPair) -> None:
    # The SET is the confirming write, inside each read's script.
    assert await waits_and_sets_of_reads(pair, DURABLE) == (4, 4)


async def test_fast_mode_reads_neither_write_nor_wait(pair: RedisPair) -> None:
    assert await waits_and_sets_of_reads(pair, Durability()) == (0, 0)
