"""`make bench`: unary Put against a bare grpc.aio echo, and change-stream fan-out.

One run, one real redis-server (started here, in a temp dir), the Blackboard
server in its own process, clients on uvloop with the raw generated stubs:

1. echo: a closed loop of `--concurrency` workers calling a bytes-in/bytes-out
   grpc.aio echo server (tests/bench_echo.py, its own process) back to back;
2. put: the same load shape against Blackboard Put (one conversation, one key
   per worker), and the ratio put/echo;
3. fan-out: one writer putting at a fixed rate (open loop: each write has an
   intended send time, so a stall shows up as lag instead of being hidden)
   while `--subscribers` Subscribe streams in separate processes
   (tests/bench_fanout.py) check that they get every revision once, in order.

Prints a table and writes bench-results/latest.json.

    python -m tests.bench [--store embedded] [--duration 10] ...
"""

from __future__ import annotations

import os

# The benchmark starts subscriber processes after gRPC is running; they exec at once,
# so gRPC's fork handlers have nothing to do (and would log that they were skipped).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests import bench_echo
from tests.bench_common import CpuMeter, Latencies, ServerProcess, machine, wait_quiet
from tests.bench_profile import Profiler
from tests.bench_report import print_table, rows
from tests.servers import RedisServer, free_port, require

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "latest.json"
REDIS_ADAPTER = ROOT / "server" / "blackboard_server" / "adapters" / "redis_store.py"
VALUE = b"x" * 100  # a small JSON-ish status value


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
                await call(request)
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


# --- fan-out -----------------------------------------------------------------


async def start_subscribers(
    args: argparse.Namespace, address: str, conversation: str
) -> list[asyncio.subprocess.Process]:
    procs = []
    per_proc = [
        args.subscribers // args.fanout_procs + (i < args.subscribers % args.fanout_procs)
        for i in range(args.fanout_procs)
    ]
    for streams in per_proc:
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.bench_fanout",
                "--target",
                address,
                "--conversation",
                conversation,
                "--streams",
                str(streams),
                "--channels",
                str(min(streams, args.fanout_channels)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=256 << 20,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        ready = json.loads(line or b'{"ready": false, "errors": ["exited"]}')
        if not ready["ready"]:
            raise RuntimeError(f"subscribers failed to start: {ready['errors']}")
    return procs


@dataclass
class Writes:
    t0_wall_ns: int
    duration_s: float
    revisions: list[int] = field(default_factory=list)
    latency: Latencies = field(default_factory=Latencies)  # from the intended send time
    errors: dict[str, int] = field(default_factory=dict)
    in_window: int = 0  # completed within the intended sending window
    drained_s: float = 0.0  # from the window's end until the last write completed


async def open_loop_writer(
    stub: pb_grpc.BlackboardStub, conversation: str, rate: float, duration_s: float
) -> Writes:
    """Sends write i at t0 + i/rate, whatever happened to the earlier ones."""
    period_ns = int(1e9 / rate)
    count = int(rate * duration_s)
    t0_mono = time.monotonic_ns() + 10_000_000
    writes = Writes(time.time_ns() + 10_000_000, duration_s)
    window_end = t0_mono + count * period_ns

    async def write(i: int, intended_mono: int) -> None:
        data = struct.pack("<qq", writes.t0_wall_ns + i * period_ns, time.time_ns()) + VALUE
        request = pb.PutRequest(
            conversation_id=conversation,
            key=f"fanout/k{i % 16:02d}",
            value=pb.Value(data=data, content_type="application/octet-stream"),
        )
        try:
            result = await stub.Put(request)
        except grpc.aio.AioRpcError as error:
            key = f"{error.code().name}: {error.details()}"
            writes.errors[key] = writes.errors.get(key, 0) + 1
            return
        done = time.monotonic_ns()
        writes.revisions.append(result.revision)
        writes.latency.add((done - intended_mono) // 1000)
        writes.in_window += done <= window_end

    tasks = []
    for i in range(count):
        intended = t0_mono + i * period_ns
        delay = intended - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        tasks.append(asyncio.create_task(write(i, intended)))
    await asyncio.gather(*tasks)
    writes.drained_s = max(0.0, (time.monotonic_ns() - window_end) / 1e9)
    return writes


async def run_fanout(
    args: argparse.Namespace, address: str, pids: dict[str, int], profiler: Profiler
) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.BlackboardStub(channel)
    conversation = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    await stub.CreateConversation(pb.CreateConversationRequest(id=conversation))
    procs = await start_subscribers(args, address, conversation)
    try:
        cpu = CpuMeter(
            {
                "writer": os.getpid(),
                **pids,
                **{f"subscribers-{i}": p.pid for i, p in enumerate(procs)},
            }
        )
        cpu.start()
        await profiler.start("fanout-server", pids["server"], args.fanout_duration)
        writes = await open_loop_writer(stub, conversation, args.rate, args.fanout_duration)
        cpu_used = cpu.stop()
        last = max(writes.revisions, default=0)
        streams: list[dict[str, Any]] = []
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"last": last, "deadline_s": 10}).encode() + b"\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            streams += json.loads(line)["streams"]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        await channel.close()
    summary = fanout_summary(args, streams, last, writes, cpu_used)
    summary["busiest_other_processes"] = cpu.others
    return summary


