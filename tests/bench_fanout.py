"""The fan-out phase of `make bench`: one open-loop writer, many subscribers.

The writer sends put i at t0 + i/rate whatever happened to the earlier ones
(open loop), so a server that stalls shows it as lag and as a backlog of
writes, instead of quietly slowing the writer down. The subscribers run in
processes of their own (tests/bench_subscriber.py) and report every revision
they got; this module checks each got every one once, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.bench_common import CALL_TIMEOUT_S, VALUE, CpuMeter, Latencies, python_env
from tests.bench_profile import Profiler


class Subscribers:
    """One tests.bench_subscriber process, spoken to in JSON lines over its stdin and stdout.

    Started with subprocess.Popen rather than the event loop's subprocess support:
    uvloop forks through libuv, and gRPC would log that it skipped its fork handlers.
    """

    def __init__(self, address: str, conversation: str, streams: int, channels: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench_subscriber",
                "--target",
                address,
                "--conversation",
                conversation,
                "--streams",
                str(streams),
                "--channels",
                str(channels),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=python_env(),
        )

    async def receive(self, within_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within_s):
            line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"subscriber process exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


async def start_subscribers(
    args: argparse.Namespace, addresses: Sequence[str], conversation: str
) -> list[Subscribers]:
    """Subscriber process i follows the server at addresses[i % len(addresses)]."""
    procs = [
        Subscribers(addresses[i % len(addresses)], conversation, n, min(n, args.fanout_channels))
        for i, n in enumerate(
            args.subscribers // args.fanout_procs + (i < args.subscribers % args.fanout_procs)
            for i in range(args.fanout_procs)
        )
    ]
    try:
        for proc in procs:
            ready = await proc.receive(60)
            if not ready["ready"]:
                raise RuntimeError(f"subscribers failed to start: {ready['errors']}")
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
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
            result = await stub.Put(request, timeout=CALL_TIMEOUT_S)
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
    args: argparse.Namespace,
    address: str,
    pids: dict[str, int],
    profiler: Profiler,
    *,
    subscribe_to: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes through `address`; subscribers follow `subscribe_to` (default: `address`)."""
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.BlackboardStub(channel)
    conversation = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    await stub.CreateConversation(pb.CreateConversationRequest(id=conversation))
    procs = await start_subscribers(args, subscribe_to or [address], conversation)
    try:
        cpu = CpuMeter(
            {
                "writer": os.getpid(),
                **pids,
                **{f"subscribers-{i}": p.proc.pid for i, p in enumerate(procs)},
            }
        )
        cpu.start()
        await profiler.start("fanout-server", pids["server"], args.fanout_duration)
        writes = await open_loop_writer(stub, conversation, args.rate, args.fanout_duration)
        cpu_used = cpu.stop()
        last = max(writes.revisions, default=0)
        streams: list[dict[str, Any]] = []
        for proc in procs:
            proc.send({"last": last, "deadline_s": 10})
        for proc in procs:
            streams += (await proc.receive(60))["streams"]
    finally:
        for proc in procs:
            proc.stop()
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
