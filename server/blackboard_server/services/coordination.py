"""Use cases of coordination: sessions, locks, elections, and their records in
the conversation's log.

Order matters for fencing. A new holder's record (which raises the fence mark
to its token) is committed before the token is returned, so nobody can use a
token the store does not know. A release is recorded (raising the mark past
the token) before the claim is dropped in the coordinator, so the old holder
is fenced out before anyone else can hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress

import structlog

from blackboard_server.domain import coordination, limits
from blackboard_server.domain.coordination import Holder, SessionInfo
from blackboard_server.domain.errors import (
    BackendUnavailable,
    ConversationNotFound,
    InvalidArgument,
    NoHolder,
    NotHolder,
    RequestIdReused,
)
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import ConversationRef, FenceKind, WriteBatch
from blackboard_server.domain.quota import Quota
from blackboard_server.ports import Clock, Coordinator, StateStore
from blackboard_server.services.blackboard import Caller
from blackboard_server.services.quotas import QuotaBook

log = structlog.get_logger("blackboard.coordination")


class CoordinationService:
    def __init__(
        self,
        coordinator: Coordinator,
        store: StateStore,
        clock: Clock,
        limits_: limits.Limits,
        *,
        default_ttl_ms: int,
        max_ttl_ms: int,
        max_wait_ms: int,
        quotas: QuotaBook | None = None,
    ) -> None:
        self._quotas = quotas or QuotaBook(Quota())
        self._coordinator = coordinator
        self._store = store
        self._clock = clock
        self._limits = limits_
        self._default_ttl = default_ttl_ms
        self._max_ttl = max_ttl_ms
        self._max_wait = max_wait_ms

    async def _conversation(self, caller: Caller, conversation_id: str) -> ConversationRef:
        ref = caller.conversation(conversation_id)
        await self._store.head(ref)  # ConversationNotFound
        return ref

    # --- sessions --------------------------------------------------------------

    async def open_session(self, caller: Caller, conversation_id: str, ttl_ms: int) -> SessionInfo:
        ref = await self._conversation(caller, conversation_id)
        limits.non_negative(ttl_ms, "ttl_ms")
        if ttl_ms > self._max_ttl:
            raise InvalidArgument("ttl_ms", f"must be at most {self._max_ttl}")
        session = await self._coordinator.open_session(
            ref,
            caller.agent_id,
            ttl_ms or self._default_ttl,
            max_sessions=self._quotas.of(caller.tenant).sessions,
        )
        await record(self._store, self._clock, ref, coordination.joined(session))
        return session

    async def keep_alive(self, caller: Caller, conversation_id: str, session_id: str) -> int:
        return await self._coordinator.keep_alive(caller.conversation(conversation_id), session_id)

    async def close_session(self, caller: Caller, conversation_id: str, session_id: str) -> None:
        ref = caller.conversation(conversation_id)
        session = await self._coordinator.session(ref, session_id)
        for holder in await self._coordinator.held(ref, session_id):
            await record(self._store, self._clock, ref, coordination.ended(holder, expired=False))
        await record(
            self._store, self._clock, ref, coordination.session_ended(session, expired=False)
        )
        await self._coordinator.close_session(ref, session_id)

    async def sessions(self, caller: Caller, conversation_id: str) -> list[SessionInfo]:
        ref = await self._conversation(caller, conversation_id)
        return await self._coordinator.sessions(ref)

    # --- locks and elections ---------------------------------------------------------

    async def acquire(
        self,
        caller: Caller,
        conversation_id: str,
        kind: FenceKind,
        name: str,
        session_id: str,
        value: bytes,
        wait_ms: int,
    ) -> Holder:
        ref = caller.conversation(conversation_id)
        self._check_name(name, kind)
        limits.non_negative(wait_ms, "wait_ms")
        limits.value_size(value, self._limits)
        holder = await self._coordinator.acquire(
            ref, kind, name, session_id, value, min(wait_ms, self._max_wait)
        )
        try:
            await record(self._store, self._clock, ref, coordination.acquired(holder))
        except BaseException:
            # Unrecorded, the token is unusable: give the claim back rather than sit on it.
            await _quietly(self._coordinator.release(ref, kind, name, session_id, holder.token))
            raise
        return holder

    async def release(
        self,
        caller: Caller,
        conversation_id: str,
        kind: FenceKind,
        name: str,
        session_id: str,
        token: int,
    ) -> None:
        ref = caller.conversation(conversation_id)
        self._check_name(name, kind)
        holder = await self._coordinator.holder(ref, kind, name)
        if holder is None or holder.session_id != session_id or holder.token != token:
            raise NotHolder(name, token)
        await record(self._store, self._clock, ref, coordination.ended(holder, expired=False))
        await self._coordinator.release(ref, kind, name, session_id, token)

    async def proclaim(
        self,
        caller: Caller,
        conversation_id: str,
        role: str,
        session_id: str,
        token: int,
        value: bytes,
    ) -> Holder:
        self._check_name(role, FenceKind.ELECTION)
        limits.value_size(value, self._limits)
        return await self._coordinator.proclaim(
            caller.conversation(conversation_id), role, session_id, token, value
        )

    async def holder(
        self, caller: Caller, conversation_id: str, kind: FenceKind, name: str
    ) -> Holder:
        self._check_name(name, kind)
        found = await self._coordinator.holder(caller.conversation(conversation_id), kind, name)
        if found is None:
            raise NoHolder(name)
        return found

    @asynccontextmanager
    async def observe(
        self, caller: Caller, conversation_id: str, role: str
    ) -> AsyncIterator[AsyncIterator[Holder | None]]:
        ref = await self._conversation(caller, conversation_id)
        self._check_name(role, FenceKind.ELECTION)
        async with self._coordinator.observe(ref, FenceKind.ELECTION, role) as updates:
            yield updates

    def _check_name(self, name: str, kind: FenceKind) -> None:
        field = "name" if kind is FenceKind.LOCK else "role"
        limits.key(name, self._limits, field)


async def record(store: StateStore, clock: Clock, ref: ConversationRef, batch: WriteBatch) -> None:
    """Commits a coordination record; one already there (by request id) is fine."""
    # RequestIdReused: recorded already, with the other kind (released vs expired).
    with suppress(RequestIdReused):
        await store.commit(ref, batch, fingerprint(batch), clock.now_ms())


async def record_observations(coordinator: Coordinator, store: StateStore, clock: Clock) -> None:
    """Writes down what the coordinator observed on its own (expiries, hand-overs)."""
    async for ref, batch in coordinator.observations():
        delay = 0.05
        while True:
            try:
                await record(store, clock, ref, batch)
                break
            except ConversationNotFound:
                break  # deleted meanwhile: nothing to record into
            except BackendUnavailable as error:
                log.warning(
                    "cannot record coordination event yet", error=str(error), conversation=str(ref)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def _quietly(call: Awaitable[object]) -> None:
    try:
        await call
    except Exception as error:
        log.warning("could not give back an unrecorded claim", error=str(error))