def fanout_summary(
    args: argparse.Namespace,
    streams: list[dict[str, Any]],
    last: int,
    writes: Writes,
    cpu: dict[str, float],
) -> dict[str, Any]:
    commit, send, intended = Latencies(), Latencies(), Latencies()
    problems: list[str] = []
    received = messages = 0
    for i, s in enumerate(streams):
        commit.extend(s["commit_us"])
        send.extend(s["send_us"])
        intended.extend(s["intended_us"])
        received += s["received"]
        messages += s["messages"]
        tail = max(0, last - s["last"])
        if s["missing"] or s["duplicates"] or s["resets"] or s["error"] or tail:
            problems.append(
                f"stream {i}: missing {s['missing'] + tail} (never received {tail}), "
                f"duplicates {s['duplicates']}, resets {s['resets']}, error {s['error']!r}"
            )
    expected = sum(max(0, last - s["synced"]) for s in streams)
    # From the first intended send to the last delivery: a backlog stretches it.
    last_delivery = max((s["last_delivery_ns"] for s in streams), default=writes.t0_wall_ns)
    span_s = max(writes.duration_s, (last_delivery - writes.t0_wall_ns) / 1e9)
    revisions = sorted(writes.revisions)
    return {
        "subscribers": len(streams),
        "subscriber_processes": args.fanout_procs,
        "channels_per_process": args.fanout_channels,
        "intended_writes_per_s": args.rate,
        "writes": len(revisions),
        "write_errors": writes.errors,
        "writes_completed_in_window_per_s": round(writes.in_window / writes.duration_s, 1),
        "write_backlog_drained_after_window_s": round(writes.drained_s, 3),
        "revisions_contiguous": revisions == list(range(last - len(revisions) + 1, last + 1)),
        "deliveries": received,
        "deliveries_expected": expected,
        "delivery_span_s": round(span_s, 3),
        "deliveries_per_s": round(received / span_s, 1),
        "stream_messages": messages,
        "streams_with_problems": len(problems),
        "problems": problems[:10],
        "commit_to_delivery": commit.summary(),
        "send_to_delivery": send.summary(),
        "intended_send_to_delivery": intended.summary(),
        "put_latency_from_intended_send": writes.latency.summary(),
        "cpu_pct_of_one_core": cpu,
    }


# --- the run -----------------------------------------------------------------


async def phase(name: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Runs one phase; a failure is recorded and reported, and the next phase still runs."""
    try:
        return await work
    except Exception as error:
        print(f"{name} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


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
        address = f"127.0.0.1:{free_port()}"
        server_args = ["-m", "blackboard_server", "--listen", address, "--log-format", "json"]
        if redis is not None:
            redis.start()
            result["redis"] = redis_version()
            server_args += ["--redis-url", redis.url]
        server = ServerProcess("blackboard-server", server_args, tmp)
        try:
            server.start()
            await server.wait_serving(address)
            pids = {"server": server.pid}
            if redis is not None and redis.proc is not None:
                pids["redis"] = redis.proc.pid
            result["put"] = await phase("put", run_put(args, address, pids, profiler))
            result["fanout"] = await phase("fan-out", run_fanout(args, address, pids, profiler))
            if server.proc is not None and server.proc.poll() is not None:
                result["server_died"] = server.log_tail()
        finally:
            await profiler.wait()
            server.stop()
            if redis is not None:
                redis.stop()
            # Keep the server's log next to the results: it says what failed, if anything.
            shutil.copyfile(server.log_path, RESULTS.parent / "server.log")
    result["profile"] = profiler.summaries()
    return result


def redis_version() -> str:
    out = subprocess.run(
        [require("redis-server"), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


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
    return 1 if any("error" in result.get(k, {}) for k in ("echo", "put", "fanout")) else 0


if __name__ == "__main__":
    sys.exit(main())
