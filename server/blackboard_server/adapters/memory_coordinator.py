"""Sessions, locks and elections in process, for embedded mode: the executable
specification the etcd coordinator is tested against.

Like etcd, it keeps one revision counter that every claim and every removal
advances, so tokens only grow; a session is a lease that ends when it is not
renewed within its TTL.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from blackboard_server.domain import coordination
from blackboard_server.domain.coordination import Census, Holder, SessionInfo
from blackboard_server.domain.errors import (
    LockHeld,
    NotHolder,
    SessionNotFound,
    WaitExpired,
)
from blackboard_server.domain.model import ConversationRef, FenceKind, WriteBatch
from blackboard_server.domain.quota import check_count

Queue = tuple[ConversationRef, FenceKind, str]


@dataclass(slots=True)
class _Session:
    info: SessionInfo
    deadline: float


@dataclass(slots=True)
class _Claims:
    """Claims on one lock or role, in token order; the first holds."""

    holders: list[Holder] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    observers: int = 0

    def wake(self) -> None:
        self.changed.set()
        self.changed.clear()


class MemoryCoordinator:
    def __init__(self, *, tick_s: float = 0.02) -> None:
        self._tick = tick_s
        self._revision = 0
        self._sessions: dict[str, _Session] = {}
        self._queues: dict[Queue, _Claims] = {}
        # Unbounded, yet bounded by the state: each session or claim that ends
        # adds at most two records.
        self._observed: asyncio.Queue[tuple[ConversationRef, WriteBatch]] = asyncio.Queue()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryCoordinator]:
        """Owns the expiry loop."""
        async with asyncio.TaskGroup() as tasks:
            expiry = tasks.create_task(self._expire_forever())
            try:
                yield self
            finally:
                expiry.cancel()

    # --- sessions -------------------------------------------------------------

    async def open_session(
        self, ref: ConversationRef, agent_id: str, ttl_ms: int, *, max_sessions: int = 0
    ) -> SessionInfo:
        if max_sessions:
            live = sum(1 for s in self._sessions.values() if s.info.ref.tenant == ref.tenant)
            check_count("sessions", max_sessions, live)
        session_id = f"{secrets.randbits(63):016x}"
        info = SessionInfo(ref, session_id, agent_id, ttl_ms)
        self._sessions[session_id] = _Session(info, time.monotonic() + ttl_ms / 1000)
        self._revision += 1
        return info

    async def keep_alive(self, ref: ConversationRef, session_id: str) -> int:
        session = self._live(ref, session_id)
        session.deadline = time.monotonic() + session.info.ttl_ms / 1000
        return session.info.ttl_ms

    async def close_session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        session = self._live(ref, session_id)
        self._end(session, expired=False)
        return session.info

    async def session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        return self._live(ref, session_id).info

    async def sessions(self, ref: ConversationRef) -> list[SessionInfo]:
        now = time.monotonic()
        live = [s.info for s in self._sessions.values() if s.info.ref == ref and s.deadline > now]
        return sorted(live, key=lambda s: s.session_id)

    async def held(self, ref: ConversationRef, session_id: str) -> list[Holder]:
        return [
            claims.holders[0]
            for (r, _, _), claims in self._queues.items()
            if r == ref and claims.holders and claims.holders[0].session_id == session_id
        ]

    def _live(self, ref: ConversationRef, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None or session.info.ref != ref or session.deadline <= time.monotonic():
            raise SessionNotFound(session_id)
        return session

    def _end(self, session: _Session, *, expired: bool) -> None:
        """Drops the session and its claims, as a lease revoke or expiry does in etcd."""
        del self._sessions[session.info.session_id]
        self._revision += 1
        if expired:
            self._observe(session.info.ref, coordination.session_ended(session.info, expired=True))
        for queue, claims in list(self._queues.items()):
            mine = [h for h in claims.holders if h.session_id == session.info.session_id]
            for holder in mine:
                self._remove(queue, claims, holder, expired=expired)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            for session in [s for s in self._sessions.values() if s.deadline <= now]:
                self._end(session, expired=True)

    # --- locks and elections -------------------------------------------------------

    async def acquire(
        self,
        ref: ConversationRef,
        kind: FenceKind,
        name: str,
        session_id: str,
        value: bytes,
        wait_ms: int,
    ) -> Holder:
        session = self._live(ref, session_id)
        queue = (ref, kind, name)
        claims = self._queues.setdefault(queue, _Claims())
        mine = next((h for h in claims.holders if h.session_id == session_id), None)
        if mine is None:
            self._revision += 1
            mine = Holder(ref, kind, name, session_id, session.info.agent_id, self._revision, value)
            claims.holders.append(mine)
            claims.wake()
        deadline = time.monotonic() + wait_ms / 1000
        while claims.holders[0] is not mine:
            if mine not in claims.holders:  # the session ended while waiting
                raise SessionNotFound(session_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._withdraw(queue, claims, mine)
                if wait_ms == 0:
                    first = claims.holders[0] if claims.holders else mine
                    raise LockHeld(name, first.agent_id, first.token)
                raise WaitExpired(name, wait_ms)
            try:
                async with asyncio.timeout(remaining):
                    await claims.changed.wait()
            except TimeoutError:
                continue
            except BaseException:
                self._withdraw(queue, claims, mine)
                raise
        return mine

    async def release(
        self, ref: ConversationRef, kind: FenceKind, name: str, session_id: str, token: int
    ) -> Holder:
        queue = (ref, kind, name)
        claims, holder = self._held(queue, session_id, token)
        self._remove(queue, claims, holder, expired=False)
        return holder

    async def proclaim(
        self, ref: ConversationRef, name: str, session_id: str, token: int, value: bytes
    ) -> Holder:
        claims, holder = self._held((ref, FenceKind.ELECTION, name), session_id, token)
        updated = Holder(ref, FenceKind.ELECTION, name, session_id, holder.agent_id, token, value)
        claims.holders[0] = updated
        self._revision += 1
        claims.wake()
        return updated

    def _held(self, queue: Queue, session_id: str, token: int) -> tuple[_Claims, Holder]:
        """The queue and its holder, if that is the session with that token; else NotHolder."""
        claims = self._queues.get(queue)
        holder = claims.holders[0] if claims and claims.holders else None
        if (
            claims is None
            or holder is None
            or (holder.session_id, holder.token)
            != (
                session_id,
                token,
            )
        ):
            raise NotHolder(queue[2], token)
        return claims, holder

    async def holder(self, ref: ConversationRef, kind: FenceKind, name: str) -> Holder | None:
        claims = self._queues.get((ref, kind, name))
        return claims.holders[0] if claims and claims.holders else None

    async def census(self) -> Census:
        now = time.monotonic()
        held = [kind for (_, kind, _), claims in self._queues.items() if claims.holders]
        return Census(
            sessions=sum(1 for s in self._sessions.values() if s.deadline > now),
            locks_held=held.count(FenceKind.LOCK),
            leaders=held.count(FenceKind.ELECTION),
        )

    @asynccontextmanager
    async def observe(
        self, ref: ConversationRef, kind: FenceKind, name: str
    ) -> AsyncIterator[AsyncIterator[Holder | None]]:
        queue = (ref, kind, name)
        claims = self._queues.setdefault(queue, _Claims())

        async def updates() -> AsyncIterator[Holder | None]:
            last: Holder | bool | None = False  # nothing sent yet
            while True:
                current = claims.holders[0] if claims.holders else None
                if current != last:
                    last = current
                    yield current
                    continue  # look again: it may have changed while we were away
                await claims.changed.wait()

        claims.observers += 1
        try:
            yield updates()
        finally:
            claims.observers -= 1
            self._forget_if_idle(queue, claims)

    def _forget_if_idle(self, queue: Queue, claims: _Claims) -> None:
        if not claims.holders and not claims.observers and self._queues.get(queue) is claims:
            del self._queues[queue]

    def _withdraw(self, queue: Queue, claims: _Claims, claim: Holder) -> None:
        if claim in claims.holders:
            self._remove(queue, claims, claim, expired=False)

    def _remove(self, queue: Queue, claims: _Claims, claim: Holder, *, expired: bool) -> None:
        was_holder = claims.holders[0] == claim
        claims.holders.remove(claim)
        self._revision += 1
        claims.wake()
        self._forget_if_idle(queue, claims)
        if not was_holder:
            return
        if expired:
            self._observe(queue[0], coordination.ended(claim, expired=True))
        if claims.holders:
            self._observe(queue[0], coordination.acquired(claims.holders[0]))

    # --- what the recorder writes down --------------------------------------------

    def _observe(self, ref: ConversationRef, batch: WriteBatch) -> None:
        self._observed.put_nowait((ref, batch))

    async def observations(self) -> AsyncIterator[tuple[ConversationRef, WriteBatch]]:
        while True:
            yield await self._observed.get()

    async def aclose(self) -> None:
        self._sessions.clear()
        self._queues.clear()
