"""The replica phases of `make bench`: what more server processes buy on one machine.

`workers`: the put phase's closed loop (64 in flight) against one server
process, two replicas (two processes, two ports; the load's channels spread
over both with round_robin, as the SDK does), and `--workers 2` (one port,
SO_REUSEPORT; the kernel spreads the load's connections over the workers by a
hash, so not always evenly). Writes go round `CHANNELS` conversations over as
many connections, the same in every shape. Its `ratio` (workers 2 / one
process) is the roadmap target the table reads.

`fanout_replicas`: the fan-out phase's load (one writer at 200 writes/s, 100
subscribers in two processes) with the writer on replica A and every
subscriber on replica B, so each delivery crosses processes: Redis pub/sub
wakes B's feed, which reads the log.

All of it on the run's one redis-server and etcd member, each phase's servers
started and stopped here. Every process shares the machine's cores: on two
cores that also run the client, Redis and etcd, a second server process has
little idle CPU to use, and the CPU figures say where it went.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtest.bench import Bench, _unary, phase
from loadtest.run import RunSpec, run_scenario
from loadtest.scenarios import Options
from loadtest.target import Endpoint, Process, start_server

CHANNELS = 8
SHAPES = ("one_process", "two_replicas", "workers_2")
CHANNEL_OPTIONS = [
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # Each channel its own connections: channels to one target otherwise share
    # them, and --workers would see one connection, so one worker.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 << 20),
]


@dataclass
class Replicas(Endpoint):
    """Load goes to `targets` (round_robin); subscriber processes to `address`."""

    targets: list[str] = field(default_factory=list)

    def channel(self) -> grpc.aio.Channel:
        target = self.targets[0] if len(self.targets) == 1 else "ipv4:" + ",".join(self.targets)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@asynccontextmanager
async def servers(b: Bench, shape: str) -> AsyncIterator[Replicas]:
    """The server processes of one shape, on the run's Redis and etcd."""
    flags = [
        "--redis-url",
        b.redis_url,
        "--durability",
        "fast",  # the bench's Redis has no AOF
        "--etcd-endpoints",
        ",".join(b.etcd_endpoints),
        "--etcd-prefix",
        f"/lt-{uuid.uuid4().hex[:8]}",
        "--log-format",
        "json",
        "--log-level",
        "warning",
    ]
    started: list[Process] = []
    try:
        if shape == "workers_2":
            proc, address = await start_server(b.workdir, "workers", [*flags, "--workers", "2"])
            started.append(proc)
            await proc.until(lambda: len(children(proc.pid)) >= 2, 30)
            await asyncio.sleep(1.5)  # the later worker's listener (nothing to poll for it)
            pids = {f"server-w{i}": pid for i, pid in enumerate(children(proc.pid))}
            addresses = [address]
        else:
            addresses, pids = [], {}
            for name in ("server", "replica-b")[: 1 if shape == "one_process" else 2]:
                proc, address = await start_server(b.workdir, name, flags)
                started.append(proc)
                addresses.append(address)
                pids[name] = proc.pid
        yield Replicas(
            addresses[-1],
            redis_url=b.redis_url,
            etcd_endpoints=b.etcd_endpoints,
            pids={**pids, **b.pids},
            description=f"blackboard-server, {shape.replace('_', ' ')}",
            processes=started,
            targets=addresses,
        )
    finally:
        for proc in reversed(started):
            proc.stop()


async def _run(b: Bench, ep: Endpoint, spec: RunSpec) -> dict[str, Any]:
    spec.progress = not b.args.quiet
    return await run_scenario(ep, spec)


@phase("workers", server="none")
async def writes_by_shape(b: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {"channels": CHANNELS, "conversations": CHANNELS}
    opts = Options(keys=1, conversations=CHANNELS)
    for shape in SHAPES:
        async with servers(b, shape) as ep:
            spec = RunSpec("write-heavy", b.shape(), opts, channels=CHANNELS)
            result[shape] = _unary(await _run(b, ep, spec), "put")
            if ep.server_died():
                result[shape]["server_died"] = ep.server_died()
    one = result["one_process"]["achieved_per_s"]
    result["ratio"] = round(result["workers_2"]["achieved_per_s"] / one, 3) if one else None
    result["ratio_two_replicas"] = (
        round(result["two_replicas"]["achieved_per_s"] / one, 3) if one else None
    )
    return result


@phase("fanout_replicas", server="none")
async def fanout_across(b: Bench) -> dict[str, Any]:
    async with servers(b, "two_replicas") as ep:
        ep.targets, ep.address = ep.targets[:1], ep.targets[1]  # write on A, follow on B
        shape = b.shape(concurrency=1, rate=200.0, duration_s=b.args.fanout_duration, warmup_s=0)
        opts = Options(subscribers=100, subscriber_procs=2)
        run = await _run(b, ep, RunSpec("fan-out", shape, opts))
        return {**_unary(run, "put"), "delivery": run.get("delivery", {})}
