"""The SDK's sessions, locks and elections against a real server (embedded, port 0)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_client import sync
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings

FAST = bb.RetryPolicy(attempts=8, initial_backoff=0.01, max_backoff=0.2)
Kind = bb.CoordinationKind
T = TypeVar("T")


@pytest.fixture
async def bb_server() -> AsyncIterator[RunningServer]:
    async with serve(Settings(listen="127.0.0.1:0", uvloop=False)) as running:
        yield running


@pytest.fixture
async def client(bb_server: RunningServer) -> AsyncIterator[bb.Client]:
    async with bb.connect(bb_server.address, agent_id="tester", retry=FAST) as c:
        yield c


@pytest.fixture
async def other(bb_server: RunningServer) -> AsyncIterator[bb.Client]:
    """A second agent."""
    async with bb.connect(bb_server.address, agent_id="other", retry=FAST) as c:
        yield c


@pytest.fixture
async def conv(client: bb.Client) -> str:
    conversation = await client.create_conversation(f"t-{uuid.uuid4().hex[:12]}")
    return conversation.id


async def within(awaitable: Awaitable[T], seconds: float = 10) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


async def coordination_until(
    stream: bb.Subscription, enough: Callable[[set[bb.CoordinationKind]], bool]
) -> list[bb.CoordinationEvent]:
    """The stream's coordination events, until the kinds seen are `enough`."""
    seen: list[bb.CoordinationEvent] = []
    async with asyncio.timeout(10):
        async for item in stream:
            if not isinstance(item, bb.Events):
                continue
            for event in item.events:
                if event.coordination is not None:
                    seen.append(event.coordination)
                    if enough({c.kind for c in seen}):
                        return seen
    raise AssertionError("the stream ended")


# --- sessions and presence ---------------------------------------------------------------


async def test_a_session_is_present_while_open_and_gone_once_closed(
    client: bb.Client, conv: str
) -> None:
    async with client.session(conv, ttl=5.0) as s:
        assert s.session_id and s.agent_id == "tester" and s.ttl == 5.0
        present = await client.sessions(conv)
        assert present == (bb.SessionInfo(conv, s.session_id, "tester", 5000),)
    assert await client.sessions(conv) == ()
    assert not s.lost.is_set()


async def test_keep_alives_hold_a_session_past_its_ttl(
    client: bb.Client, other: bb.Client, conv: str
) -> None:
    async with (
        client.subscribe(conv, start_revision=1) as stream,
        client.session(conv, ttl=0.5) as kept,
        other.session(conv, ttl=0.5) as left,
    ):
        left.abandon()  # no keep-alives: the server expires it after its TTL
        expired = await coordination_until(stream, lambda kinds: Kind.AGENT_EXPIRED in kinds)
        # `kept` was opened first, so it outlived its TTL only by being renewed.
        assert expired[-1].session_id == left.session_id
        assert [p.session_id for p in await client.sessions(conv)] == [kept.session_id]
        await within(left.lost.wait())
        assert "TTL" in left.why and not kept.lost.is_set()


async def test_a_session_is_lost_when_the_server_no_longer_knows_it(
    client: bb.Client, bb_server: RunningServer, conv: str
) -> None:
    async with client.session(conv, ttl=0.6) as s:
        await close_behind_its_back(bb_server.address, conv, s.session_id)
        await within(s.lost.wait())
        assert "the server ended it" in s.why


