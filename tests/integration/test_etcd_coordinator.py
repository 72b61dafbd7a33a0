"""The etcd coordinator against a real single-member etcd (the session's `etcd`):
what the contract suite does not reach — contention, the key layout, the exact
records of the recorder, and several replicas sharing the recording."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest

from blackboard_server.adapters.etcd import EtcdClient
from blackboard_server.adapters.etcd_coord import claims
from blackboard_server.adapters.etcd_coord.keys import Layout
from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator
from blackboard_server.domain.errors import LockHeld, NotHolder, SessionNotFound, WaitExpired
from blackboard_server.domain.model import ConversationRef, FenceKind, WriteBatch
from tests.servers import EtcdCluster

LOCK = FenceKind.LOCK
ELECTION = FenceKind.ELECTION
SHARDS = 8


def new_ref() -> ConversationRef:
    return ConversationRef(f"tenant/{uuid.uuid4().hex[:6]}", f"c-{uuid.uuid4().hex[:10]}")


async def eventually(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def connect(etcd: EtcdCluster, prefix: str, **options: object) -> EtcdCoordinator:
    return await EtcdCoordinator.connect(
        etcd.endpoints,
        timeout_s=3.0,
        prefix=prefix,
        shards=SHARDS,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def prefix() -> str:
    return f"/bb-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def layout(prefix: str) -> Layout:
    return Layout(prefix)


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd.endpoints, timeout_s=3.0) as c:
        yield c


async def queued(client: EtcdClient, queue: bytes, count: int) -> None:
    """Waits until `count` claims are in the queue."""
    async with asyncio.timeout(5):
        while (await client.range(queue, count_only=True)).count != count:
            await asyncio.sleep(0.01)


@pytest.fixture
async def coordinator(etcd: EtcdCluster, prefix: str) -> AsyncIterator[EtcdCoordinator]:
    coord = await connect(etcd, prefix)
    async with coord.running():
        yield coord
    await coord.aclose()


class Recorded:
    """What one coordinator's observations() yields, in order."""

    def __init__(self, coordinator: EtcdCoordinator) -> None:
        self.items: list[tuple[ConversationRef, WriteBatch]] = []
        self._task = asyncio.create_task(self._collect(coordinator))

    async def _collect(self, coordinator: EtcdCoordinator) -> None:
        async for item in coordinator.observations():
            self.items.append(item)

    def ids(self, ref: ConversationRef) -> list[str]:
        return [batch.request_id for r, batch in self.items if r == ref]

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def flush(coord: EtcdCoordinator, recorded: list[Recorded], ref: ConversationRef) -> str:
    """Lets a sentinel session expire: once its record is in, every earlier one is."""
    sentinel = await coord.open_session(ref, "sentinel", 1000)
    marker = f"coord:session:{sentinel.session_id}:ended"
    await eventually(lambda: any(marker in r.ids(ref) for r in recorded), timeout=10)
    return marker


# --- locks -------------------------------------------------------------------------------


async def test_contended_tokens_strictly_increase(coordinator: EtcdCoordinator) -> None:
    ref = new_ref()
    sessions = [await coordinator.open_session(ref, f"a{i}", 10_000) for i in range(5)]
    held: list[tuple[int, float, float]] = []  # token, got it, gave it back

    async def worker(session_id: str) -> None:
        for _ in range(6):
            holder = await coordinator.acquire(ref, LOCK, "hot", session_id, b"", 10_000)
            got = time.monotonic()
            await asyncio.sleep(0)  # let the others queue up behind it
            gave = time.monotonic()
            await coordinator.release(ref, LOCK, "hot", session_id, holder.token)
            held.append((holder.token, got, gave))

    async with asyncio.timeout(30):
        await asyncio.gather(*(worker(s.session_id) for s in sessions))
    by_time = sorted(held, key=lambda h: h[1])
    assert [t for t, _, _ in by_time] == sorted({t for t, _, _ in held})
    for (_, _, gave), (_, got, _) in itertools.pairwise(by_time):
        assert gave <= got  # nobody held while another did


