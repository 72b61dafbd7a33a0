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

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.app import serve
from blackboard_server.config import Settings
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    Compare,
    ConversationRef,
    Operator,
    Put,
    Target,
    WriteBatch,
)
from blackboard_server.services.hub import LATEST
from tests.integration.test_stream import Recorder
from tests.servers import RedisPair

pytestmark = pytest.mark.timeout(60)
WAIT_MS = 500
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


async def test_a_refused_write_answers_only_with_what_the_replica_confirmed(
    pair: RedisPair,
) -> None:
    """A compare that fails against an unconfirmed write does not report its version:
    the refusal is confirmed like a read, even on a connection that wrote nothing.

    (Redis 7.0 lets WAIT cover everything applied before it, written on this
    connection or not; from 7.2 it covers only what the connection's own commands
    propagated, which the confirming SET, counted here, provides.)"""
    async with (
        await RedisStore.connect(pair.primary.url, timeout_s=2.0, durability=DURABLE) as one,
        await RedisStore.connect(pair.primary.url, timeout_s=2.0, durability=DURABLE) as two,
    ):
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await one.create_conversation(ref, {}, 0, 1_000)
        pair.pause()
        try:
            with pytest.raises(BackendUnavailable):
                await commit(one, ref, "a", "r-1")  # applied on the primary, unconfirmed
            absent = Compare("a", Target.VERSION, Operator.EQUAL, 0)
            refused = WriteBatch((absent,), (Put("a", b"2"),))
            before = await commands(pair)
            with pytest.raises(BackendUnavailable):
                await two.commit(ref, refused, fingerprint(refused), 3_000)
            after = await commands(pair)
        finally:
            pair.resume()
    assert after["set"] - before.get("set", 0) == 1


async def four_reads(store: RedisStore, ref: ConversationRef) -> None:
    await store.read(ref, "", "", 10)
    await store.events(ref, 1, 1, 10)
    await store.head(ref)
    await store.get_conversation(ref)


async def idle_poll(store: RedisStore, ref: ConversationRef) -> None:
    """What the hub reads for an idle subscription: nothing after the head."""
    assert await store.events(ref, 2, LATEST, 10) == ([], 0)


async def waits_and_sets(
    pair: RedisPair,
    durability: Durability,
    reads: Callable[[RedisStore, ConversationRef], Awaitable[None]] = four_reads,
) -> tuple[int, int]:
    """How many WAITs and SETs the primary ran for `reads` of a conversation at revision 1."""
    async with await RedisStore.connect(
        pair.primary.url, timeout_s=2.0, durability=durability
    ) as store:
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        await commit(store, ref, "a", "r-1")
        before = await commands(pair)
        await reads(store, ref)
        after = await commands(pair)
    return (
        after.get("wait", 0) - before.get("wait", 0),
        after.get("set", 0) - before.get("set", 0),
    )


async def test_a_confirmed_read_costs_one_write_and_one_wait(pair: RedisPair) -> None:
    # The SET is the confirming write, inside each read's script.
    assert await waits_and_sets(pair, DURABLE) == (4, 4)


async def test_a_poll_that_finds_nothing_new_writes_nothing(pair: RedisPair) -> None:
    """An idle subscription's poll is not confirmed: it says only that nothing is new."""
    assert await waits_and_sets(pair, DURABLE, idle_poll) == (1, 0)


async def test_fast_mode_reads_neither_write_nor_wait(pair: RedisPair) -> None:
    assert await waits_and_sets(pair, Durability()) == (0, 0)
    assert await waits_and_sets(pair, Durability(), idle_poll) == (0, 0)


async def test_through_the_server_a_subscriber_is_sent_only_confirmed_writes(
    pair: RedisPair,
) -> None:
    """The hub does not pass on a notification's event: a write the replica has not
    confirmed reaches no subscriber, and reads of it fail UNAVAILABLE, until it is
    confirmed."""
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=pair.primary.url,
        durability="durable",
        redis_wait_replicas=1,
        redis_timeout_s=2.0,
        redis_wait_timeout_ms=WAIT_MS,
        uvloop=False,
    )
    conv = f"c-{uuid.uuid4().hex[:8]}"
    async with serve(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        bb = pb_grpc.BlackboardStub(channel)
        await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        recorder = Recorder(bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 2))
        await bb.Put(pb.PutRequest(conversation_id=conv, key="a", value=pb.Value(data=b"1")))
        async with asyncio.timeout(10):
            while not recorder.events:
                await asyncio.sleep(0.01)

        pair.pause()
        try:
            b = pb.PutRequest(conversation_id=conv, key="b", value=pb.Value(data=b"2"))
            with pytest.raises(grpc.aio.AioRpcError) as put:
                await bb.Put(b, timeout=5)
            assert put.value.code() == grpc.StatusCode.UNAVAILABLE
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as get:
                await bb.Get(pb.GetRequest(conversation_id=conv, key="b"), timeout=5)
            assert get.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 2.0
            # Its notification went out long ago (published with the write): not passed on.
            await asyncio.sleep(0.5)
            assert recorder.revisions == [1]
        finally:
            pair.resume()
        # Confirmed once the replica has it: the subscriber gets it, Get reads it.
        async with asyncio.timeout(20):
            await reading
        assert recorder.revisions == [1, 2] and recorder.error is None
        got = await bb.Get(pb.GetRequest(conversation_id=conv, key="b"), timeout=5)
        assert got.entry.value.data == b"2" and got.entry.mod_revision == 2