async def close_behind_its_back(address: str, conv: str, session_id: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinationStub(channel)
        await stub.CloseSession(pb.CloseSessionRequest(conversation_id=conv, session_id=session_id))


# --- locks --------------------------------------------------------------------------------


async def test_trying_a_held_lock_once_raises_lock_held(
    client: bb.Client, other: bb.Client, conv: str
) -> None:
    async with client.session(conv) as mine, other.session(conv) as theirs:
        async with mine.lock("task/42") as lock:
            assert lock.name == "task/42" and lock.token > 0 and lock.held
            for wait in (None, 0.0):
                with pytest.raises(bb.LockHeld) as held:
                    async with theirs.lock("task/42", wait=wait):
                        pytest.fail("got a held lock")
                assert held.value.holder_agent_id == "tester"
                assert held.value.token == lock.token
            holder = await client.lock_holder(conv, "task/42")
            assert holder == bb.LockHolder(conv, "task/42", mine.session_id, "tester", lock.token)
        assert lock.released and not lock.lost.is_set()
        with pytest.raises(bb.NoHolder):
            await client.lock_holder(conv, "task/42")


async def test_a_waiter_gets_the_lock_when_it_is_released(
    client: bb.Client, other: bb.Client, conv: str
) -> None:
    async with client.session(conv) as mine, other.session(conv) as theirs:
        first = await mine.acquire("job")
        with pytest.raises(bb.WaitExpired):
            await theirs.acquire("job", wait=0.2)
        waiter = asyncio.create_task(theirs.acquire("job", wait=10))
        await mine.release(first)
        second = await within(waiter)
        assert second.token > first.token
        assert (await client.lock_holder(conv, "job")).agent_id == "other"
        await second.release()
        await second.release()  # releasing twice is harmless


async def test_a_lock_is_lost_when_its_session_expires(
    client: bb.Client, other: bb.Client, conv: str
) -> None:
    async with client.subscribe(conv, start_revision=1) as stream:
        async with client.session(conv, ttl=0.5) as s:
            await client.put(conv, "agents/tester", json="here", session=s)
            with pytest.raises(bb.LockLost) as lost:
                async with s.lock("task/1") as lock:
                    s.abandon()  # the keep-alives stop, as if this process hung
                    await within(asyncio.Event().wait())  # work that only a loss ends
                    pytest.fail("the body went on after its lock was lost")
        assert lock.lost.is_set() and s.lost.is_set() and not lock.held
        assert (lost.value.name, lost.value.token) == ("task/1", lock.token)
        assert "TTL" in lost.value.why and isinstance(lost.value.__cause__, asyncio.CancelledError)

        expired = {Kind.AGENT_EXPIRED, Kind.LOCK_EXPIRED}
        kinds = [c.kind for c in await coordination_until(stream, expired.issubset)]
        assert kinds[:2] == [Kind.AGENT_JOINED, Kind.LOCK_ACQUIRED]
        assert sorted(kinds[2:]) == [Kind.AGENT_EXPIRED, Kind.LOCK_EXPIRED]
    with pytest.raises(bb.KeyNotFound):
        await client.get(conv, "agents/tester")  # bound to the session: gone with it
    async with other.session(conv) as theirs, theirs.lock("task/1", wait=10) as taken:
        assert taken.token > lock.token


async def test_without_cancel_on_loss_a_lost_lock_only_sets_its_event(
    client: bb.Client, conv: str
) -> None:
    async with client.session(conv, ttl=0.5) as s, s.lock("task/2", cancel_on_loss=False) as lock:
        s.abandon()
        await within(lock.lost.wait())
        assert not lock.held and "session ended" in lock.why
    assert s.lost.is_set()


async def test_a_lock_released_from_under_its_body_is_lost(
    client: bb.Client, bb_server: RunningServer, conv: str
) -> None:
    async with client.session(conv, ttl=0.6) as s:
        with pytest.raises(bb.LockLost) as lost:
            async with s.lock("task/3") as lock:
                await release_behind_its_back(bb_server.address, conv, s.session_id, lock)
                await within(asyncio.Event().wait())
        assert lost.value.why == "nobody holds it now" and not s.lost.is_set()


async def release_behind_its_back(address: str, conv: str, session_id: str, lock: bb.Lock) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        request = pb.ReleaseLockRequest(
            conversation_id=conv, session_id=session_id, name=lock.name, token=lock.token
        )
        await pb_grpc.CoordinationStub(channel).ReleaseLock(request)


async def test_an_outer_cancellation_is_not_mistaken_for_a_lost_lock(
    client: bb.Client, conv: str
) -> None:
    async with client.session(conv) as s:
        entered = asyncio.Event()

        async def body() -> None:
            async with s.lock("task/4"):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await within(entered.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(bb.NoHolder):
            await client.lock_holder(conv, "task/4")  # released on the way out


# --- fencing and session-bound entries ------------------------------------------------------


async def test_a_write_fenced_with_a_held_lock_or_leadership_is_accepted(
    client: bb.Client, conv: str
) -> None:
    async with client.session(conv) as s:
        async with s.lock("task/7") as lock:
            await client.put(conv, "results/7", json=7, fence=lock)
            entry = await client.get(conv, "results/7")
            assert entry.provenance.fence == bb.Fence.lock("task/7", lock.token)
            await client.append(conv, "log", "done 7", fence=lock)
        async with await s.campaign("planner") as leadership:
            await client.put(conv, "plan", json=[7], fence=leadership)
            entry = await client.get(conv, "plan")
            assert entry.provenance.fence == bb.Fence.election("planner", leadership.token)


async def test_a_released_locks_token_is_fenced(client: bb.Client, conv: str) -> None:
    async with client.session(conv) as s:
        async with s.lock("task/8") as lock:
            await client.put(conv, "results/8", json=1, fence=lock)
        with pytest.raises(bb.Fenced) as fenced:
            await client.put(conv, "results/8", json=2, fence=lock)
        assert fenced.value.token == lock.token
    assert (await client.get(conv, "results/8")).json() == 1


async def test_an_entry_bound_to_a_session_is_deleted_when_it_closes(
    client: bb.Client, conv: str
) -> None:
    async with client.mirror(conv, "agents/") as agents:
        async with client.session(conv) as s:
            await client.put(conv, "agents/tester", json="here", session=s)
            await client.put(conv, "agents/other", json="unbound")
            entry = await client.get(conv, "agents/tester")
            assert entry.session_id == s.session_id
        await agents.wait_until(lambda view: "agents/tester" not in view, timeout=10)
    with pytest.raises(bb.KeyNotFound):
        await client.get(conv, "agents/tester")
    assert (await client.get(conv, "agents/other")).json() == "unbound"


# --- elections ------------------------------------------------------------------------------


async def test_campaign_proclaim_resign_and_leader(
    client: bb.Client, other: bb.Client, conv: str
) -> None:
    async with client.session(conv) as mine, other.session(conv) as theirs:
        with pytest.raises(bb.NoHolder):
            await client.leader(conv, "planner")
        leadership = await mine.campaign("planner", b"v1")
        assert (leadership.role, leadership.value) == ("planner", b"v1")
        leader = await client.leader(conv, "planner")
        assert leader == bb.Leader(
            conv, "planner", mine.session_id, "tester", leadership.token, b"v1"
        )
        with pytest.raises(bb.LockHeld):
            await theirs.campaign("planner", b"me")

        await leadership.proclaim(b'{"step": 2}')
        assert (await other.leader(conv, "planner")).json() == {"step": 2}

        waiting = asyncio.create_task(theirs.campaign("planner", "next", wait=10))
        await leadership.resign()
        successor = await within(waiting)
        assert successor.token > leadership.token and successor.value == b"next"
        with pytest.raises(bb.NotHolder):
            await leadership.proclaim(b"late")
        async with successor:
            assert (await client.leader(conv, "planner")).agent_id == "other"
        with pytest.raises(bb.NoHolder):
            await client.leader(conv, "planner")


async def test_a_leadership_is_lost_with_its_session(client: bb.Client, conv: str) -> None:
    async with client.session(conv, ttl=0.5) as s:
        with pytest.raises(bb.LeadershipLost) as lost:
            async with await s.campaign("planner") as leadership:
                s.abandon()
                await within(asyncio.Event().wait())
        assert leadership.lost.is_set() and lost.value.name == "planner"


async def test_observe_sees_elected_then_none_then_elected(client: bb.Client, conv: str) -> None:
    async with client.observe(conv, "planner") as leaders, client.session(conv) as s:
        assert await within(anext(leaders)) is None
        async with await s.campaign("planner", b"a") as first:
            seen = await within(anext(leaders))
            assert seen is not None and (seen.token, seen.value) == (first.token, b"a")
            await first.proclaim(b"a2")
            seen = await within(anext(leaders))
            assert seen is not None and (seen.token, seen.value) == (first.token, b"a2")
        assert await within(anext(leaders)) is None
        async with await s.campaign("planner", b"b") as second:
            seen = await within(anext(leaders))
            assert seen is not None and seen.token == second.token > first.token


# --- the change stream ------------------------------------------------------------------------


async def test_coordination_events_appear_in_the_stream(client: bb.Client, conv: str) -> None:
    async with client.subscribe(conv, start_revision=1) as stream:
        async with client.session(conv) as s, s.lock("task/9") as lock:
            pass
        seen = await coordination_until(stream, lambda kinds: Kind.AGENT_LEFT in kinds)
    assert seen == [
        bb.CoordinationEvent(Kind.AGENT_JOINED, "tester", s.session_id),
        bb.CoordinationEvent(Kind.LOCK_ACQUIRED, "tester", s.session_id, "task/9", lock.token),
        bb.CoordinationEvent(Kind.LOCK_RELEASED, "tester", s.session_id, "task/9", lock.token),
        bb.CoordinationEvent(Kind.AGENT_LEFT, "tester", s.session_id),
    ]


# --- the sync wrapper ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Polls `condition` from plain code until it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.01)


def a_coordinating_script(address: str, conversation_id: str) -> dict[str, Any]:
    """Blocking code, no event loop in this thread: a session, a lock, a fenced write."""
    with sync.connect(address, agent_id="script") as client:
        client.create_conversation(conversation_id)
        with client.session(conversation_id, ttl=5.0) as s:
            present = [p.agent_id for p in client.sessions(conversation_id)]
            client.put(conversation_id, "agents/script", json="here", session=s)
            with s.lock("task/1", wait=5.0) as lock:
                written = client.put(conversation_id, "results/1", json="done", fence=lock)
                token = lock.token
                with client.session(conversation_id) as rival:
                    try:
                        with rival.lock("task/1"):
                            held_by = ""
                    except bb.LockHeld as error:
                        held_by = error.holder_agent_id
            leadership = s.campaign("planner", b"me")
            with leadership:
                leader = client.leader(conversation_id, "planner")
        with client.session(conversation_id, ttl=0.5) as doomed:
            try:
                with doomed.lock("task/2") as lost_lock:
                    doomed.abandon()
                    wait_for(lost_lock.lost.is_set)  # a sync body cannot be cancelled...
                lost_why = ""
            except bb.LockLost as error:
                lost_why = error.why  # ...so leaving it raises LockLost
        entry = client.get(conversation_id, "results/1")
        try:
            client.get(conversation_id, "agents/script")
            bound_entry_left = True
        except bb.KeyNotFound:
            bound_entry_left = False
    return {
        "present": present,
        "revision": written.revision,
        "fence": entry.provenance.fence,
        "token": token,
        "held_by": held_by,
        "leader": (leader.agent_id, leader.value),
        "bound_entry_left": bound_entry_left,
        "lost_why": lost_why,
    }


async def test_the_sync_wrapper_does_sessions_and_locks(bb_server: RunningServer) -> None:
    conversation_id = f"s-{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(a_coordinating_script, bb_server.address, conversation_id)
    assert result["present"] == ["script"]
    assert result["fence"] == bb.Fence.lock("task/1", result["token"])
    assert result["held_by"] == "script"
    assert result["leader"] == ("script", b"me")
    assert result["bound_entry_left"] is False
    assert "TTL" in result["lost_why"]
