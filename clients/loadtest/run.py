"""One run of one scenario against one endpoint: set up, load, settle, check."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from loadtest.catalog import SCENARIOS
from loadtest.check import Ledger, check, readback
from loadtest.loop import Recorder, Shape, run_steps
from loadtest.procs import CpuMeter
from loadtest.scenarios import Context, Options, Scenario
from loadtest.stats import Latencies
from loadtest.streams import Stream, caught_up, follow
from loadtest.subscriber import SubscriberProcess
from loadtest.target import Endpoint

SETTLE_S = 15.0  # how long subscribers may take to catch up once the load stops


@dataclass
class RunSpec:
    scenario: str
    shape: Shape
    opts: Options = field(default_factory=Options)
    channels: int = 1
    tls_ca: str = ""  # a path, for subscriber processes
    inject_lost_write: bool = False  # for tests of the check: delete one acknowledged key
    progress: bool = True


async def run_scenario(ep: Endpoint, spec: RunSpec) -> dict[str, Any]:
    scenario = SCENARIOS[spec.scenario]()
    shape, opts = spec.shape, spec.opts
    run_id = uuid.uuid4().hex[:8]
    conversations = [f"lt-{spec.scenario}-{run_id}-{i}" for i in range(opts.conversations)]
    channels = [ep.channel() for _ in range(spec.channels)]
    ttl_ms = int((shape.warmup_s + shape.duration_s + 120) * 1000)
    ctx = Context(
        ep, channels, Recorder(), Ledger(), opts, conversations, shape.concurrency, ttl_ms
    )
    procs: list[SubscriberProcess] = []
    try:
        if opts.sdk or opts.sdk_writer:
            ctx.sdk_client = _sdk_client(ep, channels[0])
        if opts.sdk_writer:
            ctx.sdk_writer = await ctx.sdk_client.writer().__aenter__()
        await _create(ctx)
        procs = await _subscribe(ctx, spec)
        await scenario.setup(ctx)
        # What setup built (100,000 conversations' names, seeded keys) stays for the
        # run: out of the collector's reach, a full collection does not walk it in
        # the middle of the measurement and show up as latency.
        gc.collect()
        gc.freeze()
        try:
            seconds, meter = await _measure(ctx, scenario, spec, procs)
        finally:
            gc.unfreeze()
        await scenario.teardown(ctx)
        streams = await _settle(ctx, procs)
        if spec.inject_lost_write:
            await _lose_one(ctx)
        verdict = check(ctx.ledger, await readback(ctx.data(0), ctx.ledger, ep.metadata()), streams)
    finally:
        if ctx.sdk_writer is not None:
            await ctx.sdk_writer.aclose()
        for task in ctx.followers:
            task.cancel()
        await asyncio.gather(*ctx.followers, return_exceptions=True)
        for proc in procs:
            proc.stop()
        for c in channels:
            await c.close()
    result: dict[str, Any] = {
        "scenario": spec.scenario,
        "shape": shape.describe(),
        "conversations": opts.conversations,
        "subscribers_per_conversation": opts.subscribers,
        "measured_s": round(seconds, 3),
        "steps_target_per_s": shape.rate if shape.open else 0.0,
        "steps_achieved_per_s": round(ctx.rec.steps / seconds, 1),
        "ops": {name: s.summary(seconds) for name, s in sorted(ctx.rec.ops.items())},
        "failures": ctx.rec.failures,
        "check": verdict.as_dict(),
        **scenario.results(),
    }
    if shape.open:
        result["schedule_delay"] = ctx.rec.schedule_delay.summary()
    if streams:
        t0_wall = ctx.rec.t0_ns + ctx.wall_offset_ns
        result["delivery"] = delivery(streams, t0_wall, seconds + shape.warmup_s)
    if meter is not None:
        result["cpu_pct_of_one_core"] = meter.used
        result["peak_rss_mib"] = {k: round(v / 2**20, 1) for k, v in meter.peak_rss.items()}
        result["busiest_other_processes"] = meter.others
    died = ep.server_died()
    if died:
        result["server_died"] = died
    return result


async def _measure(
    ctx: Context, scenario: Scenario, spec: RunSpec, procs: list[SubscriberProcess]
) -> tuple[float, CpuMeter | None]:
    """The load itself, with the local processes metered (when there are any)."""
    subscribers = {f"subscribers-{i}": p.proc.pid for i, p in enumerate(procs)}
    pids = {"client": os.getpid(), **ctx.ep.pids, **subscribers}
    meter = CpuMeter(pids) if ctx.ep.pids else None
    sampler = asyncio.create_task(meter.sample_every()) if meter else None
    if meter:
        meter.start()
    try:
        step = functools.partial(scenario.step, ctx)
        exclusive = scenario.exclusive
        seconds = await run_steps(
            spec.shape, step, ctx.rec, progress=spec.progress, exclusive=exclusive
        )
    finally:
        if sampler:
            sampler.cancel()
    if meter:
        meter.stop()
    return seconds, meter


def _sdk_client(ep: Endpoint, channel: Any) -> Any:
    """The SDK's client over the harness's channel (with its TLS and token)."""
    from blackboard_client import Client, RetryPolicy

    return Client(channel, timeout=30.0, retry=RetryPolicy(), metadata=dict(ep.metadata()))


async def _create(ctx: Context, parallel: int = 64) -> None:
    gate = asyncio.Semaphore(parallel)

    async def create(i: int, conv: str) -> None:
        async with gate:
            request = pb.CreateConversationRequest(id=conv)
            await ctx.data(i).CreateConversation(request, metadata=ctx.ep.metadata(), timeout=30)

    await asyncio.gather(*(create(i, c) for i, c in enumerate(ctx.conversations)))


async def _subscribe(ctx: Context, spec: RunSpec) -> list[SubscriberProcess]:
    """S subscribers per conversation: here, or spread over subscriber processes."""
    n, nprocs = ctx.opts.subscribers, ctx.opts.subscriber_procs
    if not n:
        return []
    if not nprocs:
        ready = []
        for i, conv in enumerate(ctx.conversations * n):
            stream, synced = Stream(), asyncio.Event()
            ctx.streams.append((conv, stream))
            ctx.followers.append(
                asyncio.create_task(follow(ctx.data(i), conv, stream, synced, ctx.ep.metadata()))
            )
            ready.append(synced.wait())
        await asyncio.wait_for(asyncio.gather(*ready), 60)
        return []
    per = [n // nprocs + (i < n % nprocs) for i in range(nprocs)]
    channels = ctx.opts.subscriber_channels
    procs = [
        SubscriberProcess(ctx.ep, ctx.conversations, k, min(k, channels), spec.tls_ca)
        for k in per
        if k
    ]
    try:
        for proc in procs:
            answer = await proc.receive(120)
            if not answer["ready"]:
                raise RuntimeError(f"subscribers failed to start: {answer['errors']}")
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


async def _settle(ctx: Context, procs: list[SubscriberProcess]) -> list[dict[str, Any]]:
    """Waits for every subscriber to reach its conversation's head; their reports."""
    if not ctx.streams and not procs:
        return []
    heads = {}
    for conv in ctx.conversations:
        request = pb.RangeRequest(conversation_id=conv, page_size=1, keys_only=True)
        reply = await ctx.data(0).Range(request, metadata=ctx.ep.metadata(), timeout=30)
        heads[conv] = reply.revision
    for proc in procs:
        proc.send({"last": heads, "deadline_s": SETTLE_S})
    for conv, stream in ctx.streams:
        stream.wait_for(heads[conv])
    await caught_up([s for _, s in ctx.streams], SETTLE_S)
    reports = [{"conversation": conv, **s.report()} for conv, s in ctx.streams]
    for proc in procs:
        reports += (await proc.receive(SETTLE_S + 60))["streams"]
    return reports


