"""One contract for every Coordinator: the memory one and the etcd one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blackboard_server.domain.coordination import Census
from blackboard_server.domain.errors import (
    LockHeld,
    NotHolder,
    QuotaExceeded,
    SessionNotFound,
    WaitExpired,
)
from blackboard_server.domain.model import (
    ConversationRef,
    CoordinationKind,
    DeleteSessionEntries,
    FenceKind,
    WriteBatch,
)
from blackboard_server.ports import Coordinator
from tests.servers import EtcdCluster

LOCK = FenceKind.LOCK
ELECTION = FenceKind.ELECTION
TTL = 1000  # etcd leases are whole seconds


@pytest.fixture(params=["memory", "etcd"])
async def coordinator(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        from blackboard_server.adapters.memory_coordinator import MemoryCoordinator

        coord: Any = MemoryCoordinator()
    else:
        from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator

        cluster: EtcdCluster = request.getfixturevalue("etcd")
        coord = await EtcdCoordinator.connect(
            cluster.endpoints, timeout_s=3.0, prefix=f"/bb-{uuid.uuid4().hex[:8]}"
        )
    async with coord.running():
        yield coord
    await coord.aclose()


class Observed:
    """Collects what the coordinator yields for the recorder."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.items: list[tuple[ConversationRef, WriteBatch]] = []
        self._task = asyncio.create_task(self._collect(coordinator))

    async def _collect(self, coordinator: Coordinator) -> None:
        async for item in coordinator.observations():
            self.items.append(item)

    def kinds(self, ref: ConversationRef) -> list[tuple[CoordinationKind, str, int]]:
        return [
            (b.coordination.kind, b.coordination.name, b.coordination.token)
            for r, b in self.items
            if r == ref and b.coordination is not None
        ]

    async def wait_for(self, ref: ConversationRef, count: int, timeout: float = 8.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.kinds(ref)) < count:
                await asyncio.sleep(0.02)

    def close(self) -> None:
        self._task.cancel()


def new_ref() -> ConversationRef:
    return ConversationRef("t1", f"c-{uuid.uuid4().hex[:10]}")


async def wait_until(predicate: Any, timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


# --- sessions --------------------------------------------------------------------


async def test_session_lifecycle(coordinator: Coordinator) -> None:
    ref, other = new_ref(), new_ref()
    a = await coordinator.open_session(ref, "agent-a", TTL)
    b = await coordinator.open_session(ref, "agent-b", TTL)
    elsewhere = await coordinator.open_session(other, "agent-c", TTL)
    assert a.session_id != b.session_id and a.agent_id == "agent-a"
    listed = await coordinator.sessions(ref)
    assert {s.session_id for s in listed} == {a.session_id, b.session_id}
    assert [s.session_id for s in await coordinator.sessions(other)] == [elsewhere.session_id]
    assert (await coordinator.session(ref, a.session_id)).agent_id == "agent-a"
    assert 0 < await coordinator.keep_alive(ref, a.session_id) <= TTL
    closed = await coordinator.close_session(ref, a.session_id)
    assert closed.session_id == a.session_id
    for call in (
        coordinator.keep_alive(ref, a.session_id),
        coordinator.session(ref, a.session_id),
        coordinator.close_session(ref, a.session_id),
        coordinator.session(other, b.session_id),
    ):
        with pytest.raises(SessionNotFound):
            await call
    assert [s.session_id for s in await coordinator.sessions(ref)] == [b.session_id]


async def test_session_expires_unless_kept_alive(coordinator: Coordinator) -> None:
    ref = new_ref()
    observed = Observed(coordinator)
    try:
        kept = await coordinator.open_session(ref, "kept", TTL)
        lapsed = await coordinator.open_session(ref, "lapsed", TTL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 2.6:
            await coordinator.keep_alive(ref, kept.session_id)
            await asyncio.sleep(0.2)
        assert [s.session_id for s in await coordinator.sessions(ref)] == [kept.session_id]
        with pytest.raises(SessionNotFound):
            await coordinator.keep_alive(ref, lapsed.session_id)
        await observed.wait_for(ref, 1)
        batch = next(b for r, b in observed.items if r == ref)
        assert batch.coordination is not None
        assert batch.coordination.kind is CoordinationKind.AGENT_EXPIRED
        assert batch.coordination.session_id == lapsed.session_id
        assert batch.coordination.agent_id == "lapsed"
        assert batch.success == (DeleteSessionEntries(lapsed.session_id),)
        assert batch.request_id == f"coord:session:{lapsed.session_id}:ended"
    finally:
        observed.close()


# --- locks -----------------------------------------------------------------------


async def test_try_once_and_holder(coordinator: Coordinator) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", TTL * 5)
    b = await coordinator.open_session(ref, "b", TTL * 5)
    assert await coordinator.holder(ref, LOCK, "task/1") is None
    held = await coordinator.acquire(ref, LOCK, "task/1", a.session_id, b"", 0)
    assert held.session_id == a.session_id and held.agent_id == "a" and held.token > 0
    again = await coordinator.acquire(ref, LOCK, "task/1", a.session_id, b"", 0)
    assert again.token == held.token  # the same session's claim is reused
    with pytest.raises(LockHeld) as refused:
        await coordinator.acquire(ref, LOCK, "task/1", b.session_id, b"", 0)
    assert refused.value.metadata["holder_agent_id"] == "a"
    assert refused.value.metadata["token"] == str(held.token)
    assert await coordinator.holder(ref, LOCK, "task/1") == held
    # Other names, kinds and conversations are separate queues.
    other = await coordinator.acquire(ref, LOCK, "task/10", b.session_id, b"", 0)
    assert other.token > held.token
    assert await coordinator.holder(ref, ELECTION, "task/1") is None
    assert await coordinator.held(ref, a.session_id) == [held]


async def test_release_hands_over_to_the_waiter(coordinator: Coordinator) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", TTL * 5)
    b = await coordinator.open_session(ref, "b", TTL * 5)
    first = await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    waiting = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 5000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    for session, token in ((b.session_id, first.token), (a.session_id, first.token + 1)):
        with pytest.raises(NotHolder):
            await coordinator.release(ref, LOCK, "l", session, token)
    released = await coordinator.release(ref, LOCK, "l", a.session_id, first.token)
    assert released == first
    second = await asyncio.wait_for(waiting, 3)
    assert second.session_id == b.session_id and second.token > first.token
    assert await coordinator.holder(ref, LOCK, "l") == second


async def test_wait_runs_out_and_withdraws(coordinator: Coordinator) -> None:
    ref = new_ref()
    a, b, c = [await coordinator.open_session(ref, n, TTL * 5) for n in "abc"]
    first = await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    with pytest.raises(WaitExpired):
        await coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 300)
    cancelled = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 5000))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await coordinator.release(ref, LOCK, "l", a.session_id, first.token)
    # Neither withdrawn claim stands in c's way.
    third = await coordinator.acquire(ref, LOCK, "l", c.session_id, b"", 0)
    assert third.session_id == c.session_id