async def test_hand_off_on_release_and_on_expiry(
    coordinator: EtcdCoordinator, client: EtcdClient, layout: Layout
) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", 10_000)
    b = await coordinator.open_session(ref, "b", 1000)  # not kept alive
    c = await coordinator.open_session(ref, "c", 10_000)
    first = await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    to_b = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 5000))
    await queued(client, layout.queue(ref, LOCK, "l"), 2)
    to_c = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", c.session_id, b"", 8000))
    await queued(client, layout.queue(ref, LOCK, "l"), 3)
    released_at = time.monotonic()
    await coordinator.release(ref, LOCK, "l", a.session_id, first.token)
    second = await asyncio.wait_for(to_b, 3)
    assert second.session_id == b.session_id and second.token > first.token
    # b is never kept alive: its TTL runs out while it holds, and c gets the lock.
    third = await asyncio.wait_for(to_c, 5)
    assert third.session_id == c.session_id and third.token > second.token
    assert time.monotonic() - released_at < 1.0 + 1.0 + 0.5  # TTL + 1 s (+ scheduling)
    with pytest.raises(NotHolder):
        await coordinator.release(ref, LOCK, "l", b.session_id, second.token)
    with pytest.raises(SessionNotFound):
        await coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 0)


async def test_try_once_and_wait_expiry(
    coordinator: EtcdCoordinator, client: EtcdClient, layout: Layout
) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", 10_000)
    b = await coordinator.open_session(ref, "b", 10_000)
    held = await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    with pytest.raises(LockHeld) as refused:
        await coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 0)
    assert refused.value.metadata == {"name": "l", "holder_agent_id": "a", "token": str(held.token)}
    began = time.monotonic()
    with pytest.raises(WaitExpired):
        await coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 400)
    assert 0.4 <= time.monotonic() - began < 0.4 + 0.5
    # Both attempts withdrew b's claim: only a's is left.
    queue = layout.queue(ref, LOCK, "l")
    assert [kv.key for kv in (await client.range(queue)).kvs] == [queue + a.session_id.encode()]


async def test_names_that_extend_each_other_are_separate(coordinator: EtcdCoordinator) -> None:
    ref = new_ref()
    names = ["a", "a/b", "a%2Fb", "a/", "é/ü"]
    sessions = [await coordinator.open_session(ref, f"s{i}", 10_000) for i in range(len(names))]
    held = [
        await coordinator.acquire(ref, LOCK, name, s.session_id, b"", 0)
        for name, s in zip(names, sessions, strict=True)
    ]
    for name, holder in zip(names, held, strict=True):
        assert await coordinator.holder(ref, LOCK, name) == holder
        assert await coordinator.held(ref, holder.session_id) == [holder]
    await coordinator.release(ref, LOCK, "a", sessions[0].session_id, held[0].token)
    assert await coordinator.holder(ref, LOCK, "a") is None
    assert await coordinator.holder(ref, LOCK, "a/b") == held[1]


async def test_session_ids_from_elsewhere_are_not_found(coordinator: EtcdCoordinator) -> None:
    ref, other = new_ref(), new_ref()
    s = await coordinator.open_session(ref, "a", 10_000)
    assert len(s.session_id) == 16 and int(s.session_id, 16) > 0
    for session_id in (s.session_id, "not-a-lease", "0" * 16):
        with pytest.raises(SessionNotFound):
            await coordinator.keep_alive(other, session_id)
        with pytest.raises(SessionNotFound):
            await coordinator.acquire(other, LOCK, "l", session_id, b"", 0)
        with pytest.raises(NotHolder):
            await coordinator.release(other, LOCK, "l", session_id, 1)
    assert await coordinator.keep_alive(ref, s.session_id) == 10_000


# --- elections ------------------------------------------------------------------------------


async def test_observe_elected_none_elected(coordinator: EtcdCoordinator) -> None:
    ref = new_ref()
    doomed = await coordinator.open_session(ref, "doomed", 1000)
    heir = await coordinator.open_session(ref, "heir", 10_000)
    seen: list[tuple[str, bytes] | None] = []
    async with coordinator.observe(ref, ELECTION, "lead/role") as updates:

        async def follow() -> None:
            async for h in updates:
                seen.append((h.agent_id, h.value) if h else None)

        following = asyncio.create_task(follow())
        try:
            await eventually(lambda: seen == [None])
            lead = await coordinator.acquire(ref, ELECTION, "lead/role", doomed.session_id, b"1", 0)
            await coordinator.proclaim(ref, "lead/role", doomed.session_id, lead.token, b"2")
            await eventually(lambda: None in seen[1:], timeout=4)  # its session expires
            await coordinator.acquire(ref, ELECTION, "lead/role", heir.session_id, b"h", 0)
            await eventually(lambda: seen[-1] == ("heir", b"h"))
        finally:
            following.cancel()
    # The proclamation may be folded into the election if it came before the first read.
    assert seen in (
        [None, ("doomed", b"1"), ("doomed", b"2"), None, ("heir", b"h")],
        [None, ("doomed", b"2"), None, ("heir", b"h")],
    )