async def _lose_one(ctx: Context) -> None:
    """Deletes one acknowledged key through the API: the check must catch it."""
    if not ctx.ledger.puts:
        return
    conv, key = min(ctx.ledger.puts)
    with contextlib.suppress(Exception):
        stub = pb_grpc.BlackboardStub(ctx.channels[0])
        await stub.Delete(pb.DeleteRequest(conversation_id=conv, key=key), timeout=30)


def delivery(streams: list[dict[str, Any]], t0_wall_ns: int, seconds: float) -> dict[str, Any]:
    """Commit-to-delivery lag over every subscriber, and the delivery rate from the
    start of the load to the last delivery (a backlog stretches it)."""
    commit, send, intended = Latencies(), Latencies(), Latencies()
    received = messages = 0
    last = max((s["last_delivery_ns"] for s in streams), default=0)
    for s in streams:
        commit.extend(s["commit_us"])
        send.extend(s["send_us"])
        intended.extend(s["intended_us"])
        received += s["received"]
        messages += s["messages"]
    span = max(seconds, (last - t0_wall_ns) / 1e9)
    return {
        "subscribers": len(streams),
        "deliveries": received,
        "delivery_span_s": round(span, 3),
        "deliveries_per_s": round(received / span, 1),
        "events_per_message": round(received / max(1, messages), 2),
        "commit_to_delivery": commit.summary(),
        "send_to_delivery": send.summary(),
        "intended_send_to_delivery": intended.summary(),
    }