async def test_tokens_strictly_increase_across_holders(coordinator: Coordinator) -> None:
    ref = new_ref()
    sessions = [await coordinator.open_session(ref, f"s{i}", TTL * 5) for i in range(6)]
    tokens = []
    for session in sessions:
        held = await coordinator.acquire(ref, LOCK, "l", session.session_id, b"", 2000)
        tokens.append(held.token)
        await coordinator.release(ref, LOCK, "l", session.session_id, held.token)
    assert tokens == sorted(set(tokens))


async def test_expired_holder_frees_the_lock_and_is_observed(coordinator: Coordinator) -> None:
    ref = new_ref()
    observed = Observed(coordinator)
    try:
        doomed = await coordinator.open_session(ref, "doomed", TTL)
        heir = await coordinator.open_session(ref, "heir", TTL * 10)
        first = await coordinator.acquire(ref, LOCK, "l", doomed.session_id, b"", 0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await coordinator.acquire(ref, LOCK, "l", heir.session_id, b"", 8000)
        assert loop.time() - started < TTL / 1000 + 1.5  # freed within TTL + 1 s (+ slack)
        assert second.token > first.token
        await observed.wait_for(ref, 3)
        kinds = observed.kinds(ref)
        assert (CoordinationKind.AGENT_EXPIRED, "", 0) in kinds
        assert (CoordinationKind.LOCK_EXPIRED, "l", first.token) in kinds
        assert (CoordinationKind.LOCK_ACQUIRED, "l", second.token) in kinds
        acquired = next(
            b
            for r, b in observed.items
            if r == ref and b.coordination and b.coordination.kind is CoordinationKind.LOCK_ACQUIRED
        )
        assert acquired.marks == (("lock:l", second.token),)
        assert acquired.request_id == f"coord:lock:l:{second.token}:acquired"
    finally:
        observed.close()


async def test_closed_session_drops_its_claims(coordinator: Coordinator) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", TTL * 5)
    b = await coordinator.open_session(ref, "b", TTL * 5)
    await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    waiting = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 5000))
    await asyncio.sleep(0.1)
    await coordinator.close_session(ref, a.session_id)
    assert (await asyncio.wait_for(waiting, 3)).session_id == b.session_id
    with pytest.raises(SessionNotFound):
        await coordinator.acquire(ref, LOCK, "other", a.session_id, b"", 0)


