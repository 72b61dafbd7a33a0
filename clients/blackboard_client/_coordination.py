"""The coordination methods of `Client`: sessions, presence, lock holders, leaders.

Locks and elections are taken through a session (`_session.py`): a lock is
only as alive as the session that holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._base import BaseClient
from blackboard_client._errors import BlackboardError, Unavailable, error_from_rpc
from blackboard_client._model import Leader, LockHolder, SessionInfo
from blackboard_client._retry import RetryPolicy
from blackboard_client._session import Session
from blackboard_client._stream import ClosingStream

#: Opens one Observe stream: the current leader (None: no leader), then each change.
LeaderOpener = Callable[[], AsyncGenerator[Leader | None, None]]

_NOTHING_YET = object()


class Observation(ClosingStream[Leader | None]):
    """An async iterator of who leads a role: a `Leader`, or None when nobody does.

    The first item is the current state, then one per change of leader or of
    its value. Reconnects by itself on UNAVAILABLE (a reconnect repeats the
    current state only if it changed meanwhile); gives up after
    `retry.attempts` consecutive failed reconnects, raising the last error.
    Also an async context manager; leaving it (or `aclose()`) ends the stream.
    """

    def __init__(self, opener: LeaderOpener, *, retry: RetryPolicy) -> None:
        self._opener = opener
        self._retry = retry
        self._items = self._run()

    async def _run(self) -> AsyncGenerator[Leader | None, None]:
        last: object = _NOTHING_YET
        failures = 0
        while True:
            error: BlackboardError = Unavailable("the server ended the stream")
            stream = self._opener()
            try:
                async for leader in stream:
                    failures = 0
                    if leader != last:
                        last = leader
                        yield leader
            except Unavailable as e:
                error = e
            finally:
                await stream.aclose()
            failures += 1
            if failures >= self._retry.attempts:
                raise error
            await asyncio.sleep(self._retry.backoff(failures))


class CoordinationClient(BaseClient):
    def session(self, conversation_id: str, *, ttl: float | None = 10.0) -> Session:
        """A session in `conversation_id` for this client's agent, for `async with`.

        `ttl` in seconds (None: the server's default). The SDK renews it every
        `ttl / 3` while the block runs and closes it on exit.
        """
        return Session(self, conversation_id, ttl=ttl)

    async def sessions(self, conversation_id: str) -> tuple[SessionInfo, ...]:
        """Presence: the live sessions of the conversation."""
        request = pb.ListSessionsRequest(conversation_id=conversation_id)
        response = await self._call(self._coordination.ListSessions, request)
        return tuple(_convert.session_info(s) for s in response.sessions)

    async def lock_holder(self, conversation_id: str, name: str) -> LockHolder:
        """Who holds the lock `name`; NoHolder if nobody does."""
        request = pb.GetLockRequest(conversation_id=conversation_id, name=name)
        return _convert.lock_holder(await self._call(self._coordination.GetLock, request))

    async def leader(self, conversation_id: str, role: str) -> Leader:
        """Who leads `role`, in which term, with which value; NoHolder if nobody does."""
        request = pb.GetLeaderRequest(conversation_id=conversation_id, role=role)
        return _convert.leader(await self._call(self._coordination.GetLeader, request))

    def observe(self, conversation_id: str, role: str) -> Observation:
        """Who leads `role`, now and at every change (None: nobody); see `Observation`."""
        request = pb.ObserveRequest(conversation_id=conversation_id, role=role)
        rpc = self._coordination.Observe
        metadata = self._metadata

        async def open_stream() -> AsyncGenerator[Leader | None, None]:
            call = rpc(request, metadata=metadata)
            try:
                async for update in call:
                    yield _convert.leader_update(update)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from error
            finally:
                call.cancel()

        return Observation(open_stream, retry=self.retry)
