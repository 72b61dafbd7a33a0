"""Scenarios with sessions: lock contention, election churn, and an agent team.

Sessions are opened with a TTL longer than the run, so no keep-alives compete
with the load; they are closed in `teardown`. Each lock or role guards a
counter that is incremented without compare-and-set: only mutual exclusion
(and the fence on the write) keeps it exact, and the check proves it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from loadtest.scenarios import CALL_TIMEOUT_S, CONFLICT, Context, Scenario, register
from loadtest.streams import Stream, follow


class WithSessions(Scenario):
    """One session per worker, in the worker's conversation; a worker is an agent
    doing one thing at a time, also in open loop."""

    exclusive = True

    def __init__(self) -> None:
        self.sessions: dict[int, str] = {}

    async def setup(self, ctx: Context) -> None:
        async def open_one(w: int) -> None:
            request = pb.OpenSessionRequest(
                conversation_id=ctx.conversation(w), ttl_ms=ctx.session_ttl_ms
            )
            reply = await ctx.coord(w).OpenSession(request, metadata=ctx.meta(w), timeout=30)
            self.sessions[w] = reply.session_id

        await asyncio.gather(*(open_one(w) for w in range(ctx.concurrency)))

    async def teardown(self, ctx: Context) -> None:
        async def close(w: int, session: str) -> None:
            request = pb.CloseSessionRequest(
                conversation_id=ctx.conversation(w), session_id=session
            )
            await ctx.coord(w).CloseSession(request, metadata=ctx.meta(w), timeout=30)

        await asyncio.gather(*(close(w, s) for w, s in self.sessions.items()))

    async def bump(self, ctx: Context, worker: int, key: str, fence: pb.Fence) -> None:
        """Read-modify-write of a counter, safe only because the caller holds `fence`."""
        conv = ctx.conversation(worker)
        request = pb.GetRequest(conversation_id=conv, key=key)
        got = await ctx.rec.timed(
            "get", ctx.data(worker).Get(request, metadata=ctx.meta(worker), timeout=30)
        )
        value = str(int(got.entry.value.data or b"0") + 1).encode()
        revision = await ctx.put(worker, key, fence=fence, data=value)  # failed: noted unsure
        ctx.ledger.counters[(conv, key)] = ctx.ledger.counters.get((conv, key), 0) + 1
        ctx.ledger.put(conv, key, revision)

    async def seed_counters(self, ctx: Context, prefix: str) -> None:
        for w in range(len(ctx.conversations)):
            for k in range(ctx.opts.locks):
                key = f"{prefix}/c{k}"
                await ctx.put(w, key, data=b"0")
                ctx.ledger.counters[(ctx.conversation(w), key)] = 0


@register
class LockContention(WithSessions):
    name = "locks"
    help = "agents contend for --locks locks; each holder bumps a counter with a fenced write"
    concurrency = 16

    async def setup(self, ctx: Context) -> None:
        await super().setup(ctx)
        await self.seed_counters(ctx, "locked")

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        conv, coord, meta = ctx.conversation(worker), ctx.coord(worker), ctx.meta(worker)
        n = (worker + seq) % ctx.opts.locks
        request = pb.AcquireLockRequest(
            conversation_id=conv,
            session_id=self.sessions[worker],
            name=f"lock-{n}",
            wait_ms=round(ctx.opts.wait_s * 1000),
        )
        held = await ctx.rec.timed(
            "acquire",
            coord.AcquireLock(request, metadata=meta, timeout=ctx.opts.wait_s + CALL_TIMEOUT_S),
            start_ns,
            expected=(grpc.StatusCode.DEADLINE_EXCEEDED,),
        )
        try:
            await self.bump(ctx, worker, f"locked/c{n}", pb.Fence(lock=held.name, token=held.token))
        finally:
            release = pb.ReleaseLockRequest(
                conversation_id=conv, session_id=held.session_id, name=held.name, token=held.token
            )
            await ctx.rec.timed("release", coord.ReleaseLock(release, metadata=meta, timeout=30))


@register
class ElectionChurn(WithSessions):
    name = "election"
    help = "agents campaign for --locks roles; each leader proclaims, bumps a counter, resigns"
    concurrency = 16

    async def setup(self, ctx: Context) -> None:
        await super().setup(ctx)
        await self.seed_counters(ctx, "led")

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        conv, coord, meta = ctx.conversation(worker), ctx.coord(worker), ctx.meta(worker)
        n = (worker + seq) % ctx.opts.locks
        session = self.sessions[worker]
        request = pb.CampaignRequest(
            conversation_id=conv,
            session_id=session,
            role=f"role-{n}",
            value=f"w{worker}".encode(),
            wait_ms=round(ctx.opts.wait_s * 1000),
        )
        leader = await ctx.rec.timed(
            "campaign",
            coord.Campaign(request, metadata=meta, timeout=ctx.opts.wait_s + CALL_TIMEOUT_S),
            start_ns,
            expected=(grpc.StatusCode.DEADLINE_EXCEEDED,),
        )
        try:
            proclaim = pb.ProclaimRequest(
                conversation_id=conv,
                session_id=session,
                role=leader.name,
                token=leader.token,
                value=f"w{worker} s{seq}".encode(),
            )
            await ctx.rec.timed("proclaim", coord.Proclaim(proclaim, metadata=meta, timeout=30))
            fence = pb.Fence(election=leader.name, token=leader.token)
            await self.bump(ctx, worker, f"led/c{n}", fence)
        finally:
            resign = pb.ResignRequest(
                conversation_id=conv, session_id=session, role=leader.name, token=leader.token
            )
            await ctx.rec.timed("resign", coord.Resign(resign, metadata=meta, timeout=30))


@register
class AgentTeam(WithSessions):
    name = "team"
    help = (
        "each agent subscribes, claims tasks with locks (try once), writes fenced results "
        "and appends messages"
    )
    concurrency = 16

    def __init__(self) -> None:
        super().__init__()
        self.claimed = 0
        self.busy = 0

    async def setup(self, ctx: Context) -> None:
        await super().setup(ctx)
        ready = []
        for w in range(ctx.concurrency):
            stream, synced = Stream(), asyncio.Event()
            ctx.streams.append((ctx.conversation(w), stream))
            task = asyncio.create_task(
                follow(ctx.data(w), ctx.conversation(w), stream, synced, ctx.meta(w))
            )
            ctx.followers.append(task)
            ready.append(synced.wait())
        await asyncio.wait_for(asyncio.gather(*ready), CALL_TIMEOUT_S)

    async def step(self, ctx: Context, worker: int, seq: int, start_ns: int) -> None:
        conv, coord, meta = ctx.conversation(worker), ctx.coord(worker), ctx.meta(worker)
        task = (worker * 131 + seq) % ctx.opts.tasks
        request = pb.AcquireLockRequest(
            conversation_id=conv, session_id=self.sessions[worker], name=f"task-{task}"
        )
        try:
            held = await ctx.rec.timed(
                "claim",
                coord.AcquireLock(request, metadata=meta, timeout=CALL_TIMEOUT_S),
                start_ns,
                expected=CONFLICT,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self.busy += 1  # another agent has this task: pick another next time
                return
            raise
        self.claimed += 1
        try:
            fence = pb.Fence(lock=held.name, token=held.token)
            await ctx.put(worker, f"results/task-{task}", fence=fence)
            append = pb.AppendRequest(
                conversation_id=conv,
                key="messages",
                value=ctx.value(),
                fence=fence,
            )
            reply = await ctx.rec.timed(
                "append", ctx.data(worker).Append(append, metadata=meta, timeout=CALL_TIMEOUT_S)
            )
            ctx.ledger.appended(conv, "messages", reply.key, reply.revision)
        finally:
            release = pb.ReleaseLockRequest(
                conversation_id=conv, session_id=held.session_id, name=held.name, token=held.token
            )
            await ctx.rec.timed("release", coord.ReleaseLock(release, metadata=meta, timeout=30))

    def results(self) -> dict[str, Any]:
        return {"tasks_claimed": self.claimed, "tasks_found_busy": self.busy}
