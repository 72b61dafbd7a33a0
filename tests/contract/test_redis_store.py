"""What only the Redis store can get wrong: outages, restarts, lost scripts, its key layout.

Tests that stop or restart Redis start their own redis-server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.coordination import Holder, SessionInfo, acquired, session_ended
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    CommitResult,
    ConversationRef,
    Delete,
    Event,
    Fence,
    FenceKind,
    Put,
    WriteBatch,
)
from tests.contract.test_store_contract import Heard
from tests.servers import RedisServer

TIMEOUT_S = 0.5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    # Durable, so a restart brings the data back but not the loaded scripts.
    server = RedisServer(tmp_path / "redis", durable=True).start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with await RedisStore.connect(own_redis.url, timeout_s=TIMEOUT_S) as store:
        yield store


@pytest.fixture
async def ref(store: RedisStore) -> ConversationRef:
    ref = ConversationRef("tenant", f"c-{uuid.uuid4().hex[:8]}")
    await store.create_conversation(ref, {}, 0, 1_000)
    return ref


async def put(store: RedisStore, ref: ConversationRef, key: str, now: int = 2_000) -> CommitResult:
    batch = WriteBatch((), (Put(key, b"v"),))
    return await store.commit(ref, batch, fingerprint(batch), now)


def every_call(store: RedisStore, ref: ConversationRef) -> list[Callable[[], Awaitable[object]]]:
    other = ConversationRef(ref.tenant, "other")
    return [
        lambda: store.create_conversation(other, {}, 0, 1),
        lambda: store.get_conversation(ref),
        lambda: store.list_conversations(ref.tenant, "", 10),
        lambda: store.delete_conversation(other),
        lambda: put(store, ref, "k"),
        lambda: store.read(ref, "", "", 10),
        lambda: store.events(ref, 1, 10, 10),
        lambda: store.head(ref),
        lambda: store.expire_due(10_000, 10),
        lambda: store.watch(other),
    ]


async def assert_unavailable(store: RedisStore, ref: ConversationRef) -> None:
    """Every call raises BackendUnavailable, none later than the timeout (plus slack)."""

    async def timed(call: Callable[[], Awaitable[object]]) -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            await call()
        except BaseException as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    outcomes = await asyncio.gather(*(timed(call) for call in every_call(store, ref)))
    for error, took in outcomes:
        assert isinstance(error, BackendUnavailable), error
        assert took < TIMEOUT_S + 0.5


async def recovered(store: RedisStore, ref: ConversationRef) -> int:
    """Waits for the store to answer again; returns the head revision."""
    async with asyncio.timeout(10):
        while True:
            try:
                head, _ = await store.head(ref)
                return head
            except BackendUnavailable:
                await asyncio.sleep(0.05)


async def test_connect_to_nothing_is_unavailable(tmp_path: Path) -> None:
    url = RedisServer(tmp_path).url  # a free port, never started
    with pytest.raises(BackendUnavailable):
        await RedisStore.connect(url, timeout_s=TIMEOUT_S)


async def test_a_dead_redis_fails_every_call_fast_and_the_store_recovers(
    own_redis: RedisServer, store: RedisStore, ref: ConversationRef
) -> None:
    await put(store, ref, "before")
    own_redis.kill()
    await assert_unavailable(store, ref)

    own_redis.start()  # same port, data from the AOF, no scripts loaded
    assert await recovered(store, ref) == 1
    assert (await put(store, ref, "after")).revision == 2
    assert [e.key for e in (await store.read(ref, "", "", 10)).entries] == ["after", "before"]


async def test_a_hung_redis_fails_every_call_within_the_timeout(
    own_redis: RedisServer, store: RedisStore, ref: ConversationRef
) -> None:
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        await assert_unavailable(store, ref)
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    await recovered(store, ref)
    assert (await put(store, ref, "k")).revision == 1


async def test_flushed_scripts_are_loaded_again(
    own_redis: RedisServer, store: RedisStore, ref: ConversationRef
) -> None:
    await put(store, ref, "a")
    async with Redis.from_url(own_redis.url) as admin:
        await admin.script_flush()
    assert (await put(store, ref, "b")).revision == 2
    assert len((await store.read(ref, "", "", 10)).entries) == 2


async def test_watchers_are_woken_after_a_reconnect(
    own_redis: RedisServer, store: RedisStore, ref: ConversationRef
) -> None:
    heard = Heard()
    store.listen(heard)
    await store.watch(ref)
    own_redis.kill()
    own_redis.start()
    mark = len(heard.calls)
    # Events published while the subscription was down are lost: the None says "read the log".
    await heard.until(lambda: (ref, None) in heard.calls[mark:])
    await recovered(store, ref)
    result = await put(store, ref, "k")

    def delivered() -> list[Event]:
        return [e for _, e in heard.calls if e is not None and e.revision == result.revision]

    await heard.until(lambda: bool(delivered()))


async def test_list_skips_ids_whose_conversation_is_gone(
    own_redis: RedisServer, store: RedisStore
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    for conversation_id in ["a", "c", "e"]:
        await store.create_conversation(ConversationRef(tenant, conversation_id), {}, 0, 1)
    async with Redis.from_url(own_redis.url) as admin:
        # What a create or delete cut short between its two steps leaves behind.
        await admin.zadd(f"bb:conversations:{tenant}", {"b": 0, "d": 0, "f": 0})
    page, more = await store.list_conversations(tenant, "", 2)
    assert ([c.ref.id for c in page], more) == (["a", "c"], True)
    page, more = await store.list_conversations(tenant, "c", 2)
    assert ([c.ref.id for c in page], more) == (["e"], False)
    page, more = await store.list_conversations(tenant, "", 3)
    assert ([c.ref.id for c in page], more) == (["a", "c", "e"], False)


async def test_a_conversation_keeps_its_keys_under_one_hash_tag(own_redis: RedisServer) -> None:
    async with await RedisStore.connect(own_redis.url, retention=3, prefix="lay") as store:
        ref = ConversationRef("acme", "conv-1")
        await store.create_conversation(ref, {}, 0, 1)
        holder = Holder(ref, FenceKind.LOCK, "l", "s1", "agent", 7)
        await store.commit(ref, acquired(holder), fingerprint(acquired(holder)), 1)
        batch = WriteBatch(
            (),
            (Put("t", b"v", ttl_ms=60_000, session_id="s1"),),
            request_id="r",
            fence=Fence(FenceKind.LOCK, "l", 7),
        )
        await store.commit(ref, batch, fingerprint(batch), 2)
        ended = session_ended(SessionInfo(ref, "s2", "agent", 1), expired=False)
        await store.commit(ref, ended, fingerprint(ended), 3)
        for now in range(4, 7):
            await put(store, ref, "k", now)
    async with Redis.from_url(own_redis.url) as admin:
        keys = {k.decode() async for k in admin.scan_iter("lay:*")}
        tagged = {k for k in keys if k.startswith("lay:{acme/conv-1}:")}
        # The tenant's usage (quotas) is the one key a commit touches outside the tag.
        assert keys - tagged == {"lay:conversations:acme", "lay:ttl", "lay:usage:{acme}"}
        assert {k.rsplit(":", 1)[1] for k in tagged} == set("mdklijxfbe")
        log = "lay:{acme/conv-1}:l"
        assert await admin.type(log) == b"stream"
        assert [i for i, _ in await admin.xrange(log)] == [b"4-0", b"5-0", b"6-0"]
        assert await admin.hmget("lay:{acme/conv-1}:m", ["rev", "compact"]) == [b"6", b"3"]
        assert await admin.zscore("lay:ttl", "acme/conv-1") == 60_002


async def test_the_binding_index_holds_exactly_the_bound_entries(own_redis: RedisServer) -> None:
    """Stale members would be filtered out when a session ends, so only the layout shows a leak."""
    async with await RedisStore.connect(own_redis.url, prefix="bind") as store:
        ref = ConversationRef("acme", "conv-1")
        await store.create_conversation(ref, {}, 0, 1)

        async def write(now: int, *ops: Put | Delete) -> None:
            batch = WriteBatch((), ops)
            await store.commit(ref, batch, fingerprint(batch), now)

        await write(2, Put("a", b"", session_id="s1"), Put("b", b"", session_id="s1"))
        await write(3, Put("b", b"unbound"), Put("c", b"", session_id="s1"))
        await write(4, Put("c", b"rebound", session_id="s2"), Put("d", b"", session_id="s1"))
        await write(5, Delete("d"), Put("t", b"", ttl_ms=5, session_id="s1"))
        await write(6, Put("x/k", b"", session_id="s"), Put("k", b"", session_id="s/x"))
        assert await store.expire_due(10, 10) == 1
        members = sorted([b"s1\x00a", b"s2\x00c", b"s\x00x/k", b"s/x\x00k"])
        async with Redis.from_url(own_redis.url) as admin:
            assert sorted(await admin.zrange("bind:{acme/conv-1}:b", 0, -1)) == members

            ended = session_ended(SessionInfo(ref, "s1", "agent", 1), expired=False)
            await store.commit(ref, ended, fingerprint(ended), 20)
            assert sorted(await admin.zrange("bind:{acme/conv-1}:b", 0, -1)) == [
                m for m in members if not m.startswith(b"s1\x00")
            ]
            assert await admin.zrange("bind:{acme/conv-1}:e", 0, -1, withscores=True) == [
                (b"s1", 20.0)
            ]


@pytest.mark.parametrize("backend", ["redis_server", "redis_cluster"])
async def test_a_store_closed_right_after_connecting_closes(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Closing while the pub/sub reader is still connecting: on Python 3.11 the
    cancellation can land as the connection completes and be swallowed inside
    redis-py's connect (asyncio.wait_for's race). The reader must stop anyway.
    Each yield count moves the close to another point of the reader's start."""
    url = request.getfixturevalue(backend).url
    for yields in range(12):
        store = await RedisStore.connect(url, timeout_s=2.0)
        for _ in range(yields):
            await asyncio.sleep(0)
        # Not asyncio.timeout: a swallowed cancellation would hide the hang.
        closing = asyncio.create_task(store.aclose())
        done, _ = await asyncio.wait({closing}, timeout=15)
        assert closing in done, f"aclose hung after {yields} yields"
        closing.result()
        readers = [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-pubsub")]
        assert all(t.done() for t in readers), f"a reader outlived aclose ({yields} yields)"


async def test_more_reads_at_once_than_connections_wait_their_turn(own_redis: RedisServer) -> None:
    # redis-py's pool refuses ("Too many connections") once all its connections
    # are taken; the store makes the extra calls wait instead, as a burst of
    # thousands of subscribers' snapshot reads needs.
    async with await RedisStore.connect(own_redis.url, connections=4) as store:
        ref = ConversationRef("acme", "many-readers")
        await store.create_conversation(ref, {}, 0, 1)
        await put(store, ref, "k", 2)
        snapshots = await asyncio.gather(*(store.read(ref, "", "", 10) for _ in range(500)))
        assert {(s.revision, tuple(e.key for e in s.entries)) for s in snapshots} == {(1, ("k",))}
        async with Redis.from_url(own_redis.url) as admin:
            clients = await admin.client_list()
        # Ours: at most the 4 the reads shared, the pipe, the notification reader.
        assert len(clients) <= 4 + 2 + 1  # + the admin connection itself
