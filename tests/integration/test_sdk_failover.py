"""The SDK given several replicas: calls, a subscription and a session carry on
through each replica in turn being killed -9 (async client), and the sync
client takes the same targets as one comma-separated string."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from blackboard_client import Events, RetryPolicy, connect, sync
from tests.servers import ServerProcess

RETRY = RetryPolicy(attempts=10, max_backoff=1.0)


@pytest.fixture
def replicas(make_replicas: Callable[..., list[ServerProcess]]) -> list[ServerProcess]:
    return make_replicas(2)


@pytest.mark.timeout(90)
async def test_calls_streams_and_sessions_move_to_a_live_replica(
    replicas: list[ServerProcess],
) -> None:
    conv = f"failover-{uuid.uuid4().hex[:8]}"
    async with connect([r.address for r in replicas], retry=RETRY, timeout=5) as client:
        await client.create_conversation(conv)
        seen: list[int] = []

        async def follow() -> None:
            async with client.subscribe(conv, start_revision=1) as stream:
                async for item in stream:
                    if isinstance(item, Events):
                        seen.extend(e.revision for e in item.events)

        following = asyncio.create_task(follow())
        written: list[int] = []
        async with client.session(conv, ttl=3.0) as session:
            for victim in (*replicas, replicas[0]):
                for i in range(30):
                    written.append((await client.put(conv, f"k{i}", str(i))).revision)
                victim.kill()
                for i in range(30):
                    written.append((await client.put(conv, f"j{i}", str(i))).revision)
                # Longer than the session's TTL: renewals had to go to the live replica.
                await asyncio.sleep(3.5)
                await asyncio.to_thread(victim.start)
            assert not session.lost.is_set()
            assert (await client.get(conv, "k1")).value.data == b"1"
        async with asyncio.timeout(20):
            while not seen or seen[-1] < written[-1]:
                await asyncio.sleep(0.05)
        following.cancel()
    assert written == sorted(written) and len(set(written)) == len(written) == 180
    assert seen == list(range(1, seen[-1] + 1))  # no gap, no repeat, across three kills
    assert set(written) <= set(seen)


@pytest.mark.timeout(60)
def test_the_sync_client_fails_over_too(replicas: list[ServerProcess]) -> None:
    conv = f"sync-failover-{uuid.uuid4().hex[:8]}"
    targets = ",".join(r.address for r in replicas)
    with sync.connect(targets, retry=RETRY, timeout=5) as client:
        client.create_conversation(conv)
        first = [client.put(conv, f"a{i}", "x").revision for i in range(10)]
        replicas[1].kill()
        second = [client.put(conv, f"b{i}", "x").revision for i in range(10)]
        replicas[1].start()
        replicas[0].kill()
        third = [client.put(conv, f"c{i}", "x").revision for i in range(10)]
        assert first + second + third == list(range(1, 31))
        assert len([e.key for e in client.iter_range(conv)]) == 30


@pytest.mark.timeout(60)
async def test_a_dns_name_is_a_target(replicas: list[ServerProcess]) -> None:
    """gRPC resolves dns:/// names itself; localhost may also give ::1, where
    nothing listens: round_robin uses the address that answers."""
    conv = f"dns-{uuid.uuid4().hex[:8]}"
    async with connect(f"dns:///localhost:{replicas[0].port}", retry=RETRY) as client:
        await client.create_conversation(conv)
        written = await client.put(conv, "k", "v")
        assert (await client.get(conv, "k")).mod_revision == written.revision
