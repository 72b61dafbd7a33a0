"""The etcd coordinator while members of a real 3-member cluster are killed (kill -9)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator
from blackboard_server.domain.coordination import Holder
from blackboard_server.domain.errors import BackendUnavailable, NotHolder, WaitExpired
from blackboard_server.domain.model import ConversationRef, FenceKind
from tests.servers import EtcdCluster, EtcdMember

T = TypeVar("T")
LOCK = FenceKind.LOCK
ELECTION = FenceKind.ELECTION
SLACK_S = 0.5  # scheduling beyond a call's own bound


@dataclass(frozen=True)
class Window:
    """From the moment a session's acquire returned to the moment it chose to release."""

    token: int
    session_id: str
    start: float
    end: float


@dataclass
class Calls:
    """Every call's duration next to the bound it promises."""

    overruns: list[tuple[str, float, float]] = field(default_factory=list)
    count: int = 0

    async def timed(self, what: str, bound_s: float, call: Awaitable[T]) -> T:
        began = time.monotonic()
        try:
            return await call
        finally:
            took = time.monotonic() - began
            self.count += 1
            if took > bound_s + SLACK_S:
                self.overruns.append((what, took, bound_s))


def leader_first(cluster: EtcdCluster) -> tuple[EtcdMember, list[str]]:
    """The leader, and the endpoints with it first: the client starts on it."""
    leader = cluster.leader()
    return leader, [leader.endpoint] + [m.endpoint for m in cluster.members if m is not leader]


@pytest.fixture
def ref() -> ConversationRef:
    return ConversationRef("faults", f"c-{uuid.uuid4().hex[:10]}")


async def test_leader_kill_during_lock_churn(
    etcd_cluster: EtcdCluster, ref: ConversationRef
) -> None:
    timeout_s, wait_ms = 2.0, 1000
    leader, endpoints = leader_first(etcd_cluster)
    coordinator = await EtcdCoordinator.connect(endpoints, timeout_s=timeout_s, prefix="/churn")
    calls = Calls()
    windows: list[Window] = []
    cycles: list[float] = []  # when each acquire + release cycle completed
    failures: list[float] = []  # when a call failed BackendUnavailable
    stop = asyncio.Event()

    async def keep_alive(session_id: str) -> None:
        while not stop.is_set():
            with suppress(BackendUnavailable):
                await calls.timed("keep_alive", timeout_s, coordinator.keep_alive(ref, session_id))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)  # the agent's renewal cadence

    async def churn(session_id: str) -> None:
        while not stop.is_set():
            try:
                held = await calls.timed(
                    "acquire",
                    wait_ms / 1000 + timeout_s,
                    coordinator.acquire(ref, LOCK, "churn", session_id, b"", wait_ms),
                )
            except BackendUnavailable:
                failures.append(time.monotonic())
                continue
            except WaitExpired:
                continue
            start = time.monotonic()
            await asyncio.sleep(0.002)  # the work done under the lock
            windows.append(Window(held.token, session_id, start, time.monotonic()))
            while True:  # until etcd says it is released, or no longer ours
                try:
                    await calls.timed(
                        "release",
                        timeout_s,
                        coordinator.release(ref, LOCK, "churn", session_id, held.token),
                    )
                    break
                except NotHolder:
                    break
                except BackendUnavailable:
                    failures.append(time.monotonic())
                    await asyncio.sleep(0.05)  # back off while etcd elects a leader
            cycles.append(time.monotonic())

    try:
        async with coordinator.running():
            sessions = [await coordinator.open_session(ref, f"s{i}", 10_000) for i in range(4)]
            async with asyncio.TaskGroup() as tasks:
                for s in sessions:
                    tasks.create_task(keep_alive(s.session_id))
                    tasks.create_task(churn(s.session_id))
                try:
                    async with asyncio.timeout(60):
                        while len(cycles) < 20:
                            await asyncio.sleep(0.01)
                        await asyncio.to_thread(leader.kill)
                        killed_at = time.monotonic()
                        while sum(1 for t in cycles if t > killed_at) < 40:
                            await asyncio.sleep(0.01)
                finally:
                    stop.set()
    finally:
        await coordinator.aclose()

    assert any(t > killed_at for t in failures)  # calls in flight on the leader failed
    resumed = min(t for t in cycles if t > killed_at)
    assert resumed - killed_at < 5.0
    assert calls.overruns == []
    by_start = sorted(windows, key=lambda w: w.start)
    tokens = [w.token for w in by_start]
    assert tokens == sorted(set(tokens))  # each holder's token is newer than the last
    for before, after in itertools.pairwise(by_start):
        assert before.end <= after.start, (before, after)  # never two holders at once
    assert len({w.session_id for w in windows}) == 4


