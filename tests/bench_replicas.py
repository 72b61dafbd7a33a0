"""The replica phase of `make bench`: what more server processes buy on one machine.

On one redis-server and one etcd member (on disk), the same closed-loop Put
load as the put phase against:

1. one server process;
2. two replicas (two processes, two ports), the client's channels spread
   over both with round_robin as the SDK does;
3. `blackboard-server --workers 2` (one port, SO_REUSEPORT), over
   `--replica-channels` connections, which the kernel spreads over the workers
   (by a hash of each connection: not always evenly);

The load is `--concurrency` writers over `--replica-channels` channels and as
many conversations (many agents' conversations, not one hot one), the same in
every shape.

then fan-out across replicas: one open-loop writer on replica A, the
subscriber processes split between A and B, so half the streams get every
event through Redis pub/sub and the log from another process.

Every figure has its p99. All processes share the machine's cores, so two
processes cannot double a single one's rate on two cores that already run
the client, Redis and etcd; the table says how busy each was.

`run_replicas(args, tmp, redis)` is the entry point (it needs the options of
tests/bench.py's parser); `replica_rows(result)` formats its table rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.bench_common import CpuMeter, ServerProcess
from tests.bench_fanout import run_fanout
from tests.bench_profile import Profiler
from tests.bench_report import Row
from tests.servers import EtcdCluster, RedisServer, free_port

CHANNEL_OPTIONS = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # Each channel its own connections: channels to one target otherwise share one,
    # and --workers would see a single connection (so a single worker).
    ("grpc.use_local_subchannel_pool", 1),
)
SHAPES = ("one_process", "two_replicas", "workers_2")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Servers:
    """Server processes of one shape on shared Redis and etcd."""

    def __init__(self, tmp: Path, redis: RedisServer, etcd: EtcdCluster) -> None:
        self.tmp, self.redis, self.etcd = tmp, redis, etcd
        self.started: list[ServerProcess] = []

    def start(self, name: str, *extra: str) -> str:
        address = f"127.0.0.1:{free_port()}"
        args = [
            "-m",
            "blackboard_server",
            "--listen",
            address,
            "--redis-url",
            self.redis.url,
            "--etcd-endpoints",
            ",".join(self.etcd.endpoints),
            "--etcd-prefix",
            f"/bench-{uuid.uuid4().hex[:8]}",
            "--log-format",
            "json",
            "--log-level",
            "warning",
            *extra,
        ]
        self.started.append(ServerProcess(name, args, self.tmp).start())
        return address

    def pids(self) -> dict[str, int]:
        found = {}
        for server in self.started:
            workers = children(server.pid)
            if workers:  # a --workers parent: what counts is its workers
                found.update({f"{server.name}-w{i}": pid for i, pid in enumerate(workers)})
            else:
                found[server.name] = server.pid
        return found

    def stop(self) -> None:
        for server in self.started:
            server.stop(grace=15)
        self.started.clear()


@asynccontextmanager
async def shape(servers: Servers, name: str) -> AsyncIterator[list[str]]:
    """Starts the servers of one shape; yields the addresses to spread load over."""
    if name == "one_process":
        addresses = [servers.start("server")]
    elif name == "two_replicas":
        addresses = [servers.start("replica-a"), servers.start("replica-b")]
    else:
        addresses = [servers.start("workers", "--workers", "2")]
    try:
        for server, address in zip(servers.started, addresses, strict=True):
            await server.wait_serving(address)
        if name == "workers_2":  # the parent answers nothing: wait for both workers
            while len(children(servers.started[0].pid)) < 2:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the second worker's listener
        yield addresses
    finally:
        servers.stop()


async def writes(args: argparse.Namespace, addresses: list[str], pids: dict[str, int]) -> Any:
    from tests.bench import closed_loop, put_requests  # the put phase's load, unchanged

    target = addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        for _ in range(args.replica_channels)
    ]
    stubs = [pb_grpc.BlackboardStub(c) for c in channels]
    conversation = f"bench-replicas-{uuid.uuid4().hex[:8]}"
    await stubs[0].CreateConversation(pb.CreateConversationRequest(id=conversation))
    # Per conversation, commits go through one Lua step in Redis: spread the load
    # over as many conversations as channels, as many agents' conversations would.
    convs = [conversation]
    for c in range(1, len(stubs)):
        convs.append(f"{conversation}-{c}")
        await stubs[0].CreateConversation(pb.CreateConversationRequest(id=convs[-1]))
    requests = [
        put_requests(convs[i % len(convs)], args.concurrency)[i] for i in range(args.concurrency)
    ]
    cpu = CpuMeter({"client": os.getpid(), **pids})
    try:
        return await closed_loop(
            [s.Put for s in stubs], requests, args.warmup, args.duration, cpu, _nothing
        )
    finally:
        for c in channels:
            await c.close()


async def _nothing() -> None:
    return None


async def run_replicas(
    args: argparse.Namespace, tmp: Path, redis: RedisServer | None
) -> dict[str, Any]:
    if redis is None:
        return {"skipped": "replicas need Redis: run with --store redis"}
    etcd = EtcdCluster(tmp / "etcd-replicas", size=1)
    await asyncio.to_thread(etcd.start)
    servers = Servers(tmp, redis, etcd)
    result: dict[str, Any] = {"channels": args.replica_channels}
    redis_pid = {"redis": redis.proc.pid} if redis.proc is not None else {}
    try:
        for name in SHAPES:
            async with shape(servers, name) as addresses:
                pids = {**servers.pids(), **redis_pid}
                result[name] = await writes(args, addresses, pids)
        async with shape(servers, "two_replicas") as addresses:
            a, b = (server.pid for server in servers.started)
            pids = {"server": a, "replica-b": b, **redis_pid}  # the writer's replica is "server"
            result["fanout_across"] = await run_fanout(
                args, addresses[0], pids, Profiler(None), subscribe_to=addresses
            )
    finally:
        servers.stop()
        etcd.stop()
    return result


def replica_rows(r: dict[str, Any]) -> list[Row]:
    if "skipped" in r or "error" in r:
        return [Row("replicas", r.get("skipped") or "ERROR", "runs", "skipped" in r or None)]
    table: list[Row] = []
    labels = {
        "one_process": "1 process",
        "two_replicas": "2 replicas",
        "workers_2": "--workers 2",
    }
    for name, label in labels.items():
        phase = r.get(name, {})
        if "ops_per_s" not in phase:
            table.append(Row(f"writes/s, {label}", "ERROR", "runs", False))
            continue
        lat = phase["latency"]
        errors = sum(phase["errors"].values())
        table.append(
            Row(
                f"writes/s, {label} (p50 / p99 ms)",
                f"{phase['ops_per_s']:,.0f} ({lat['p50_ms']:.1f} / {lat['p99_ms']:.1f})"
                + (f", {errors} errors" if errors else ""),
            )
        )
    fan = r.get("fanout_across", {})
    if "deliveries" in fan:
        lat = fan["commit_to_delivery"]
        complete = fan["streams_with_problems"] == 0
        table.append(
            Row(
                f"fan-out across 2 replicas, {fan['subscribers']} subscribers",
                f"{fan['deliveries_per_s']:,.0f} deliveries/s, commit -> delivery "
                f"p50 / p99 {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
                "all delivered once, in order",
                complete and fan["deliveries"] == fan["deliveries_expected"],
            )
        )
    else:
        table.append(Row("fan-out across replicas", "ERROR", "runs", False))
    return table
