"""Coordination through the real gRPC server: sessions, locks, elections, fenced
writes, session-bound entries, and their events in the change stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer
from tests.integration.conftest import error_of, state_of
from tests.integration.test_api import details, put
from tests.integration.test_stream import Recorder, wait_until

Kind = pb.CoordinationEvent


class Agents:
    """Stubs for one server: the blackboard and coordination services."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.bb = pb_grpc.BlackboardStub(channel)
        self.co = pb_grpc.CoordinationStub(channel)

    async def session(self, conv: str, agent: str, ttl_ms: int = 10_000) -> pb.Session:
        return await self.co.OpenSession(
            pb.OpenSessionRequest(conversation_id=conv, ttl_ms=ttl_ms),
            metadata=(("x-agent-id", agent),),
        )


@pytest.fixture
async def coord_server(make_server: Any) -> AsyncIterator[RunningServer]:
    async with make_server(progress_interval_s=0.3) as running:
        yield running


@pytest.fixture
async def agents(coord_server: RunningServer) -> AsyncIterator[Agents]:
    async with grpc.aio.insecure_channel(coord_server.address) as channel:
        yield Agents(channel)


async def new_conv(agents: Agents) -> str:
    conv = f"co-{uuid.uuid4().hex[:10]}"
    await agents.bb.CreateConversation(pb.CreateConversationRequest(id=conv))
    return conv


def coordination_events(recorder: Recorder) -> list[tuple[int, str, str, int]]:
    return [
        (e.coordination.kind, e.coordination.agent_id, e.coordination.name, e.coordination.token)
        for e in recorder.events
        if e.HasField("coordination")
    ]