# --- what the recorder writes down ---------------------------------------------------------


async def test_expired_holder_is_recorded_exactly(coordinator: EtcdCoordinator) -> None:
    ref = new_ref()
    recorded = Recorded(coordinator)
    try:
        doomed = await coordinator.open_session(ref, "doomed", 1000)
        heir = await coordinator.open_session(ref, "heir", 10_000)
        first = await coordinator.acquire(ref, LOCK, "l", doomed.session_id, b"", 0)
        second = await coordinator.acquire(ref, LOCK, "l", heir.session_id, b"", 5000)
        sentinel = await flush(coordinator, [recorded], ref)
        assert recorded.ids(ref) == [
            f"coord:session:{doomed.session_id}:ended",
            f"coord:lock:l:{first.token}:ended",
            f"coord:lock:l:{second.token}:acquired",
            sentinel,
        ]
        kinds = [b.coordination.kind.name for r, b in recorded.items if r == ref and b.coordination]
        assert kinds == ["AGENT_EXPIRED", "LOCK_EXPIRED", "LOCK_ACQUIRED", "AGENT_EXPIRED"]
    finally:
        await recorded.stop()


async def test_release_and_close_record_only_the_new_holder(
    coordinator: EtcdCoordinator, client: EtcdClient, layout: Layout
) -> None:
    """As the memory coordinator: the serving replica records releases and closes."""
    ref = new_ref()
    recorded = Recorded(coordinator)
    try:
        a, b, c = [await coordinator.open_session(ref, n, 10_000) for n in "abc"]
        first = await coordinator.acquire(ref, ELECTION, "r", a.session_id, b"a", 0)
        to_b = asyncio.create_task(
            coordinator.acquire(ref, ELECTION, "r", b.session_id, b"b", 5000)
        )
        await queued(client, layout.queue(ref, ELECTION, "r"), 2)
        with pytest.raises(LockHeld):
            await coordinator.acquire(ref, ELECTION, "r", c.session_id, b"x", 0)
        await coordinator.release(ref, ELECTION, "r", a.session_id, first.token)
        second = await asyncio.wait_for(to_b, 3)
        to_c = asyncio.create_task(
            coordinator.acquire(ref, ELECTION, "r", c.session_id, b"c", 5000)
        )
        await queued(client, layout.queue(ref, ELECTION, "r"), 2)
        await coordinator.close_session(ref, b.session_id)
        third = await asyncio.wait_for(to_c, 3)
        sentinel = await flush(coordinator, [recorded], ref)
        assert recorded.ids(ref) == [
            f"coord:election:r:{second.token}:acquired",
            f"coord:election:r:{third.token}:acquired",
            sentinel,
        ]
    finally:
        await recorded.stop()


