"""The SDK's coordination logic without a server: lease arithmetic, the guard that
cancels a body when its lock is lost, leader observation across reconnects, and
the conversions and surface of the Coordination service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from typing import Any

import pytest

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._holds import BodyGuard
from blackboard_client._session import Lease, wait_ms

FAST = bb.RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002, jitter=0.0)


# --- the lease: pure -------------------------------------------------------------------


def test_a_lease_is_renewed_every_third_of_its_ttl() -> None:
    lease = Lease(ttl=3.0, expires_at=103.0)
    assert lease.interval == 1.0
    assert not lease.expired(102.9) and lease.expired(103.0)


def test_a_renewal_counts_from_when_it_was_sent() -> None:
    lease = Lease(ttl=3.0, expires_at=103.0)
    lease.renewed(sent_at=101.0, left=3.0)
    assert lease.expires_at == 104.0
    assert not lease.expired(103.5) and lease.expired(104.0)


@pytest.mark.parametrize(
    ("wait", "ms"), [(None, 0), (0, 0), (0.0, 0), (-1.0, 0), (0.0001, 1), (2.5, 2500)]
)
def test_a_wait_of_none_or_zero_means_try_once(wait: float | None, ms: int) -> None:
    assert wait_ms(wait) == ms


# --- the body guard --------------------------------------------------------------------


async def guarded(guard: BodyGuard, started: asyncio.Event) -> bool:
    """A body under the guard: what exit() said about its cancellation."""
    guard.enter()
    try:
        started.set()
        await asyncio.Event().wait()
    except asyncio.CancelledError as cancelled:
        return guard.exit(cancelled)
    return guard.exit(None)


async def test_a_trip_cancels_the_body_and_exit_owns_the_cancellation() -> None:
    guard, started = BodyGuard(), asyncio.Event()
    body = asyncio.create_task(guarded(guard, started))
    await started.wait()
    guard.trip("lost")
    assert await asyncio.wait_for(body, 5) is True
    assert body.cancelling() == 0  # taken back: the task is not left cancelled


async def test_an_outer_cancellation_is_not_the_guards() -> None:
    guard, started = BodyGuard(), asyncio.Event()
    body = asyncio.create_task(guarded(guard, started))
    await started.wait()
    guard.trip("lost")
    body.cancel()  # somebody else wants it gone too
    assert await asyncio.wait_for(body, 5) is False


async def test_a_trip_after_the_body_ended_does_nothing() -> None:
    guard = BodyGuard()

    async def quick() -> bool:
        guard.enter()
        return guard.exit(None)

    assert await quick() is False
    guard.trip("too late")  # the task is done: nothing to cancel
    assert guard.exit(None) is False


async def test_a_body_on_a_finished_task_cannot_be_cancelled() -> None:
    """The sync wrapper enters and exits in different tasks of the loop."""
    guard = BodyGuard()

    async def enter() -> None:
        guard.enter()

    await asyncio.create_task(enter())
    guard.trip("lost while a sync body ran")
    assert guard.exit(None) is False


# --- holds: losing one -----------------------------------------------------------------


class FakeSession:
    """What a hold asks of its session; holds made here never call the server."""

    session_id = "s-1"
    _can_call = False

    def _forget(self, hold: Any) -> None:
        pass


def a_lock(*, cancel_on_loss: bool = True) -> bb.Lock:
    return bb.Lock(FakeSession(), "task/1", 7, cancel_on_loss=cancel_on_loss)  # type: ignore[arg-type]


async def run_body(lock: bb.Lock, body: Callable[[], Any]) -> asyncio.Task[None]:
    entered = asyncio.Event()

    async def guarded_body() -> None:
        async with lock:
            entered.set()
            await body()

    task = asyncio.create_task(guarded_body())
    await entered.wait()
    return task


async def test_another_holder_means_the_lock_is_lost_and_the_body_cancelled() -> None:
    lock = a_lock()
    task = await run_body(lock, lambda: asyncio.Event().wait())
    lock._check("s-1", 7, "me")  # still ours
    assert lock.held
    lock._check("s-2", 9, "other")
    with pytest.raises(bb.LockLost) as lost:
        await asyncio.wait_for(task, 5)
    assert (lost.value.name, lost.value.token) == ("task/1", 7)
    assert lost.value.why == "other holds it now (token 9)"
    assert isinstance(lost.value.__cause__, asyncio.CancelledError)
    assert lock.lost.is_set() and lock.released and not lock.held


async def test_a_body_that_swallows_the_cancellation_still_gets_lock_lost() -> None:
    lock = a_lock()

    async def stubborn() -> None:
        with suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    task = await run_body(lock, stubborn)
    lock._lose("gone")
    with pytest.raises(bb.LockLost):
        await asyncio.wait_for(task, 5)


async def test_without_cancel_on_loss_the_body_runs_on() -> None:
    lock = a_lock(cancel_on_loss=False)
    go_on = asyncio.Event()
    task = await run_body(lock, go_on.wait)
    lock._lose("gone")
    assert lock.lost.is_set() and lock.why == "gone"
    go_on.set()
    await asyncio.wait_for(task, 5)  # no LockLost
    assert lock.released


async def test_a_lock_lost_before_its_body_starts_raises_on_entry() -> None:
    lock = a_lock()
    lock._lose("gone")
    with pytest.raises(bb.LockLost):
        async with lock:
            pytest.fail("the body ran without the lock")


def test_holds_fence_writes_with_their_token() -> None:
    lock = a_lock()
    assert lock.fence == bb.Fence.lock("task/1", 7)
    assert _convert.fence_pb(lock) == pb.Fence(lock="task/1", token=7)
    leader = bb.Leader("c", "planner", "s-1", "me", 11, b"v")
    leadership = bb.Leadership(FakeSession(), leader)  # type: ignore[arg-type]
    assert leadership.fence == bb.Fence.election("planner", 11)
    assert _convert.fence_pb(leadership) == pb.Fence(election="planner", token=11)
    assert issubclass(bb.LeadershipLost, bb.LockLost)


# --- observing a leader ----------------------------------------------------------------


def leader(token: int, value: bytes = b"") -> bb.Leader:
    return bb.Leader("c", "planner", f"s-{token}", "agent", token, value)


def scripted(*streams: list[bb.Leader | Exception | None]) -> Callable[[], Any]:
    """An opener whose n-th stream yields the n-th script, raising any exception in it."""
    scripts = iter(streams)

    async def open_stream() -> AsyncGenerator[bb.Leader | None, None]:
        for item in next(scripts):
            if isinstance(item, Exception):
                raise item
            yield item

    return open_stream


async def take(observation: bb.Observation, count: int) -> list[bb.Leader | None]:
    async with asyncio.timeout(5):
        return [await anext(observation) for _ in range(count)]


async def test_an_observation_resumes_and_repeats_nothing() -> None:
    opener = scripted(
        [None, leader(1)],
        [leader(1), leader(1, b"new value"), bb.Unavailable("cut")],
        [leader(1, b"new value"), None, leader(2)],
    )
    observation = bb.Observation(opener, retry=FAST)
    seen = await take(observation, 5)
    assert seen == [None, leader(1), leader(1, b"new value"), None, leader(2)]
    await observation.aclose()


async def test_an_observation_raises_what_it_cannot_resume_from() -> None:
    observation = bb.Observation(scripted([None, bb.NotFound("no conversation")]), retry=FAST)
    assert await take(observation, 1) == [None]
    with pytest.raises(bb.NotFound):
        await anext(observation)


async def test_an_observation_gives_up_after_its_attempts() -> None:
    broken: list[bb.Leader | Exception | None] = [bb.Unavailable("down")]
    observation = bb.Observation(scripted(broken, broken, broken), retry=FAST)
    with pytest.raises(bb.Unavailable):
        await anext(observation)


# --- conversions and surface -----------------------------------------------------------


def test_every_coordination_kind_of_the_proto_has_an_sdk_kind() -> None:
    for name, number in pb.CoordinationEvent.Kind.items():
        if number == pb.CoordinationEvent.KIND_UNSPECIFIED:
            continue
        msg = pb.CoordinationEvent(kind=number, agent_id="a", session_id="s", name="n", token=3)
        event = _convert.coordination_event(msg)
        assert event.kind.name == name
        assert event == bb.CoordinationEvent(bb.CoordinationKind[name], "a", "s", "n", 3)
    future = pb.CoordinationEvent.Kind.ValueType(99)  # a kind newer than this SDK
    assert _convert.coordination_event(pb.CoordinationEvent(kind=future)).kind == "unknown"


def test_an_event_carries_its_coordination_record() -> None:
    joined = pb.CoordinationEvent(kind=pb.CoordinationEvent.AGENT_JOINED, agent_id="a")
    event = _convert.event(pb.Event(revision=4, coordination=joined))
    assert event.coordination == bb.CoordinationEvent(bb.CoordinationKind.AGENT_JOINED, "a", "")
    assert _convert.event(pb.Event(revision=5)).coordination is None


#: Where each RPC of the Coordination service is reached from in the SDK.
COORDINATION_CALLS: dict[str, Callable[..., Any]] = {
    "OpenSession": bb.Session.__aenter__,  # client.session(...) as s
    "KeepAlive": bb.Session._keep_alive,  # the session's background renewal
    "CloseSession": bb.Session.__aexit__,
    "ListSessions": bb.Client.sessions,
    "AcquireLock": bb.Session.acquire,  # and s.lock(...)
    "ReleaseLock": bb.Lock.release,  # and s.release(lock), leaving s.lock(...)
    "GetLock": bb.Client.lock_holder,
    "Campaign": bb.Session.campaign,
    "Proclaim": bb.Leadership.proclaim,
    "Resign": bb.Leadership.resign,
    "GetLeader": bb.Client.leader,
    "Observe": bb.Client.observe,
}


def test_every_coordination_rpc_is_reached_from_the_sdk() -> None:
    service = pb.DESCRIPTOR.services_by_name["Coordination"]
    assert {m.name for m in service.methods} == set(COORDINATION_CALLS)
    assert all(callable(call) for call in COORDINATION_CALLS.values())


def test_lock_lost_is_the_sdks_own_error() -> None:
    assert issubclass(bb.LockLost, bb.BlackboardError)
    assert bb.LockLost not in bb.REASONS.values()
    assert bb.LeadershipLost not in bb.REASONS.values()
