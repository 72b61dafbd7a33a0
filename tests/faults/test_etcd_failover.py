"""The etcd client while members of a real 3-member cluster are killed (kill -9)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from blackboard_server.adapters.etcd import (
    EtcdClient,
    EtcdDeadline,
    EtcdUnavailable,
    Event,
    LockKey,
    PutResult,
)
from tests.servers import EtcdCluster, EtcdMember

T = TypeVar("T")
TIMEOUT_S = 2.0
SLACK_S = 0.5  # scheduling and teardown beyond a call's deadline


@dataclass
class Log:
    """Every call's duration, and when calls succeeded."""

    durations: list[float] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    failures: int = 0

    async def timed(self, call: Awaitable[T]) -> T:
        began = time.monotonic()
        try:
            return await call
        finally:
            self.durations.append(time.monotonic() - began)


def ordered_with_leader_first(cluster: EtcdCluster) -> tuple[EtcdMember, list[str]]:
    leader = cluster.leader()
    return leader, [leader.endpoint] + [m.endpoint for m in cluster.members if m is not leader]


async def test_leader_kill_during_puts_and_locks(etcd_cluster: EtcdCluster) -> None:
    ns = f"failover/{uuid.uuid4().hex}/"
    leader, endpoints = ordered_with_leader_first(etcd_cluster)
    log = Log()
    puts: list[PutResult] = []
    fences: list[int] = []
    killed_at: float | None = None
    async with EtcdClient(endpoints, timeout_s=TIMEOUT_S) as etcd:
        lease = await etcd.grant(5)
        async with (
            etcd.keepalive(lease.id, lease.ttl) as keeper,
            etcd.watch(ns, prefix=True) as watcher,
            etcd.observe(ns + "role") as observer,
        ):
            lead = await etcd.campaign(ns + "role", lease.id, b"before")
            async with asyncio.timeout(5):
                assert (await anext(observer)).value == b"before"

            async def one_round(i: int) -> None:
                puts.append(await log.timed(etcd.put(f"{ns}{i:05}", b"x")))
                held: LockKey = await log.timed(etcd.lock(ns + "lock", lease.id))
                await log.timed(etcd.unlock(held))
                fences.append(held.fence)

            def after_kill() -> int:
                return sum(1 for t in log.successes if killed_at and t > killed_at)

            i = 0
            async with asyncio.timeout(30):
                while after_kill() < 10:
                    if killed_at is None and len(log.successes) == 5:
                        await asyncio.to_thread(leader.kill)
                        killed_at = time.monotonic()
                    try:
                        await one_round(i)
                        log.successes.append(time.monotonic())
                    except (EtcdUnavailable, EtcdDeadline):
                        log.failures += 1
                    i += 1
            assert not keeper.lost.is_set()

            # The observer, also on the dead leader, follows the election elsewhere.
            await etcd.proclaim(lead, b"after")
            async with asyncio.timeout(10):
                assert (await anext(observer)).value == b"after"

            # The watch, connected to the dead leader, resumed on another member:
            # every acknowledged put arrives once, in revision order.
            seen: list[Event] = []
            skip = ((ns + "lock/").encode(), (ns + "role/").encode())
            async with asyncio.timeout(10):
                async for batch in watcher:
                    seen.extend(e for e in batch.events if not e.kv.key.startswith(skip))
                    if seen and seen[-1].revision >= puts[-1].revision:
                        break
    assert killed_at is not None
    assert log.failures >= 1  # the first call after the kill went to the dead leader
    first_after = min(t for t in log.successes if t > killed_at)
    assert first_after - killed_at < 5.0
    assert max(log.durations) < TIMEOUT_S + SLACK_S
    put_revisions = [e.revision for e in seen]
    assert put_revisions == sorted(set(put_revisions))
    assert {p.revision for p in puts} <= set(put_revisions)
    assert fences == sorted(set(fences))  # fencing tokens strictly increase


async def call_fails_in_time(call: Callable[[], Awaitable[object]], limit_s: float) -> None:
    began = time.monotonic()
    with pytest.raises((EtcdUnavailable, EtcdDeadline)):
        await call()
    assert time.monotonic() - began < limit_s + SLACK_S


async def test_quorum_loss_fails_within_deadlines_then_recovers(
    etcd_cluster: EtcdCluster,
) -> None:
    ns = f"quorum/{uuid.uuid4().hex}/"
    limit = 1.0
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=limit) as etcd:
        await etcd.put(ns + "a", b"1")
        lease = await etcd.grant(30)
        lost = etcd_cluster.members[1:]
        for member in lost:
            await asyncio.to_thread(member.kill)

        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: etcd.get(ns + "a"),
            lambda: etcd.put(ns + "b", b"2"),
            lambda: etcd.range(ns),
            lambda: etcd.grant(10),
            lambda: etcd.time_to_live(lease.id),
            lambda: etcd.lock(ns + "lock", lease.id),
            lambda: etcd.campaign(ns + "role", lease.id, b"me"),
            lambda: etcd.leader(ns + "role"),
        ]
        for call in calls:
            await call_fails_in_time(call, limit)

        async def watch_one() -> None:
            async with etcd.watch(ns, prefix=True) as watcher:
                await anext(watcher)

        # Creating a watch is refused too, within the watch's reconnect budget.
        await call_fails_in_time(watch_one, limit + TIMEOUT_S)

        # Quorum returns with one member restarted: the same client recovers.
        await asyncio.to_thread(etcd_cluster.restart, lost[0])
        async with asyncio.timeout(15):
            while True:
                try:
                    kv = await etcd.get(ns + "a")
                    break
                except (EtcdUnavailable, EtcdDeadline):
                    continue  # each attempt is itself bounded by the client's deadline
        assert kv is not None and kv.value == b"1"
        await etcd.put(ns + "b", b"2")
        held = await etcd.lock(ns + "lock", lease.id)
        assert held.fence > kv.mod_revision
