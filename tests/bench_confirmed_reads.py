"""What confirmed reads (durable mode with replicas) cost a store read:

    python -m tests.bench_confirmed_reads [--reads 2000] 2>/dev/null

Starts a durable Redis primary with one replica on loopback and reads one
conversation (20 entries) through RedisStore, first in fast mode (redis-py,
no WAIT), then confirmed (wait_replicas=1: a SET and a WAIT per read): the
median and p99 of reads made one after another, and reads per second with
50 at a time. It moves with the load on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.model import ConversationRef, Put, WriteBatch
from tests.servers import RedisPair

CONCURRENT = 50


async def measure(label: str, read: Callable[[], Awaitable[object]], reads: int) -> None:
    for _ in range(reads // 10):  # warm up
        await read()
    latencies = []
    for _ in range(reads):
        started = time.perf_counter()
        await read()
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    median, p99 = latencies[reads // 2] * 1e3, latencies[int(reads * 0.99)] * 1e3
    started = time.perf_counter()
    for _ in range(reads // CONCURRENT):
        await asyncio.gather(*(read() for _ in range(CONCURRENT)))
    rate = reads // CONCURRENT * CONCURRENT / (time.perf_counter() - started)
    print(f"{label:28s} median {median:5.2f} ms  p99 {p99:5.2f} ms  {rate:7.0f} reads/s")


async def run(url: str, mode: str, durability: Durability, reads: int) -> None:
    async with await RedisStore.connect(url, timeout_s=2.0, durability=durability) as store:
        ref = ConversationRef("bench", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        for i in range(20):
            await store.commit(ref, WriteBatch((), (Put(f"k{i}", b"v" * 100),)), "", 2_000)
        await measure(f"{mode} Range (20 entries)", lambda: store.read(ref, "", "", 100), reads)
        await measure(f"{mode} events (20)", lambda: store.events(ref, 1, 20, 100), reads)
        await measure(f"{mode} head", lambda: store.head(ref), reads)


async def main(reads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pair = RedisPair(Path(tmp)).start()
        try:
            await run(pair.primary.url, "fast", Durability(), reads)
            confirmed = Durability("durable", wait_replicas=1, wait_timeout_ms=1000)
            await run(pair.primary.url, "confirmed", confirmed, reads)
        finally:
            pair.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    asyncio.run(main(parser.parse_args().reads))
