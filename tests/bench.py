"""`make bench`: unary Put against a bare grpc.aio echo, change-stream fan-out, and
lock latencies.

One run, one real redis-server (started here, in a temp dir), the Blackboard
server in its own process, clients on uvloop with the raw generated stubs:

1. echo: a closed loop of `--concurrency` workers calling a bytes-in/bytes-out
   grpc.aio echo server (tests/bench_echo.py, its own process) back to back;
2. put: the same load shape against Blackboard Put (one conversation, one key
   per worker), and the ratio put/echo;
3. fan-out (tests/bench_fanout.py): one writer putting at a fixed rate (open
   loop: each write has an intended send time, so a stall shows up as lag
   instead of being hidden) while `--subscribers` Subscribe streams in separate
   processes (tests/bench_subscriber.py) check that they get every revision
   once, in order;
4. coordination (tests/bench_locks.py): a second Blackboard server, on the same
   redis-server and on one etcd member (on disk, in the temp dir): lock acquire +
   release round trips and lock hand-offs between two sessions, next to etcd's
   own v3lock hand-off on the same etcd. A second server rather than etcd under
   the first one, so that put and fan-out are measured as before, without the
   etcd coordinator's background work (replica lease, shard elections) or an
   etcd process on the cores.

Prints a table and writes bench-results/latest.json (and the server's log next
to it). Every process shares the machine: the table says how much CPU each used
and how much went to anything else, and warns when that was enough to matter.
`--profile` samples the servers with py-spy (tests/bench_profile.py).

    python -m tests.bench [--store embedded] [--duration 10] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests import bench_echo, bench_locks
from tests.bench_common import (
    CALL_TIMEOUT_S,
    VALUE,
    CpuMeter,
    Latencies,
    ServerProcess,
    machine,
    wait_quiet,
)
from tests.bench_fanout import run_fanout
from tests.bench_profile import Profiler
from tests.bench_report import print_table, rows
from tests.servers import EtcdCluster, RedisServer, free_port, require

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "latest.json"
REDIS_ADAPTER = ROOT / "server" / "blackboard_server" / "adapters" / "redis_store.py"


# --- closed loop -------------------------------------------------------------


async def closed_loop(
    calls: list[Any],
    requests: list[Any],
    warmup_s: float,
    duration_s: float,
    cpu: CpuMeter,
    on_window: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """Each worker issues its request back to back; completions inside the window count."""
    latencies = Latencies()
    completed = 0
    errors: dict[str, int] = {}
    start = time.perf_counter_ns()
    window_start = start + int(warmup_s * 1e9)
    window_end = window_start + int(duration_s * 1e9)

    async def worker(i: int) -> None:
        nonlocal completed
        call, request = calls[i % len(calls)], requests[i]
        while (t0 := time.perf_counter_ns()) < window_end:
            try:
                await call(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                key = f"{error.code().name}: {error.details()}"
                errors[key] = errors.get(key, 0) + 1
                if sum(errors.values()) > 1000:
                    raise
                continue
            t1 = time.perf_counter_ns()
            if window_start <= t1 <= window_end:
                completed += 1
                latencies.add((t1 - t0) // 1000)

    async def meter() -> dict[str, float]:
        await asyncio.sleep(warmup_s)
        cpu.start()
        await on_window()
        await asyncio.sleep(duration_s)
        return cpu.stop()

    cpu_task = asyncio.create_task(meter())
    await asyncio.gather(*(worker(i) for i in range(len(requests))))
    return {
        "ops_per_s": round(completed / duration_s, 1),
        "latency": latencies.summary(),
        "errors": errors,
        "cpu_pct_of_one_core": await cpu_task,
        "busiest_other_processes": cpu.others,
    }


async def run_echo(args: argparse.Namespace, tmp: Path, profiler: Profiler) -> dict[str, Any]:
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess("echo", ["-m", "tests.bench_echo", "--listen", address], tmp)
    server.start()
    try:
        await server.wait_serving(address)
        channels = [grpc.aio.insecure_channel(address) for _ in range(args.channels)]
        calls = [
            c.unary_unary(
                bench_echo.METHOD,
                request_serializer=pb.PutRequest.SerializeToString,
                response_deserializer=None,
            )
            for c in channels
        ]
        cpu = CpuMeter({"client": os.getpid(), "server": server.pid})
        result = await closed_loop(
            calls,
            put_requests("echo", args.concurrency),
            args.warmup,
            args.duration,
            cpu,
            lambda: profiler.start("echo-server", server.pid, args.duration),
        )
        for c in channels:
            await c.close()
        await profiler.wait()
        return result
    finally:
        server.stop()


def put_requests(conversation: str, workers: int) -> list[pb.PutRequest]:
    return [
        pb.PutRequest(
            conversation_id=conversation,
            key=f"agents/worker-{i:03d}/status",
            value=pb.Value(data=VALUE, content_type="application/json"),
        )
        for i in range(workers)
    ]


async def run_put(
    args: argparse.Namespace, address: str, pids: dict[str, int], profiler: Profiler
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(args.channels)]
    stubs = [pb_grpc.BlackboardStub(c) for c in channels]
    conversation = f"bench-put-{uuid.uuid4().hex[:8]}"
    await stubs[0].CreateConversation(pb.CreateConversationRequest(id=conversation))
    cpu = CpuMeter({"client": os.getpid(), **pids})
    result = await closed_loop(
        [s.Put for s in stubs],
        put_requests(conversation, args.concurrency),
        args.warmup,
        args.duration,
        cpu,
        lambda: profiler.start("put-server", pids["server"], args.duration),
    )
    for c in channels:
        await c.close()
    return result


# --- the run -----------------------------------------------------------------


async def phase(name: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Runs one phase; a failure is recorded and reported, and the next phase still runs."""
    try:
        return await work
    except Exception as error:
        print(f"{name} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


async def run_coordination(
    args: argparse.Namespace, tmp: Path, redis: RedisServer | None
) -> dict[str, Any]:
    cluster = EtcdCluster(tmp / "etcd", size=1)
    flags = bench_locks.server_flags(cluster.endpoints)
    server, address = blackboard_server("blackboard-server-coordination", tmp, redis, *flags)
    try:
        await asyncio.to_thread(cluster.start)
        server.start()
        await server.wait_serving(address)
        pids = {"server": server.pid, **_pid("etcd", cluster.members[0].proc)}
        if redis is not None:
            pids.update(_pid("redis", redis.proc))
        began = time.monotonic()
        async with asyncio.timeout(args.lock_timeout):
            result = await bench_locks.run_locks(args, address, cluster.endpoints, pids)
        result["took_s"] = round(time.monotonic() - began, 1)
        result["etcd"] = f"{etcd_version()}, 1 member, data on disk"
        if server.proc is not None and server.proc.poll() is not None:
            result["server_died"] = server.log_tail()
        return result
    finally:
        server.stop()
        cluster.stop()
        if server.log_path.exists():
            shutil.copyfile(server.log_path, RESULTS.parent / "server-coordination.log")


def blackboard_server(
    name: str, tmp: Path, redis: RedisServer | None, *flags: str
) -> tuple[ServerProcess, str]:
    address = f"127.0.0.1:{free_port()}"
    args = ["-m", "blackboard_server", "--listen", address, "--log-format", "json", *flags]
    if redis is not None:
        args += ["--redis-url", redis.url, "--durability", "durable" if redis.durable else "fast"]
    return ServerProcess(name, args, tmp), address


def _pid(name: str, proc: subprocess.Popen[bytes] | None) -> dict[str, int]:
    return {} if proc is None else {name: proc.pid}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "client_loop": type(asyncio.get_running_loop()).__module__,
        "store": args.store,
        "settings": vars(args),
    }
    busy, waited = await wait_quiet(args.wait_quiet)
    result["machine_busy_before_start_pct"] = busy
    result["waited_for_quiet_s"] = waited
    RESULTS.parent.mkdir(exist_ok=True)
    profiler = Profiler(RESULTS.parent if args.profile else None)
    with tempfile.TemporaryDirectory(prefix="bb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        result["echo"] = await phase("echo", run_echo(args, tmp, profiler))
        redis = RedisServer(tmp / "redis") if args.store == "redis" else None
        if redis is not None:
            redis.start()
            result["redis"] = redis_version()
        try:
            await run_data_phases(args, tmp, redis, profiler, result)
            result["coordination"] = await phase("coordination", run_coordination(args, tmp, redis))
        finally:
            if redis is not None:
                redis.stop()
    result["profile"] = profiler.summaries()
    return result


async def run_data_phases(
    args: argparse.Namespace,
    tmp: Path,
    redis: RedisServer | None,
    profiler: Profiler,
    result: dict[str, Any],
) -> None:
    """put and fan-out, on one server."""
    server, address = blackboard_server("blackboard-server", tmp, redis)
    try:
        server.start()
        await server.wait_serving(address)
        pids = {"server": server.pid}
        if redis is not None:
            pids.update(_pid("redis", redis.proc))
        result["put"] = await phase("put", run_put(args, address, pids, profiler))
        result["fanout"] = await phase("fan-out", run_fanout(args, address, pids, profiler))
        if server.proc is not None and server.proc.poll() is not None:
            result["server_died"] = server.log_tail()
    finally:
        await profiler.wait()
        server.stop()
        # Keep the server's log next to the results: it says what failed, if anything.
        shutil.copyfile(server.log_path, RESULTS.parent / "server.log")


def redis_version() -> str:
    out = subprocess.run(
        [require("redis-server"), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def etcd_version() -> str:
    out = subprocess.run(
        [require("etcd"), "--version"], capture_output=True, text=True, check=False
    )
    first = out.stdout.splitlines()[0] if out.stdout else "etcd"
    return " ".join(first.replace("Version:", "").split())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--store", choices=("redis", "embedded"), default="redis")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--channels", type=int, default=1, help="client channels for unary load")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--rate", type=float, default=200.0, help="fan-out writes per second")
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--fanout-procs", type=int, default=2, help="subscriber processes")
    p.add_argument("--fanout-channels", type=int, default=5, help="channels per process")
    p.add_argument("--fanout-duration", type=float, default=10.0)
    p.add_argument("--lock-rounds", type=int, default=300, help="acquire + release round trips")
    p.add_argument("--lock-handoffs", type=int, default=100, help="hand-offs per case")
    p.add_argument(
        "--lock-settle-ms",
        type=int,
        default=200,
        help="the second hand-off case: how long the waiter has waited before the release",
    )
    p.add_argument(
        "--lock-timeout", type=float, default=150.0, help="seconds the coordination phase may take"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="seconds to wait at most for the machine to be idle before starting",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the servers with py-spy while measured (bench-results/profile-*.txt)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.store == "redis" and not REDIS_ADAPTER.exists():
        print(
            f"{REDIS_ADAPTER.relative_to(ROOT)} does not exist yet: "
            "run with --store embedded to measure the in-memory store",
            file=sys.stderr,
        )
        return 2
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(bench(args))
    else:
        result = uvloop.run(bench(args))
    print_table(result, rows(result))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    phases = ("echo", "put", "fanout", "coordination")
    return 1 if any("error" in result.get(k, {}) for k in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
