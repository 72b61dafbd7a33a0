"""`--compare`: the run's shape against what users would pick instead.

- echo: a bare grpc.aio server that returns the request (loadtest/echo.py), in
  its own process: the ceiling of any gRPC server in Python on this machine;
- redis-lua: redis.asyncio calling a 4-command Lua write (revision counter,
  entry hash, log stream, notify), the shape of one Blackboard commit;
- etcd: puts through the project's etcd client, with a watch on the prefix
  measuring put -> watch delivery (the change stream's counterpart).

Each gets the same concurrency, rate, warm-up and duration as the run; the
redis-server and etcd the run used are reused, or started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.adapters.etcd import EtcdClient, EventType
from loadtest import echo
from loadtest.loop import Recorder, Shape, run_steps
from loadtest.procs import CpuMeter
from loadtest.run import RunSpec
from loadtest.stats import Latencies
from loadtest.streams import PAYLOAD, STAMP, stamped
from loadtest.target import Endpoint, start_etcd, start_redis, start_server

WRITE = """
local rev = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'v', ARGV[1], 'rev', rev)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'k', KEYS[2], 'rev', rev)
redis.call('PUBLISH', KEYS[3], rev)
return rev
"""


async def drive(
    shape: Shape, op: str, call: Callable[[int, int], Awaitable[Any]], pids: dict[str, int]
) -> dict[str, Any]:
    """Runs `call(worker, seq)` in the run's shape; the op's summary and CPU."""
    rec = Recorder()

    async def step(worker: int, seq: int, start_ns: int) -> None:
        await rec.timed(op, call(worker, seq), start_ns)

    meter = CpuMeter({"client": os.getpid(), **pids})
    meter.start()
    seconds = await run_steps(shape, step, rec, progress=False)
    cpu = meter.stop()
    summary = rec.stats(op).summary(seconds)
    summary["cpu_pct_of_one_core"] = cpu
    summary["busiest_other_processes"] = meter.others
    return summary


async def echo_baseline(
    shape: Shape,
    workdir: Path,
    channels: int,
    redis: tuple[str, dict[str, int]] | None = None,
    commit: bool = False,
) -> dict[str, Any]:
    """The bare echo; with `redis` (its URL and pids), the echo that first makes
    one Redis script call, or with `commit` the store's commit of a Put
    (loadtest/echo.py)."""
    flags, pids = ([], {}) if redis is None else (["--redis-url", redis[0]], redis[1])
    flags += ["--commit"] if commit else []
    proc, address = await start_server(workdir, "echo", flags, module="loadtest.echo")
    try:
        ep = Endpoint(address)
        chans = [ep.channel() for _ in range(channels)]
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            c.unary_unary(echo.METHOD, request_serializer=None, response_deserializer=None)
            for c in chans
        ]
        request = pb.PutRequest(
            conversation_id="echo", key="agents/worker-000/status", value=pb.Value(data=PAYLOAD)
        ).SerializeToString()

        async def call(worker: int, seq: int) -> Any:
            return await calls[worker % len(calls)](request, timeout=30)

        result = await drive(shape, "echo", call, {"server": proc.pid, **pids})
        for c in chans:
            await c.close()
        return result
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def _redis(ep: Endpoint, workdir: Path) -> AsyncIterator[tuple[str, dict[str, int]]]:
    if ep.redis_url:
        yield ep.redis_url, {k: v for k, v in ep.pids.items() if k == "redis"}
        return
    proc, url = await start_redis(workdir)
    try:
        yield url, {"redis": proc.pid}
    finally:
        proc.stop()


async def redis_baseline(ep: Endpoint, shape: Shape, workdir: Path) -> dict[str, Any]:
    async with _redis(ep, workdir) as (url, pids):
        client = aioredis.Redis.from_url(url, max_connections=max(8, shape.concurrency))
        script = client.register_script(WRITE)
        tag = f"{{lt-baseline-{time.time_ns() % 10**9}}}"

        async def call(worker: int, seq: int) -> Any:
            keys = [f"{tag}:rev", f"{tag}:e:{worker}:{seq % 16}", f"{tag}:log"]
            return await script(keys=keys, args=[stamped(0)])

        try:
            return await drive(shape, "redis-lua", call, pids)
        finally:
            await client.delete(f"{tag}:rev", f"{tag}:log")
            await client.aclose()


@contextlib.asynccontextmanager
async def _etcd(ep: Endpoint, workdir: Path) -> AsyncIterator[tuple[list[str], dict[str, int]]]:
    if ep.etcd_endpoints:
        yield ep.etcd_endpoints, {k: v for k, v in ep.pids.items() if k == "etcd"}
        return
    proc, endpoint = await start_etcd(workdir)
    try:
        yield [endpoint], {"etcd": proc.pid}
    finally:
        proc.stop()


async def etcd_baseline(ep: Endpoint, shape: Shape, workdir: Path) -> dict[str, Any]:
    async with _etcd(ep, workdir) as (endpoints, pids), EtcdClient(endpoints, timeout_s=30) as etcd:
        prefix = f"/lt-baseline-{time.time_ns() % 10**9}/"
        lag = Latencies()

        async def watch() -> None:
            async with etcd.watch(prefix, prefix=True) as events:
                async for batch in events:
                    now_us = time.time_ns() // 1000
                    for event in batch.events:
                        if event.type is EventType.PUT and len(event.kv.value) >= STAMP.size:
                            lag.add(now_us - STAMP.unpack_from(event.kv.value)[1] // 1000)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)  # the watch is open before the first put

        async def call(worker: int, seq: int) -> Any:
            return await etcd.put(f"{prefix}w{worker}/k{seq % 16}", stamped(0))

        try:
            result = await drive(shape, "etcd-put", call, pids)
            await asyncio.sleep(0.5)  # the last events reach the watch
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await etcd.delete(prefix, prefix=True)
        result["lag"] = lag.summary()
        return result


async def compare(ep: Endpoint, spec: RunSpec, workdir: Path) -> dict[str, Any]:
    """Every baseline in the run's shape; a failure is reported, the others still run."""
    shape = spec.shape
    jobs: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "echo": lambda: echo_baseline(shape, workdir, spec.channels),
        "redis-lua": lambda: redis_baseline(ep, shape, workdir),
        "etcd": lambda: etcd_baseline(ep, shape, workdir),
    }
    out: dict[str, Any] = {}
    for name, job in jobs.items():
        try:
            out[name] = await job()
        except Exception as error:
            out[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
    return out