async def test_two_replicas_record_each_conversation_once(
    etcd: EtcdCluster, prefix: str, client: EtcdClient, layout: Layout
) -> None:
    async with AsyncExitStack() as stack:
        one, two = [await connect(etcd, prefix, replica_id=n) for n in ("one", "two")]
        for replica in (one, two):
            stack.push_async_callback(replica.aclose)
        await stack.enter_async_context(one.running())
        await eventually(lambda: one.recorder.leads() == frozenset(range(SHARDS)))
        await stack.enter_async_context(two.running())
        for shard in range(SHARDS):
            await queued(client, layout.shard_queue(shard), 2)
        # Take half of the shards from the first replica, as a lost claim would:
        # it stops recording them, the second takes them over, the first queues again.
        moved = frozenset(range(SHARDS // 2))
        for shard in moved:
            holding = await claims.first(client, layout.shard_queue(shard))
            assert holding is not None and holding.value == b"one"
            await client.delete(holding.key)
        await eventually(lambda: two.recorder.leads() == moved, 3)
        await eventually(lambda: one.recorder.leads() == frozenset(range(SHARDS)) - moved, 3)

        recorded = [Recorded(r) for r in (one, two)]
        for r in recorded:
            stack.push_async_callback(r.stop)
        refs = [new_ref() for _ in range(16)]
        sessions = [
            await (one, two)[i % 2].open_session(ref, "a", 1000) for i, ref in enumerate(refs)
        ]

        def ended(ref: ConversationRef, session_id: str) -> list[int]:
            marker = f"coord:session:{session_id}:ended"
            return [i for i, r in enumerate(recorded) for m in r.ids(ref) if m == marker]

        await eventually(
            lambda: all(ended(r, s.session_id) for r, s in zip(refs, sessions, strict=True)), 10
        )
        by = [ended(ref, s.session_id) for ref, s in zip(refs, sessions, strict=True)]
        assert all(len(b) == 1 for b in by)  # recorded once, by one replica
        for ref, (i,) in zip(refs, by, strict=True):
            assert (one, two)[i].recorder.shard(ref) in (one, two)[i].recorder.leads()
        assert {i for (i,) in by} == {0, 1}  # 16 conversations: both had some


async def test_a_stopped_replica_hands_its_shards_over(etcd: EtcdCluster, prefix: str) -> None:
    first = await connect(etcd, prefix, replica_id="first")
    second = await connect(etcd, prefix, replica_id="second")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(first.aclose)
        stack.push_async_callback(second.aclose)
        first_running = first.running()
        await first_running.__aenter__()
        try:
            await eventually(lambda: len(first.recorder.leads()) == SHARDS)
            await stack.enter_async_context(second.running())
            recorded = Recorded(second)
            stack.push_async_callback(recorded.stop)
            ref = new_ref()
            s = await first.open_session(ref, "a", 1000)
            assert second.recorder.leads() == frozenset()
        finally:
            await first_running.__aexit__(None, None, None)
        # Stopped, it gave up its lease: the other replica takes every shard at once.
        await eventually(lambda: len(second.recorder.leads()) == SHARDS, 1)
        marker = f"coord:session:{s.session_id}:ended"
        await eventually(lambda: marker in recorded.ids(ref), 10)


_REPLICA = """
import asyncio, sys
from blackboard_server.adapters.etcd_coord import claims
from blackboard_server.adapters.etcd_coord.keys import Layout
from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator

async def main() -> None:
    coord = await EtcdCoordinator.connect(
        sys.argv[1].split(","), prefix=sys.argv[2], replica_id="doomed", replica_ttl_s=1
    )
    async with coord.running():
        while len(coord.recorder.leads()) < int(sys.argv[3]):
            await asyncio.sleep(0.01)
        print("leading", flush=True)
        async for ref, batch in coord.observations():
            print(batch.request_id, flush=True)

asyncio.run(main())
"""


async def test_a_killed_replicas_records_are_not_lost(
    etcd: EtcdCluster, prefix: str, client: EtcdClient
) -> None:
    """The next leader rereads from the dead one's saved progress: an expiry
    that happened while nobody led is still recorded."""
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _REPLICA,
        ",".join(etcd.endpoints),
        prefix,
        str(SHARDS),
        stdout=asyncio.subprocess.PIPE,
    )
    coordinator = await connect(etcd, prefix, replica_id="heir")
    try:
        assert doomed.stdout is not None
        assert await asyncio.wait_for(doomed.stdout.readline(), 10) == b"leading\n"
        async with asyncio.timeout(10):  # its progress is saved every 2 s
            while (await client.range(f"{prefix}/progress/", count_only=True)).count < SHARDS:
                await asyncio.sleep(0.05)
        ref = new_ref()
        s = await coordinator.open_session(ref, "a", 1000)
        doomed.kill()  # SIGKILL, before the session expires
        await doomed.wait()
        async with asyncio.timeout(5):
            while await coordinator.sessions(ref):
                await asyncio.sleep(0.05)
        # Only now does the heir start: what it knows of the past is the dead one's progress.
        async with coordinator.running():
            recorded = Recorded(coordinator)
            try:
                marker = f"coord:session:{s.session_id}:ended"
                await eventually(lambda: marker in recorded.ids(ref), 10)
            finally:
                await recorded.stop()
    finally:
        await coordinator.aclose()
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
