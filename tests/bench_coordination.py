"""The etcd coordinator's lock latencies, next to etcd's own v3lock hand-off.

    .venv/bin/python -m tests.bench_coordination [--members 1|3] [--handoffs 50] [--round-trips 200]

- round trip: one session acquires a free lock (try once) and releases it;
- hand-off: two sessions pass one lock back and forth; each round the waiter's
  acquire is queued (its claim is seen in etcd) before the holder releases, at
  once or after the waiter has waited 200 ms; measured from the release call
  to the moment the waiter's acquire returns.

Then tests/bench_etcd.py measures the same hand-off with etcd's v3lock service.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from blackboard_server.adapters.etcd import EtcdClient, EventType, Watcher
from blackboard_server.adapters.etcd_coord.keys import Layout
from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator
from blackboard_server.domain.coordination import Holder
from blackboard_server.domain.model import ConversationRef, FenceKind
from tests import bench_etcd
from tests.servers import EtcdCluster

LOCK = FenceKind.LOCK


async def round_trips(coord: EtcdCoordinator, ref: ConversationRef, count: int) -> list[float]:
    session = await coord.open_session(ref, "bench", 60_000)
    samples: list[float] = []
    for _ in range(count):
        began = time.perf_counter()
        held = await coord.acquire(ref, LOCK, "round-trip", session.session_id, b"", 0)
        await coord.release(ref, LOCK, "round-trip", session.session_id, held.token)
        samples.append(time.perf_counter() - began)
    await coord.close_session(ref, session.session_id)
    return samples


async def _queued(claims: Watcher, key: bytes) -> None:
    async for batch in claims:
        if any(e.type is EventType.PUT and e.kv.key == key for e in batch.events):
            return


async def handoffs(
    coord: EtcdCoordinator,
    etcd: EtcdClient,
    layout: Layout,
    ref: ConversationRef,
    count: int,
    settle_s: float,
) -> list[float]:
    name = f"hand-off-{settle_s}"
    sessions = [(await coord.open_session(ref, f"s{i}", 60_000)).session_id for i in range(2)]
    queue = layout.queue(ref, LOCK, name)
    samples: list[float] = []
    async with etcd.watch(queue, prefix=True) as claims:
        held = await coord.acquire(ref, LOCK, name, sessions[0], b"", 0)
        for i in range(count):
            waiter = sessions[(i + 1) % 2]
            returned_at = 0.0

            async def wait(session_id: str = waiter) -> Holder:
                nonlocal returned_at
                holder = await coord.acquire(ref, LOCK, name, session_id, b"", 10_000)
                returned_at = time.perf_counter()
                return holder

            task = asyncio.create_task(wait())
            await _queued(claims, queue + waiter.encode())
            if settle_s:
                await asyncio.sleep(settle_s)  # the scenario: the waiter has waited a while
            release_at = time.perf_counter()
            await coord.release(ref, LOCK, name, held.session_id, held.token)
            held = await task
            samples.append(returned_at - release_at)
        await coord.release(ref, LOCK, name, held.session_id, held.token)
    for session_id in sessions:
        await coord.close_session(ref, session_id)
    return samples


async def measure(endpoints: list[str], count: int, trips: int) -> None:
    prefix = f"/bench-{uuid.uuid4().hex[:8]}"
    coord = await EtcdCoordinator.connect(endpoints, timeout_s=10, prefix=prefix)
    ref = ConversationRef("bench", "coordination")
    try:
        async with coord.running(), EtcdClient(endpoints, timeout_s=10) as etcd:
            print("EtcdCoordinator lock, acquire (try once) + release, one session:")
            bench_etcd._report("round", await round_trips(coord, ref, trips))
            for settle_s, when in ((0.0, "at once"), (0.2, "200 ms")):
                print(f"EtcdCoordinator hand-off, holder releases {when} after the waiter queued:")
                samples = await handoffs(coord, etcd, Layout(prefix), ref, count, settle_s)
                bench_etcd._report("coord", samples)
    finally:
        await coord.aclose()
    print("etcd v3lock hand-off (tests/bench_etcd.py), for comparison:")
    await bench_etcd.measure(endpoints, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--handoffs", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bb-bench-coord-") as workdir:
        cluster = EtcdCluster(Path(workdir), size=args.members).start()
        try:
            print(f"{args.members} etcd member(s) on loopback")
            asyncio.run(measure(cluster.endpoints, args.handoffs, args.round_trips))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
