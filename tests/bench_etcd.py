"""etcd's own v3lock hand-off time: from the moment the holder calls Unlock to
the moment the next waiter's Lock call returns.

    .venv/bin/python -m tests.bench_etcd [--members 1|3] [--handoffs 50]

Two sessions (leases) pass one lock back and forth. Each round the waiter's
Lock is queued (its key is seen in etcd) before the holder unlocks: at once,
or after the waiter has waited 200 ms. "rpc" is the raw Lock RPC; "client" is
EtcdClient.lock, which also reads the lock key back for its fencing token.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from blackboard.etcd import lock_pb2
from blackboard_server.adapters.etcd import EtcdClient, EventType, Watcher
from tests.servers import EtcdCluster

LockFn = Callable[[str, int], Awaitable[bytes]]


async def _queued(waiters: Watcher, lease_id: int) -> None:
    async for batch in waiters:
        if any(e.type is EventType.PUT and e.kv.lease == lease_id for e in batch.events):
            return


async def _handoffs(
    etcd: EtcdClient, name: str, count: int, lock: LockFn, settle_s: float
) -> list[float]:
    leases = [(await etcd.grant(60)).id for _ in range(2)]
    samples: list[float] = []
    async with etcd.watch(name + "/", prefix=True) as waiters:
        held = await lock(name, leases[0])
        await _queued(waiters, leases[0])
        for i in range(count):
            waiter = leases[(i + 1) % 2]
            returned_at = 0.0

            async def wait(waiter: int = waiter) -> bytes:
                nonlocal returned_at
                key = await lock(name, waiter)
                returned_at = time.perf_counter()
                return key

            task = asyncio.create_task(wait())
            await _queued(waiters, waiter)
            if settle_s:
                await asyncio.sleep(settle_s)  # the scenario: the waiter has waited a while
            unlock_at = time.perf_counter()
            await etcd.unlock(held)
            held = await task
            samples.append(returned_at - unlock_at)
        await etcd.unlock(held)
    for lease in leases:
        await etcd.revoke(lease)
    return samples


def _report(label: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        f"  {label:>6}: n={len(ms)} p50={statistics.median(ms):.2f} ms "
        f"p99={p99:.2f} ms max={ms[-1]:.2f} ms"
    )


async def measure(endpoints: list[str], count: int) -> None:
    async with EtcdClient(endpoints, timeout_s=10) as etcd:

        async def raw_lock(name: str, lease: int) -> bytes:
            _, member = etcd.transport.current()
            request = lock_pb2.LockRequest(name=name.encode(), lease=lease)
            response = await member.lock.Lock(request, timeout=10)
            return response.key

        async def client_lock(name: str, lease: int) -> bytes:
            return (await etcd.lock(name, lease, timeout_s=10)).key

        for settle_s, when in ((0.0, "at once"), (0.2, "200 ms")):
            print(f"holder unlocks {when} after the waiter queued:")
            for label, lock in (("rpc", raw_lock), ("client", client_lock)):
                name = f"bench/{label}/{settle_s}"
                _report(label, await _handoffs(etcd, name, count, lock, settle_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--handoffs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bb-bench-etcd-") as workdir:
        cluster = EtcdCluster(Path(workdir), size=args.members).start()
        try:
            print(f"etcd v3lock hand-off, {args.members} member(s) on loopback")
            asyncio.run(measure(cluster.endpoints, args.handoffs))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