async def test_observers_and_the_recorder_survive_a_leader_kill(
    etcd_cluster: EtcdCluster, ref: ConversationRef
) -> None:
    leader, endpoints = leader_first(etcd_cluster)
    coordinator = await EtcdCoordinator.connect(endpoints, timeout_s=2.0, prefix="/survive")
    try:
        async with coordinator.running():
            records: list[str] = []

            async def record() -> None:
                async for r, batch in coordinator.observations():
                    if r == ref:
                        records.append(batch.request_id)

            recording = asyncio.create_task(record())
            heir = await coordinator.open_session(ref, "heir", 10_000)
            doomed = await coordinator.open_session(ref, "doomed", 1000)  # never kept alive
            lead = await coordinator.acquire(ref, ELECTION, "r", doomed.session_id, b"d", 0)
            seen: list[str | None] = []
            async with coordinator.observe(ref, ELECTION, "r") as updates:

                async def follow() -> None:
                    async for h in updates:
                        seen.append(h.agent_id if h else None)

                following = asyncio.create_task(follow())
                try:
                    async with asyncio.timeout(15):
                        while seen != ["doomed"]:
                            await asyncio.sleep(0.01)
                        await asyncio.to_thread(leader.kill)
                        while seen != ["doomed", None]:  # the session expires meanwhile
                            await asyncio.sleep(0.01)
                        while True:
                            try:
                                await coordinator.acquire(
                                    ref, ELECTION, "r", heir.session_id, b"h", 5000
                                )
                                break
                            except BackendUnavailable:
                                await asyncio.sleep(0.05)
                        while seen != ["doomed", None, "heir"]:
                            await asyncio.sleep(0.01)
                        expected = [
                            f"coord:session:{doomed.session_id}:ended",
                            f"coord:election:r:{lead.token}:ended",
                        ]
                        while records[:2] != expected:
                            await asyncio.sleep(0.01)
                finally:
                    following.cancel()
                    recording.cancel()
    finally:
        await coordinator.aclose()


async def test_quorum_loss_is_backend_unavailable_in_time(
    etcd_cluster: EtcdCluster, ref: ConversationRef
) -> None:
    timeout_s = 1.0
    coordinator = await EtcdCoordinator.connect(
        etcd_cluster.endpoints, timeout_s=timeout_s, prefix="/quorum"
    )
    try:
        async with coordinator.running():
            a = await coordinator.open_session(ref, "a", 30_000)
            b = await coordinator.open_session(ref, "b", 30_000)
            lock = await coordinator.acquire(ref, LOCK, "l", a.session_id, b"", 0)
            lead = await coordinator.acquire(ref, ELECTION, "r", a.session_id, b"", 0)
            waiter = asyncio.create_task(
                ended_at(coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 60_000))
            )
            async with coordinator.observe(ref, ELECTION, "r") as updates:
                assert await anext(updates) == lead
                observer = asyncio.create_task(ended_at(anext(updates)))
                lost = etcd_cluster.members[1:]
                for member in lost:
                    await asyncio.to_thread(member.kill)
                lost_at = time.monotonic()

                single: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                    ("open_session", lambda: coordinator.open_session(ref, "c", 5000)),
                    ("keep_alive", lambda: coordinator.keep_alive(ref, a.session_id)),
                    ("session", lambda: coordinator.session(ref, a.session_id)),
                    ("sessions", lambda: coordinator.sessions(ref)),
                    ("held", lambda: coordinator.held(ref, a.session_id)),
                    ("holder", lambda: coordinator.holder(ref, LOCK, "l")),
                    ("try once", lambda: coordinator.acquire(ref, LOCK, "m", b.session_id, b"", 0)),
                    ("release", lambda: coordinator.release(ref, LOCK, "l", a.session_id, 1)),
                    ("proclaim", lambda: coordinator.proclaim(ref, "r", a.session_id, 1, b"")),
                    ("close", lambda: coordinator.close_session(ref, b.session_id)),
                ]
                for what, call in single:
                    began = time.monotonic()
                    with pytest.raises(BackendUnavailable):
                        await call()
                    assert time.monotonic() - began < timeout_s + SLACK_S, what
                began = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await coordinator.acquire(ref, LOCK, "m", b.session_id, b"", 500)
                assert time.monotonic() - began < 0.5 + timeout_s + SLACK_S

                # Calls already waiting are not left hanging: the waiter and the
                # observer end once no member has served their watch for timeout_s
                # (after etcd notices it has no leader, which it checks about every 1.25 s).
                for pending in (waiter, observer):
                    error, when = await asyncio.wait_for(pending, 10)
                    assert isinstance(error, BackendUnavailable)
                    assert when - lost_at < 2 * timeout_s + 1.25 + SLACK_S

            # Quorum returns with one member: the same coordinator serves again,
            # and the holder kept its lock (its lease outlived the outage).
            await asyncio.to_thread(etcd_cluster.restart, lost[0])
            holder = await _first_answer(lambda: coordinator.holder(ref, LOCK, "l"))
            assert holder == lock
            await coordinator.release(ref, LOCK, "l", a.session_id, lock.token)
            after = await coordinator.acquire(ref, LOCK, "l", b.session_id, b"", 0)
            assert after.token > lock.token
    finally:
        await coordinator.aclose()


async def ended_at(call: Awaitable[object]) -> tuple[BaseException | None, float]:
    """How a call ended, and when."""
    try:
        await call
    except Exception as error:
        return error, time.monotonic()
    return None, time.monotonic()


async def _first_answer(call: Callable[[], Awaitable[Holder | None]]) -> Holder | None:
    async with asyncio.timeout(20):
        while True:
            with suppress(BackendUnavailable):
                return await call()  # each attempt is bounded by the coordinator
