"""The etcd client against a real single-member etcd (the session's `etcd`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from blackboard_server.adapters.etcd import (
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdDeadline,
    EtcdLeaseLost,
    EtcdLeaseNotFound,
    EtcdNotLeader,
    EtcdUnavailable,
    Event,
    EventType,
    Op,
    PutResult,
    RangeResult,
    Watcher,
)
from tests.servers import EtcdCluster, free_port


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd.endpoints, timeout_s=5) as c:
        yield c


@pytest.fixture
def ns() -> str:
    return f"test/{uuid.uuid4().hex}/"


async def next_events(watcher: Watcher, count: int, within_s: float = 5) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(within_s):
        async for batch in watcher:
            events.extend(batch.events)
            if len(events) >= count:
                break
    return events


async def events_until(
    watcher: Watcher, done: Callable[[Event], bool], within_s: float = 5
) -> list[Event]:
    """Events up to and including the first one for which `done` holds."""
    events: list[Event] = []
    async with asyncio.timeout(within_s):
        async for batch in watcher:
            for event in batch.events:
                events.append(event)
                if done(event):
                    return events
    raise AssertionError("the watch ended early")


async def test_put_get_range_delete(client: EtcdClient, ns: str) -> None:
    first = await client.put(ns + "a", b"1")
    kv = await client.get(ns + "a")
    assert kv is not None
    assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (
        b"1",
        1,
        first.revision,
        first.revision,
    )

    second = await client.put(ns + "a", b"2", prev_kv=True)
    assert second.revision > first.revision
    assert second.prev_kv is not None and second.prev_kv.value == b"1"
    kv = await client.get(ns + "a")
    assert kv is not None and (kv.value, kv.version) == (b"2", 2)
    assert kv.create_revision == first.revision

    for name in ("c", "b", "d"):
        await client.put(ns + name, name.encode())
    everything = await client.range(ns)
    assert [k.key for k in everything.kvs] == [(ns + n).encode() for n in "abcd"]
    page = await client.range(ns, limit=2)
    assert [k.key for k in page.kvs] == [(ns + n).encode() for n in "ab"]
    assert page.more and page.count == 4
    rest = await client.range(ns, start=ns + "c")
    assert [k.key for k in rest.kvs] == [(ns + n).encode() for n in "cd"]
    assert (await client.range(ns, count_only=True)).count == 4

    one = await client.delete(ns + "a", prev_kv=True)
    assert one.deleted == 1 and one.prev_kvs[0].value == b"2"
    assert await client.get(ns + "a") is None
    assert await client.get(ns + "a", revision=second.revision) == kv
    assert (await client.delete(ns, prefix=True)).deleted == 3
    assert (await client.range(ns)).kvs == ()


async def test_txn_compares_and_branches(client: EtcdClient, ns: str) -> None:
    key = ns + "k"
    created = await client.txn([Compare.version(key, "==", 0)], [Op.put(key, b"v1")])
    assert created.succeeded
    again = await client.txn([Compare.version(key, "==", 0)], [Op.put(key, b"nope")], [Op.get(key)])
    assert not again.succeeded
    (current,) = again.responses
    assert isinstance(current, RangeResult) and current.kvs[0].value == b"v1"
    kv = current.kvs[0]

    stale = await client.txn([Compare.mod_revision(key, "<", kv.mod_revision)], [Op.delete(key)])
    assert not stale.succeeded
    by_value = await client.txn(
        [
            Compare.value(key, "==", b"v1"),
            Compare.create_revision(key, "==", kv.create_revision),
            Compare.version(key, ">", 0),
            Compare.mod_revision(key, "!=", 0),
        ],
        [Op.put(key, b"v2"), Op.put(ns + "other", b"o")],
    )
    assert by_value.succeeded
    assert all(isinstance(r, PutResult) for r in by_value.responses)
    both = await client.range(ns)
    # one transaction, one revision for both writes
    assert {k.mod_revision for k in both.kvs} == {by_value.revision}

    removed = await client.txn([Compare.value(key, "==", b"v2")], [Op.delete(ns, prefix=True)])
    assert removed.succeeded
    assert (await client.range(ns, count_only=True)).count == 0


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A member of its own, for a test that compacts the whole keyspace."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1).start()
    yield cluster
    cluster.stop()


async def test_past_revisions_until_compacted(private_etcd: EtcdCluster, ns: str) -> None:
    async with EtcdClient(private_etcd.endpoints, timeout_s=5) as client:
        await check_compaction(client, ns)


async def check_compaction(client: EtcdClient, ns: str) -> None:
    old = await client.put(ns + "a", b"old")
    new = await client.put(ns + "a", b"new")
    past = await client.get(ns + "a", revision=old.revision)
    assert past is not None and past.value == b"old"

    await client.compact(new.revision)
    with pytest.raises(EtcdCompacted):
        await client.get(ns + "a", revision=old.revision)
    async with client.watch(ns + "a", start_revision=old.revision) as watcher:
        with pytest.raises(EtcdCompacted) as info:
            await next_events(watcher, 1)
    assert info.value.compact_revision == new.revision


async def test_keepalive_keeps_a_key_past_its_ttl_and_loss_after_stop(
    client: EtcdClient, ns: str
) -> None:
    lease = await client.grant(1)
    put = await client.put(ns + "session", b"me", lease=lease.id)
    async with client.watch(ns + "session", start_revision=put.revision + 1) as watcher:
        async with client.keepalive(lease.id, lease.ttl) as keeper:
            # The key must outlive three TTLs while kept alive: no event may arrive.
            with pytest.raises(TimeoutError):
                await next_events(watcher, 1, within_s=3 * lease.ttl)
            assert keeper.renewals >= 3 and not keeper.lost.is_set()
            info = await client.time_to_live(lease.id, keys=True)
            assert info is not None and info.keys == ((ns + "session").encode(),)
        # No longer kept alive: etcd expires the lease and deletes the key.
        (gone,) = await next_events(watcher, 1, within_s=lease.ttl + 4)
    assert gone.type is EventType.DELETE and gone.kv.key == (ns + "session").encode()
    assert await client.time_to_live(lease.id) is None


async def test_revoke_deletes_keys_and_unknown_leases_are_errors(
    client: EtcdClient, ns: str
) -> None:
    lease = await client.grant(30)
    await client.put(ns + "a", b"1", lease=lease.id)
    await client.put(ns + "b", b"2", lease=lease.id)
    await client.revoke(lease.id)
    assert (await client.range(ns)).kvs == ()
    assert await client.time_to_live(lease.id) is None
    with pytest.raises(EtcdLeaseNotFound):
        await client.revoke(lease.id)
    with pytest.raises(EtcdLeaseNotFound):
        await client.put(ns + "c", b"3", lease=lease.id)
    with pytest.raises(EtcdLeaseNotFound):
        await client.lock(ns + "lock", lease.id)


async def test_keepalive_reports_a_revoked_lease(client: EtcdClient, ns: str) -> None:
    lease = await client.grant(2)
    async with client.keepalive(lease.id, lease.ttl) as keeper:
        await client.revoke(lease.id)
        lost = await asyncio.wait_for(keeper.wait_lost(), 5)
    assert lost.lease_id == lease.id

    # The same loop run in the caller's TaskGroup cancels the group's work.
    other = await client.grant(2)
    work_cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()  # runs until the group cancels it
        except asyncio.CancelledError:
            work_cancelled.set()
            raise

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
            tasks.create_task(client.keep_alive(other.id, other.ttl))
            tasks.create_task(work())
            await client.revoke(other.id)
    assert info.value.subgroup(EtcdLeaseLost) is not None
    assert work_cancelled.is_set()


async def test_watch_delivers_in_order_and_resumes(client: EtcdClient, ns: str) -> None:
    def shape(events: list[Event]) -> list[tuple[EventType, str, int]]:
        return [(e.type, e.kv.key.decode().removeprefix(ns), e.revision) for e in events]

    start = (await client.put(ns + "a", b"1")).revision
    b_put = (await client.put(ns + "b", b"1")).revision
    a_deleted = (await client.delete(ns + "a")).revision
    async with client.watch(ns, prefix=True, start_revision=start, prev_kv=True) as first:
        head = await next_events(first, 3)
        resume_at = first.next_revision
    assert shape(head) == [
        (EventType.PUT, "a", start),
        (EventType.PUT, "b", b_put),
        (EventType.DELETE, "a", a_deleted),
    ]
    assert head[2].prev_kv is not None and head[2].prev_kv.value == b"1"
    assert resume_at == a_deleted + 1

    # Written while nobody watches; picked up by resuming from next_revision.
    txn = await client.txn([], [Op.put(ns + "c", b"1"), Op.put(ns + "d", b"1")])
    b_again = (await client.put(ns + "b", b"2")).revision
    async with client.watch(ns, prefix=True, start_revision=resume_at) as second:
        async with asyncio.timeout(5):
            batch = await anext(second)
            # A transaction's events arrive together, in one batch.
            assert shape(list(batch.events))[:2] == [
                (EventType.PUT, "c", txn.revision),
                (EventType.PUT, "d", txn.revision),
            ]
            tail = list(batch.events)
            if len(tail) < 3:
                tail += await next_events(second, 3 - len(tail))
    assert shape(tail)[2] == (EventType.PUT, "b", b_again)

    # From now: only what happens after the watch is created.
    async with client.watch(ns, prefix=True) as live:
        later = await client.put(ns + "e", b"1")
        async with asyncio.timeout(5):
            batch = await anext(live)
    assert shape(list(batch.events)) == [(EventType.PUT, "e", later.revision)]


async def test_lock_hands_over_on_unlock_and_on_lease_expiry(client: EtcdClient, ns: str) -> None:
    name = ns + "lock"
    lease_a, lease_b, lease_c = [await client.grant(ttl) for ttl in (30, 1, 30)]
    async with client.watch(name + "/", prefix=True) as waiters:
        held_a = await client.lock(name, lease_a.id)
        async with client.keepalive(lease_b.id, lease_b.ttl) as keeper_b:
            wait_b = asyncio.create_task(client.lock(name, lease_b.id, timeout_s=20))
            # B has queued (its key exists) but does not hold the lock while A does.
            await events_until(waiters, lambda e: e.kv.lease == lease_b.id)
            done, _ = await asyncio.wait({wait_b}, timeout=0.3)
            assert not done

            await client.unlock(held_a)
            held_b = await asyncio.wait_for(wait_b, 5)
            assert held_b.fence > held_a.fence

            # A waiter whose deadline runs out gives up, and etcd withdraws its key.
            began = time.monotonic()
            with pytest.raises(EtcdDeadline):
                await client.lock(name, lease_a.id, timeout_s=0.5)
            assert time.monotonic() - began < 1.5
            a_again = await events_until(waiters, lambda e: e.kv.key == held_a.key)
            assert a_again[-1].type is EventType.DELETE  # A's unlock
            a_waits = await events_until(waiters, lambda e: e.kv.key == held_a.key)
            assert a_waits[-1].type is EventType.PUT  # A queues again...
            a_gives_up = await events_until(waiters, lambda e: e.kv.key == held_a.key)
            assert a_gives_up[-1].type is EventType.DELETE  # ...and withdraws

            wait_c = asyncio.create_task(client.lock(name, lease_c.id, timeout_s=20))
            queued = await events_until(waiters, lambda e: e.kv.lease == lease_c.id)
            assert queued[-1].type is EventType.PUT
            assert not keeper_b.lost.is_set()
        # B is no longer kept alive: its lease expires and C gets the lock.
        held_c = await asyncio.wait_for(wait_c, lease_b.ttl + 5)
    assert held_c.fence > held_b.fence > held_a.fence
    assert await client.time_to_live(lease_b.id) is None
    holders = await client.range(name + "/")
    assert [kv.key for kv in holders.kvs] == [held_c.key]
    await client.unlock(held_c)


async def test_election_campaign_proclaim_observe_resign(client: EtcdClient, ns: str) -> None:
    name = ns + "role"
    lease_a = await client.grant(30)
    lease_b = await client.grant(30)
    assert await client.leader(name) is None

    lead_a = await client.campaign(name, lease_a.id, b"a")
    current = await client.leader(name)
    assert current is not None and current.value == b"a" and current.key == lead_a.key
    assert lead_a.rev == current.create_revision

    async with client.observe(name) as observer:
        async with asyncio.timeout(10):
            assert (await anext(observer)).value == b"a"
            wait_b = asyncio.create_task(client.campaign(name, lease_b.id, b"b", timeout_s=20))
            await client.proclaim(lead_a, b"a2")
            assert (await anext(observer)).value == b"a2"
            leader = await client.leader(name)
            assert leader is not None and leader.value == b"a2"
            assert not wait_b.done()

            await client.resign(lead_a)
            lead_b = await wait_b
            seen = await anext(observer)
    assert (seen.key, seen.value) == (lead_b.key, b"b")
    assert lead_b.rev > lead_a.rev
    with pytest.raises(EtcdNotLeader):
        await client.proclaim(lead_a, b"stale")
    await client.resign(lead_b)
    assert await client.leader(name) is None


async def test_unreachable_endpoints_fail_within_the_deadline(ns: str) -> None:
    async with EtcdClient([f"127.0.0.1:{free_port()}"], timeout_s=1) as dead:
        for call in (dead.get(ns + "a"), dead.put(ns + "a", b"1"), dead.time_to_live(1)):
            began = time.monotonic()
            with pytest.raises((EtcdUnavailable, EtcdDeadline)):
                await call
            assert time.monotonic() - began < 1.5


async def test_moves_to_the_next_endpoint(etcd: EtcdCluster, ns: str) -> None:
    endpoints = [f"127.0.0.1:{free_port()}", *etcd.endpoints]
    async with EtcdClient(endpoints, timeout_s=2) as client:
        # A write is not repeated (it may have been applied): it fails, and the
        # client moves on; the next call goes to the live member.
        with pytest.raises(EtcdUnavailable):
            await client.put(ns + "a", b"1")
        await client.put(ns + "a", b"2")
    async with EtcdClient(endpoints, timeout_s=2) as client:
        # A read is repeated on the next member within its deadline.
        kv = await client.get(ns + "a")
    assert kv is not None and kv.value == b"2"