async def test_census_counts_sessions_held_locks_and_leaders(coordinator: Coordinator) -> None:
    assert await coordinator.census() == Census()
    ref, other = new_ref(), ConversationRef("t2", "elsewhere")
    a = await coordinator.open_session(ref, "a", TTL * 5)
    b = await coordinator.open_session(ref, "b", TTL * 5)
    c = await coordinator.open_session(other, "c", TTL * 5)
    await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
    waiting = asyncio.create_task(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 5000))
    await coordinator.acquire(other, LOCK, "l", c.session_id, b"", 0)
    await coordinator.acquire(ref, ELECTION, "leader", b.session_id, b"v", 0)
    await asyncio.sleep(0.1)  # the waiter's claim is queued: it holds nothing yet
    assert await coordinator.census() == Census(sessions=3, locks_held=2, leaders=1)
    await coordinator.close_session(ref, b.session_id)  # its claims and its role go with it
    with pytest.raises(SessionNotFound):
        await waiting
    await coordinator.close_session(other, c.session_id)
    assert await coordinator.census() == Census(sessions=1, locks_held=1, leaders=0)


# --- elections -------------------------------------------------------------------


async def test_campaign_proclaim_resign_and_observe(coordinator: Coordinator) -> None:
    ref = new_ref()
    a = await coordinator.open_session(ref, "a", TTL * 5)
    b = await coordinator.open_session(ref, "b", TTL * 5)
    seen: list[tuple[str, bytes] | None] = []
    async with coordinator.observe(ref, ELECTION, "planner") as updates:

        async def watch() -> None:
            async for holder in updates:
                seen.append((holder.agent_id, holder.value) if holder else None)

        watching = asyncio.create_task(watch())
        try:
            await wait_until(lambda: _true(seen == [None]))
            lead = await coordinator.acquire(ref, ELECTION, "planner", a.session_id, b"v1", 0)
            await wait_until(lambda: _true(seen[-1] == ("a", b"v1")))
            with pytest.raises(LockHeld):
                await coordinator.acquire(ref, ELECTION, "planner", b.session_id, b"x", 0)
            proclaimed = await coordinator.proclaim(ref, "planner", a.session_id, lead.token, b"v2")
            assert proclaimed.value == b"v2" and proclaimed.token == lead.token
            await wait_until(lambda: _true(seen[-1] == ("a", b"v2")))
            with pytest.raises(NotHolder):
                await coordinator.proclaim(ref, "planner", b.session_id, lead.token, b"no")
            await coordinator.release(ref, ELECTION, "planner", a.session_id, lead.token)
            await wait_until(lambda: _true(seen[-1] is None))
            await coordinator.acquire(ref, ELECTION, "planner", b.session_id, b"b1", 0)
            await wait_until(lambda: _true(seen[-1] == ("b", b"b1")))
        finally:
            watching.cancel()
    assert seen[0] is None and ("a", b"v1") in seen and seen.index(("a", b"v2")) < len(seen)


async def test_observe_sees_a_leader_die(coordinator: Coordinator) -> None:
    ref = new_ref()
    doomed = await coordinator.open_session(ref, "doomed", TTL)
    heir = await coordinator.open_session(ref, "heir", TTL * 10)
    await coordinator.acquire(ref, ELECTION, "planner", doomed.session_id, b"d", 0)
    seen: list[str | None] = []
    async with coordinator.observe(ref, ELECTION, "planner") as updates:

        async def watch() -> None:
            async for holder in updates:
                seen.append(holder.agent_id if holder else None)

        watching = asyncio.create_task(watch())
        try:
            await wait_until(lambda: _true(seen == ["doomed"]))
            await wait_until(lambda: _true(None in seen))  # its session expires
            await coordinator.acquire(ref, ELECTION, "planner", heir.session_id, b"h", 0)
            await wait_until(lambda: _true(seen[-1] == "heir"))
        finally:
            watching.cancel()
    assert seen == ["doomed", None, "heir"]


async def _true(value: bool) -> bool:
    return value


async def test_sessions_per_tenant_are_counted_over_its_conversations(
    coordinator: Coordinator,
) -> None:
    ref = ConversationRef(f"t-{uuid.uuid4().hex[:8]}", "c")  # a tenant of its own
    other = ConversationRef(ref.tenant, ref.id + "-2")
    a = await coordinator.open_session(ref, "a", TTL * 5, max_sessions=2)
    await coordinator.open_session(other, "b", TTL * 5, max_sessions=2)
    with pytest.raises(QuotaExceeded) as caught:
        await coordinator.open_session(ref, "c", TTL * 5, max_sessions=2)
    assert caught.value.metadata == {"quota": "sessions", "limit": "2", "value": "3"}
    assert {s.agent_id for s in await coordinator.sessions(ref)} == {"a"}
    assert {s.agent_id for s in await coordinator.sessions(other)} == {"b"}
    # Another tenant, and no limit, are not refused; a closed session makes room.
    stranger = ConversationRef(ref.tenant + "-x", ref.id)
    await coordinator.open_session(stranger, "d", TTL * 5, max_sessions=2)
    await coordinator.open_session(ref, "e", TTL * 5)
    await coordinator.close_session(ref, a.session_id)
    await coordinator.open_session(ref, "f", TTL * 5, max_sessions=3)