async def test_locks_fence_writes_and_show_in_the_stream(agents: Agents) -> None:
    conv = await new_conv(agents)
    recorder = Recorder(agents.bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
    reading = asyncio.create_task(recorder.read())
    a = await agents.session(conv, "alice")
    b = await agents.session(conv, "bob")
    lock = await agents.co.AcquireLock(
        pb.AcquireLockRequest(conversation_id=conv, session_id=a.session_id, name="task/42")
    )
    assert lock.agent_id == "alice" and lock.token > 0
    fence = pb.Fence(lock="task/42", token=lock.token)
    await put(agents.bb, conv, "results/42", "alice's", fence=fence)

    error = await error_of(
        agents.co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, session_id=b.session_id, name="task/42")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(error)
    assert info.reason == "LOCK_HELD" and info.metadata["holder_agent_id"] == "alice"
    holder = await agents.co.GetLock(pb.GetLockRequest(conversation_id=conv, name="task/42"))
    assert holder.session_id == a.session_id and holder.token == lock.token

    waiting = asyncio.ensure_future(
        agents.co.AcquireLock(
            pb.AcquireLockRequest(
                conversation_id=conv, session_id=b.session_id, name="task/42", wait_ms=5000
            )
        )
    )
    await agents.co.ReleaseLock(
        pb.ReleaseLockRequest(
            conversation_id=conv, session_id=a.session_id, name="task/42", token=lock.token
        )
    )
    second = await asyncio.wait_for(waiting, 5)
    assert second.agent_id == "bob" and second.token > lock.token

    before = await state_of(agents.bb, conv)
    error = await error_of(put(agents.bb, conv, "results/42", "stale", fence=fence))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(error)
    assert info.reason == "FENCED" and info.metadata["current_token"] == str(second.token)
    forged = pb.Fence(lock="task/42", token=second.token + 1000)
    assert (
        details(await error_of(put(agents.bb, conv, "results/42", "x", fence=forged)))[0].reason
        == "FENCED"
    )
    assert await state_of(agents.bb, conv) == before
    await put(
        agents.bb, conv, "results/42", "bob's", fence=pb.Fence(lock="task/42", token=second.token)
    )

    await wait_until(lambda: len(coordination_events(recorder)) >= 5)
    reading.cancel()
    assert coordination_events(recorder) == [
        (Kind.AGENT_JOINED, "alice", "", 0),
        (Kind.AGENT_JOINED, "bob", "", 0),
        (Kind.LOCK_ACQUIRED, "alice", "task/42", lock.token),
        (Kind.LOCK_RELEASED, "alice", "task/42", lock.token),
        (Kind.LOCK_ACQUIRED, "bob", "task/42", second.token),
    ]


async def test_wait_runs_out_with_deadline_exceeded(agents: Agents) -> None:
    conv = await new_conv(agents)
    a = await agents.session(conv, "a")
    b = await agents.session(conv, "b")
    await agents.co.AcquireLock(
        pb.AcquireLockRequest(conversation_id=conv, session_id=a.session_id, name="l")
    )
    error = await error_of(
        agents.co.AcquireLock(
            pb.AcquireLockRequest(
                conversation_id=conv, session_id=b.session_id, name="l", wait_ms=200
            )
        )
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details(error)[0].reason == "WAIT_EXPIRED"


async def test_closing_a_session_ends_everything_it_held(agents: Agents) -> None:
    conv = await new_conv(agents)
    a = await agents.session(conv, "alice")
    await agents.bb.Put(
        pb.PutRequest(
            conversation_id=conv,
            key="presence/alice",
            value=pb.Value(data=b"here"),
            session_id=a.session_id,
        )
    )
    await put(agents.bb, conv, "notes/kept", "not bound")
    lead = await agents.co.Campaign(
        pb.CampaignRequest(
            conversation_id=conv, session_id=a.session_id, role="planner", value=b"alice"
        )
    )
    listed = await agents.co.ListSessions(pb.ListSessionsRequest(conversation_id=conv))
    assert [s.agent_id for s in listed.sessions] == ["alice"]
    recorder = Recorder(agents.bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
    reading = asyncio.create_task(recorder.read())

    await agents.co.CloseSession(
        pb.CloseSessionRequest(conversation_id=conv, session_id=a.session_id)
    )
    error = await error_of(agents.bb.Get(pb.GetRequest(conversation_id=conv, key="presence/alice")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await agents.bb.Get(pb.GetRequest(conversation_id=conv, key="notes/kept"))
    for call in (
        agents.co.KeepAlive(pb.KeepAliveRequest(conversation_id=conv, session_id=a.session_id)),
        agents.bb.Put(
            pb.PutRequest(conversation_id=conv, key="presence/ghost", session_id=a.session_id)
        ),
    ):
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert details(error)[0].reason == "SESSION_NOT_FOUND"
    error = await error_of(
        agents.co.GetLeader(pb.GetLeaderRequest(conversation_id=conv, role="planner"))
    )
    assert details(error)[0].reason == "NO_HOLDER"
    await wait_until(lambda: any(e.coordination.kind == Kind.AGENT_LEFT for e in recorder.events))
    reading.cancel()
    kinds = [e.coordination.kind for e in recorder.events if e.HasField("coordination")]
    assert kinds == [Kind.AGENT_JOINED, Kind.LEADER_ELECTED, Kind.LEADER_RESIGNED, Kind.AGENT_LEFT]
    left = recorder.events[-1]
    assert [(c.type, c.entry.key) for c in left.changes] == [(pb.Change.DELETE, "presence/alice")]
    assert [
        e.coordination.token for e in recorder.events if e.coordination.kind == Kind.LEADER_RESIGNED
    ] == [lead.token]


async def test_an_expired_session_is_recorded_once(agents: Agents) -> None:
    conv = await new_conv(agents)
    doomed = await agents.session(conv, "doomed", ttl_ms=1000)
    heir = await agents.session(conv, "heir")
    lock = await agents.co.AcquireLock(
        pb.AcquireLockRequest(conversation_id=conv, session_id=doomed.session_id, name="job")
    )
    await agents.bb.Put(
        pb.PutRequest(
            conversation_id=conv,
            key="claims/job",
            value=pb.Value(data=b"doomed"),
            session_id=doomed.session_id,
        )
    )
    started = asyncio.get_running_loop().time()
    taken = await agents.co.AcquireLock(
        pb.AcquireLockRequest(
            conversation_id=conv, session_id=heir.session_id, name="job", wait_ms=5000
        )
    )
    assert asyncio.get_running_loop().time() - started < 2.0 + 0.5  # TTL + 1 s, and slack
    assert taken.token > lock.token
    recorder = Recorder(agents.bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
    reading = asyncio.create_task(recorder.read())
    await wait_until(
        lambda: sum(e.coordination.kind == Kind.AGENT_EXPIRED for e in recorder.events) == 1
    )
    await asyncio.sleep(0.5)  # room for a duplicate to show up, if one were coming
    reading.cancel()
    kinds = [e.coordination.kind for e in recorder.events if e.HasField("coordination")]
    for kind in (Kind.AGENT_EXPIRED, Kind.LOCK_EXPIRED):
        assert kinds.count(kind) == 1
    assert kinds.count(Kind.LOCK_ACQUIRED) == 2
    error = await error_of(agents.bb.Get(pb.GetRequest(conversation_id=conv, key="claims/job")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await error_of(
        put(agents.bb, conv, "late", "x", fence=pb.Fence(lock="job", token=lock.token))
    )
    assert details(error)[0].reason == "FENCED"


async def test_elections_and_observe(agents: Agents) -> None:
    conv = await new_conv(agents)
    a = await agents.session(conv, "alice", ttl_ms=1000)
    b = await agents.session(conv, "bob")
    updates: list[str | None] = []
    observe = agents.co.Observe(pb.ObserveRequest(conversation_id=conv, role="planner"))

    async def follow() -> None:
        async for update in observe:
            updates.append(update.leader.agent_id if update.has_leader else None)

    following = asyncio.create_task(follow())
    await wait_until(lambda: updates == [None])
    lead = await agents.co.Campaign(
        pb.CampaignRequest(
            conversation_id=conv, session_id=a.session_id, role="planner", value=b"v1"
        )
    )
    await wait_until(lambda: updates[-1] == "alice")
    proclaimed = await agents.co.Proclaim(
        pb.ProclaimRequest(
            conversation_id=conv,
            session_id=a.session_id,
            role="planner",
            token=lead.token,
            value=b"v2",
        )
    )
    assert proclaimed.value == b"v2"
    leader = await agents.co.GetLeader(pb.GetLeaderRequest(conversation_id=conv, role="planner"))
    assert leader.value == b"v2" and leader.token == lead.token
    error = await error_of(
        agents.co.Resign(
            pb.ResignRequest(
                conversation_id=conv, session_id=b.session_id, role="planner", token=lead.token
            )
        )
    )
    assert details(error)[0].reason == "NOT_HOLDER"
    # alice stops renewing: her leadership ends with her session.
    await wait_until(lambda: updates[-1] is None, timeout=5)
    await agents.co.Campaign(
        pb.CampaignRequest(
            conversation_id=conv, session_id=b.session_id, role="planner", value=b"b"
        )
    )
    await wait_until(lambda: updates[-1] == "bob")
    following.cancel()
    assert updates[0] is None and updates[1] == "alice" and updates[-2:] == [None, "bob"]


async def test_coordination_on_an_unknown_conversation(agents: Agents) -> None:
    error = await error_of(agents.session("nope-" + uuid.uuid4().hex[:6], "a"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert details(error)[0].reason == "CONVERSATION_NOT_FOUND"
