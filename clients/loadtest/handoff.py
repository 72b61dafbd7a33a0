"""Lock latencies through the real server, next to etcd's own v3lock hand-off on
the same etcd (the coordination phase of `make bench`).

The Blackboard server runs on Redis and an etcd member this harness can reach
(its claims are looked up under the server's --etcd-prefix); this module calls
its Coordination service with the raw generated stubs:

1. round trip: one session, AcquireLock (try once) then ReleaseLock, back to back;
2. hand-off: two sessions pass one lock back and forth. Each round the waiter's
   AcquireLock(wait_ms=5000) is queued before the holder calls ReleaseLock: its
   claim key (adapters/etcd_coord/keys.py) is seen in etcd through a watch
   opened here. The holder releases at once, or after the waiter has waited
   `settle_ms`: the claim shows the call has reached etcd, not that the
   server is already watching for its turn, and the wait makes sure it is.
   Measured from just before ReleaseLock to the moment AcquireLock returns;
3. the same hand-off with etcd's v3lock Lock RPC between two leases, in blocks
   interleaved with (2), so that both see the same machine.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from blackboard.etcd import lock_pb2
from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.adapters.etcd import EtcdClient, EventType, Watcher
from blackboard_server.adapters.etcd_coord.keys import Layout
from blackboard_server.api.servicer import AGENT_HEADER
from blackboard_server.domain.model import ConversationRef, FenceKind
from loadtest.procs import CpuMeter
from loadtest.scenarios import CALL_TIMEOUT_S
from loadtest.stats import Latencies
from loadtest.target import Endpoint

LockFn = Callable[[str, int], Awaitable[bytes]]
SESSION_TTL_MS = 120_000  # outlives the phase: no keep-alives needed
WAIT_MS = 5_000  # the waiter's AcquireLock wait
BLOCK = 20  # hand-offs in a row before the other implementation takes its turn
WARMUP = 3  # rounds before each measurement that are not counted


async def run_locks(ep: Endpoint, rounds: int, count: int, settle_ms: int) -> dict[str, Any]:
    """`rounds` acquire + release round trips, then `count` hand-offs released at
    once and as many released `settle_ms` after the waiter queued."""
    async with ep.channel() as channel, EtcdClient(ep.etcd_endpoints, timeout_s=10) as etcd:
        coord = pb_grpc.CoordinationStub(channel)
        conversation = f"bench-locks-{uuid.uuid4().hex[:8]}"
        await pb_grpc.BlackboardStub(channel).CreateConversation(
            pb.CreateConversationRequest(id=conversation), timeout=CALL_TIMEOUT_S
        )
        cpu = CpuMeter({"client": os.getpid(), **ep.pids})
        cpu.start()
        trips = await round_trips(coord, conversation, rounds)
        layout = Layout(ep.etcd_prefix)
        cases = [
            await handoffs(coord, etcd, layout, ep.tenant, conversation, count, settle)
            for settle in (0, settle_ms)
        ]
        used = cpu.stop()
    return {
        "conversation": conversation,
        "acquire_release": trips.summary(),
        "handoff": cases,
        "cpu_pct_of_one_core": used,
        "busiest_other_processes": cpu.others,
    }


# --- round trip --------------------------------------------------------------


async def open_session(coord: pb_grpc.CoordinationAsyncStub, conversation: str, agent: str) -> str:
    session = await coord.OpenSession(
        pb.OpenSessionRequest(conversation_id=conversation, ttl_ms=SESSION_TTL_MS),
        metadata=((AGENT_HEADER, agent),),
        timeout=CALL_TIMEOUT_S,
    )
    return str(session.session_id)


async def acquire(
    coord: pb_grpc.CoordinationAsyncStub, conversation: str, name: str, session: str, wait_ms: int
) -> pb.Holder:
    request = pb.AcquireLockRequest(
        conversation_id=conversation, session_id=session, name=name, wait_ms=wait_ms
    )
    holder: pb.Holder = await coord.AcquireLock(request, timeout=CALL_TIMEOUT_S)
    return holder


async def release(coord: pb_grpc.CoordinationAsyncStub, held: pb.Holder) -> None:
    request = pb.ReleaseLockRequest(
        conversation_id=held.conversation_id,
        session_id=held.session_id,
        name=held.name,
        token=held.token,
    )
    await coord.ReleaseLock(request, timeout=CALL_TIMEOUT_S)


async def round_trips(
    coord: pb_grpc.CoordinationAsyncStub, conversation: str, count: int
) -> Latencies:
    session = await open_session(coord, conversation, "bench-round-trip")
    latencies = Latencies()
    for i in range(WARMUP + count):
        began = time.perf_counter_ns()
        await release(coord, await acquire(coord, conversation, "round-trip", session, 0))
        if i >= WARMUP:
            latencies.add((time.perf_counter_ns() - began) // 1000)
    await coord.CloseSession(
        pb.CloseSessionRequest(conversation_id=conversation, session_id=session),
        timeout=CALL_TIMEOUT_S,
    )
    return latencies


# --- hand-off ----------------------------------------------------------------


async def handoffs(
    coord: pb_grpc.CoordinationAsyncStub,
    etcd: EtcdClient,
    layout: Layout,
    tenant: str,
    conversation: str,
    count: int,
    settle_ms: int,
) -> dict[str, Any]:
    """`count` hand-offs through the server and as many with etcd's v3lock, in
    alternating blocks; the holder releases `settle_ms` after the waiter queued."""
    name = f"hand-off-{settle_ms}ms"
    queue = layout.queue(ConversationRef(tenant, conversation), FenceKind.LOCK, name)
    sessions = [await open_session(coord, conversation, f"bench-{i}") for i in range(2)]
    v3lock_name = f"/lt-v3lock-{uuid.uuid4().hex[:8]}/{settle_ms}ms"
    settle_s = settle_ms / 1000
    lock = v3lock(etcd)
    await server_block(coord, etcd, queue, conversation, name, sessions, WARMUP, settle_s)
    await v3lock_handoffs(etcd, v3lock_name, WARMUP, lock, settle_s)
    server, etcd_v3lock = Latencies(), Latencies()
    for done in range(0, count, BLOCK):
        n = min(BLOCK, count - done)
        server.extend(
            await server_block(coord, etcd, queue, conversation, name, sessions, n, settle_s)
        )
        samples = await v3lock_handoffs(etcd, v3lock_name, n, lock, settle_s)
        etcd_v3lock.extend([int(s * 1e6) for s in samples])
    for session in sessions:
        await coord.CloseSession(
            pb.CloseSessionRequest(conversation_id=conversation, session_id=session),
            timeout=CALL_TIMEOUT_S,
        )
    ratio = server.percentile_ms(50) / etcd_v3lock.percentile_ms(50)
    return {
        "settle_ms": settle_ms,
        "server": server.summary(),
        "etcd_v3lock": etcd_v3lock.summary(),
        "p50_ratio_server_to_v3lock": round(ratio, 2),
    }


async def server_block(
    coord: pb_grpc.CoordinationAsyncStub,
    etcd: EtcdClient,
    queue: bytes,
    conversation: str,
    name: str,
    sessions: list[str],
    count: int,
    settle_s: float,
) -> list[int]:
    """Hand-off times in microseconds: the lock goes from one session to the other."""
    samples: list[int] = []
    async with etcd.watch(queue, prefix=True) as claims:
        held = await acquire(coord, conversation, name, sessions[0], 0)
        for i in range(count):
            waiter = sessions[(i + 1) % 2]
            returned_at = 0

            async def wait(session: str = waiter) -> pb.Holder:
                nonlocal returned_at
                holder = await acquire(coord, conversation, name, session, WAIT_MS)
                returned_at = time.perf_counter_ns()
                return holder

            waiting = asyncio.create_task(wait())
            await queued(claims, queue + waiter.encode(), waiting)
            if settle_s:
                await asyncio.sleep(settle_s)  # the scenario: the waiter has waited a while
            released_at = time.perf_counter_ns()
            await release(coord, held)
            held = await waiting
            if held.session_id != waiter:
                raise RuntimeError(f"the lock went to {held.session_id}, not to {waiter}")
            samples.append((returned_at - released_at) // 1000)
        await release(coord, held)
    return samples


async def queued(claims: Watcher, key: bytes, waiting: asyncio.Task[pb.Holder]) -> None:
    """Returns once the claim `key` is put; raises if the waiter's call ends first."""

    async def seen() -> None:
        async for batch in claims:
            if any(e.type is EventType.PUT and e.kv.key == key for e in batch.events):
                return

    watching = asyncio.create_task(seen())
    await asyncio.wait(
        (watching, waiting), timeout=CALL_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if watching.done():
        return watching.result()
    watching.cancel()
    if waiting.done():
        holder = waiting.result()  # raises the call's error, if it failed
        raise RuntimeError(f"{holder.session_id} acquired a lock that was still held")
    raise TimeoutError(f"no claim {key.decode()} in etcd after {CALL_TIMEOUT_S:g} s")


def v3lock(etcd: EtcdClient) -> LockFn:
    """etcd's Lock RPC as it is: the baseline (EtcdClient.lock also reads the key back)."""

    async def lock(name: str, lease: int) -> bytes:
        _, member = etcd.transport.current()
        request = lock_pb2.LockRequest(name=name.encode(), lease=lease)
        response = await member.lock.Lock(request, timeout=CALL_TIMEOUT_S)
        return bytes(response.key)

    return lock


async def v3lock_handoffs(
    etcd: EtcdClient, name: str, count: int, lock: LockFn, settle_s: float
) -> list[float]:
    """etcd's own hand-off between two leases: seconds from Unlock to the waiter's Lock."""
    leases = [(await etcd.grant(60)).id for _ in range(2)]
    samples: list[float] = []
    async with etcd.watch(name + "/", prefix=True) as waiters:
        held = await lock(name, leases[0])
        await _lease_queued(waiters, leases[0])
        for i in range(count):
            waiter = leases[(i + 1) % 2]
            returned_at = 0.0

            async def wait(lease: int = waiter) -> bytes:
                nonlocal returned_at
                key = await lock(name, lease)
                returned_at = time.perf_counter()
                return key

            task = asyncio.create_task(wait())
            await _lease_queued(waiters, waiter)
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


async def _lease_queued(waiters: Watcher, lease_id: int) -> None:
    async for batch in waiters:
        if any(e.type is EventType.PUT and e.kv.lease == lease_id for e in batch.events):
            return
