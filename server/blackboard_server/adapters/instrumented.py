"""The store and the coordinator, timed and counted (and traced, when tracing is on).

Decorators over the ports rather than code in each adapter: every backend is
measured the same way, by port operation (`commit`, `read`, `acquire`...), never
by conversation. A call fails as far as the metrics care when the backend did:
BackendUnavailable or an unexpected exception; domain outcomes (not found,
fenced, a held lock) are answers, not errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from time import perf_counter
from typing import Any, TypeVar

from blackboard_server.domain.coordination import Census, Holder, SessionInfo
from blackboard_server.domain.errors import BackendUnavailable, BlackboardError
from blackboard_server.domain.model import (
    CommitResult,
    Conversation,
    ConversationRef,
    Event,
    FenceKind,
    Snapshot,
    WriteBatch,
)
from blackboard_server.domain.quota import UNLIMITED, StoreQuota, Usage
from blackboard_server.metrics import Metrics
from blackboard_server.ports import Coordinator, Listener, StateStore
from blackboard_server.tracing import Tracing

T = TypeVar("T")


class _Timer:
    def __init__(self, backend: str, metrics: Metrics, tracing: Tracing | None) -> None:
        self._backend = backend
        self._metrics = metrics
        self._tracing = tracing
        self._children: dict[str, tuple[Any, Any]] = {}

    async def __call__(self, operation: str, call: Awaitable[T]) -> T:
        children = self._children.get(operation)
        if children is None:
            labels = (self._backend, operation)
            children = self._children[operation] = (
                self._metrics.backend_seconds.labels(*labels),
                self._metrics.backend_errors.labels(*labels),
            )
        span = None
        if self._tracing is not None:
            span = self._tracing.client_span(f"{self._backend} {operation}", self._backend)
        start = perf_counter()
        try:
            if span is None:
                return await call
            with span:
                return await call
        except BackendUnavailable:
            children[1].inc()
            raise
        except BlackboardError:
            raise
        except Exception:
            children[1].inc()
            raise
        finally:
            children[0].observe(perf_counter() - start)


class InstrumentedStore:
    def __init__(
        self, inner: StateStore, backend: str, metrics: Metrics, tracing: Tracing | None
    ) -> None:
        self.inner = inner
        self._timed = _Timer(backend, metrics, tracing)
        self._log_length = metrics.changelog_length.observe

    async def create_conversation(
        self,
        ref: ConversationRef,
        metadata: dict[str, str],
        idle_ttl_ms: int,
        now_ms: int,
        *,
        max_conversations: int = 0,
    ) -> Conversation:
        call = self.inner.create_conversation(
            ref, metadata, idle_ttl_ms, now_ms, max_conversations=max_conversations
        )
        return await self._timed("create_conversation", call)

    async def usage(self, tenant: str) -> Usage:
        return await self._timed("usage", self.inner.usage(tenant))

    async def get_conversation(self, ref: ConversationRef) -> Conversation:
        return await self._timed("get_conversation", self.inner.get_conversation(ref))

    async def list_conversations(
        self, tenant: str, after: str, limit: int
    ) -> tuple[list[Conversation], bool]:
        call = self.inner.list_conversations(tenant, after, limit)
        return await self._timed("list_conversations", call)

    async def delete_conversation(self, ref: ConversationRef) -> None:
        await self._timed("delete_conversation", self.inner.delete_conversation(ref))

    async def grants(self, ref: ConversationRef) -> dict[str, int]:
        return await self._timed("grants", self.inner.grants(ref))

    async def set_grant(self, ref: ConversationRef, subject: str, role: int) -> bool:
        return await self._timed("set_grant", self.inner.set_grant(ref, subject, role))

    async def commit(
        self,
        ref: ConversationRef,
        batch: WriteBatch,
        fingerprint: str,
        now_ms: int,
        quota: StoreQuota = UNLIMITED,
    ) -> CommitResult:
        call = self.inner.commit(ref, batch, fingerprint, now_ms, quota)
        return await self._timed("commit", call)

    async def read(
        self, ref: ConversationRef, prefix: str, after: str, limit: int, *, exact: bool = False
    ) -> Snapshot:
        return await self._timed("read", self.inner.read(ref, prefix, after, limit, exact=exact))

    async def events(
        self, ref: ConversationRef, start: int, end: int, limit: int
    ) -> tuple[Sequence[Event], int]:
        return await self._timed("events", self.inner.events(ref, start, end, limit))

    async def head(self, ref: ConversationRef) -> tuple[int, int]:
        head, compact = await self._timed("head", self.inner.head(ref))
        self._log_length(head - compact)
        return head, compact

    async def expire_due(self, now_ms: int, limit: int) -> int:
        return await self._timed("expire_due", self.inner.expire_due(now_ms, limit))

    async def expire_idle(self, now_ms: int, limit: int) -> int:
        return await self._timed("expire_idle", self.inner.expire_idle(now_ms, limit))

    def listen(self, listener: Listener) -> None:
        self.inner.listen(listener)

    async def watch(self, ref: ConversationRef) -> None:
        await self._timed("watch", self.inner.watch(ref))

    async def unwatch(self, ref: ConversationRef) -> None:
        await self._timed("unwatch", self.inner.unwatch(ref))

    async def aclose(self) -> None:
        await self.inner.aclose()


class InstrumentedCoordinator:
    """`acquire` includes the time spent waiting for the lock or the role."""

    def __init__(
        self, inner: Coordinator, backend: str, metrics: Metrics, tracing: Tracing | None
    ) -> None:
        self.inner = inner
        self._timed = _Timer(backend, metrics, tracing)

    async def open_session(
        self, ref: ConversationRef, agent_id: str, ttl_ms: int, *, max_sessions: int = 0
    ) -> SessionInfo:
        call = self.inner.open_session(ref, agent_id, ttl_ms, max_sessions=max_sessions)
        return await self._timed("open_session", call)

    async def keep_alive(self, ref: ConversationRef, session_id: str) -> int:
        return await self._timed("keep_alive", self.inner.keep_alive(ref, session_id))

    async def close_session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        return await self._timed("close_session", self.inner.close_session(ref, session_id))

    async def session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        return await self._timed("session", self.inner.session(ref, session_id))

    async def sessions(self, ref: ConversationRef) -> list[SessionInfo]:
        return await self._timed("sessions", self.inner.sessions(ref))

    async def held(self, ref: ConversationRef, session_id: str) -> list[Holder]:
        return await self._timed("held", self.inner.held(ref, session_id))

    async def acquire(
        self,
        ref: ConversationRef,
        kind: FenceKind,
        name: str,
        session_id: str,
        value: bytes,
        wait_ms: int,
    ) -> Holder:
        call = self.inner.acquire(ref, kind, name, session_id, value, wait_ms)
        return await self._timed("acquire", call)

    async def release(
        self, ref: ConversationRef, kind: FenceKind, name: str, session_id: str, token: int
    ) -> Holder:
        call = self.inner.release(ref, kind, name, session_id, token)
        return await self._timed("release", call)

    async def proclaim(
        self, ref: ConversationRef, name: str, session_id: str, token: int, value: bytes
    ) -> Holder:
        call = self.inner.proclaim(ref, name, session_id, token, value)
        return await self._timed("proclaim", call)

    async def holder(self, ref: ConversationRef, kind: FenceKind, name: str) -> Holder | None:
        return await self._timed("holder", self.inner.holder(ref, kind, name))

    def observe(
        self, ref: ConversationRef, kind: FenceKind, name: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Holder | None]]:
        return self.inner.observe(ref, kind, name)

    async def census(self) -> Census:
        return await self._timed("census", self.inner.census())

    def running(self) -> AbstractAsyncContextManager[object]:
        return self.inner.running()

    def observations(self) -> AsyncIterator[tuple[ConversationRef, WriteBatch]]:
        return self.inner.observations()

    async def aclose(self) -> None:
        await self.inner.aclose()
