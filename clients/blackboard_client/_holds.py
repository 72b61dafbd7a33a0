"""What a session holds: locks and leaderships, and what happens when one is lost.

A hold is lost when its session ends (closed, expired, or not renewed in
time) or a check shows that someone else holds it. Losing it sets `.lost`;
a body running under `async with hold:` is also cancelled (unless the hold
was made with `cancel_on_loss=False`) and the block raises `LockLost`
(`LeadershipLost`), so code that relied on holding it stops at its next await.

The cancellation works like `asyncio.timeout`: the task running the body is
cancelled, and on exit the cancellation is taken back and turned into the
error, unless somebody else cancelled the task too.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._errors import BlackboardError, NoHolder, NotHolder, SessionNotFound
from blackboard_client._model import Fence, Leader

if TYPE_CHECKING:
    from blackboard_client._session import Session


class LockLost(BlackboardError):
    """The lock was lost while the body of `async with` ran, which was cancelled.

    Lost means its session ended (closed, expired, or not renewed in time) or
    someone else holds it now. Raised by the SDK, never sent by the server:
    there is no reason for it, and `code` is ABORTED (the work was abandoned).
    """

    code = "ABORTED"

    @classmethod
    def of(cls, name: str, token: int, why: str) -> LockLost:
        what = "leadership of" if issubclass(cls, LeadershipLost) else "lock"
        return cls(
            f"{what} {name!r} (token {token}) was lost: {why}",
            metadata={"name": name, "token": str(token), "why": why},
        )

    @property
    def name(self) -> str:
        return self.metadata.get("name", "")

    @property
    def token(self) -> int:
        return self._int("token")

    @property
    def why(self) -> str:
        return self.metadata.get("why", "")


class LeadershipLost(LockLost):
    """The leadership was lost while the body of `async with` ran."""


class BodyGuard:
    """Cancels the task running a body on `trip()`; tells on exit whether it did.

    No I/O: `enter()` in the task that runs the body, `trip()` from anywhere
    on the loop, `exit()` when the body ends.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._cancelled = False
        self._done = False

    def enter(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._cancelling = self._task.cancelling()
        self._done = False

    def trip(self, message: str) -> None:
        """Cancels the body, if one is running and has not been cancelled by us yet."""
        if self._task is not None and not self._done and not self._cancelled:
            # False when the task is finished: a sync caller's body cannot be interrupted.
            self._cancelled = self._task.cancel(message)

    def exit(self, exc: BaseException | None) -> bool:
        """Ends the body; True when `exc` is only the cancellation `trip()` caused."""
        self._done = True
        if not self._cancelled or self._task is None:
            return False
        self._cancelled = False
        only_ours = self._task.uncancel() <= self._cancelling
        return only_ours and isinstance(exc, asyncio.CancelledError)


class Hold:
    """A lock or a leadership held by a session; see `Lock` and `Leadership`."""

    _lost_error: ClassVar[type[LockLost]] = LockLost

    def __init__(
        self, session: Session, name: str, token: int, *, cancel_on_loss: bool = True
    ) -> None:
        self.name = name
        self.token = token
        #: Set when the hold is lost (see `why`); never cleared.
        self.lost = asyncio.Event()
        self.why = ""
        self.released = False
        self._session = session
        self._cancel_on_loss = cancel_on_loss
        self._guard = BodyGuard()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def fence(self) -> Fence:
        raise NotImplementedError

    @property
    def held(self) -> bool:
        return not self.released and not self.lost.is_set()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "released" if self.released else "held"
        return f"<{type(self).__name__} {self.name!r} token={self.token} {state}>"

    # --- losing it --------------------------------------------------------------------

    def _lose(self, why: str) -> None:
        if self.released or self.lost.is_set():
            return
        self.why = why
        self.lost.set()
        self._stop_watching()
        if self._cancel_on_loss:
            self._guard.trip(f"{self!r} was lost: {why}")

    def _watch_with(self, watcher: asyncio.Task[None]) -> None:
        self._watcher = watcher

    def _stop_watching(self) -> None:
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        self._watcher = None

    async def _watch(self, interval: float) -> None:
        """Runs in the session's task group until the hold ends; loses it on a bad check."""
        raise NotImplementedError

    def _check(self, session_id: str, token: int, agent_id: str) -> None:
        if session_id != self._session.session_id or token != self.token:
            self._lose(f"{agent_id or 'another session'} holds it now (token {token})")

    # --- giving it back -----------------------------------------------------------------

    async def _give_back(self) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        """Gives the hold back. Does nothing if released already.

        When the hold was lost meanwhile, the server's NotHolder (or, its
        session gone, SessionNotFound) is expected and not raised.
        """
        if self.released:
            return
        self.released = True
        self._stop_watching()
        self._session._forget(self)
        if not self._session._can_call:
            return  # the session is gone (or abandoned): nothing to give back
        try:
            await self._give_back()
        except (NotHolder, SessionNotFound):
            if not self.lost.is_set():
                raise

    # --- as a context manager -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.released:
            raise RuntimeError(f"{self!r} was released; acquire it again")
        if self.lost.is_set() and self._cancel_on_loss:
            await self.release()
            raise self._lost_error.of(self.name, self.token, self.why)
        self._guard.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancelled_by_loss = self._guard.exit(exc)
        if exc is None:
            await self.release()
        else:
            # Do not hide the body's own error behind one from the release.
            with suppress(BlackboardError):
                await self.release()
        if not (self.lost.is_set() and self._cancel_on_loss):
            return
        if exc is None or cancelled_by_loss:
            # A sync caller's body (not cancellable) or one that swallowed the
            # cancellation still learns that it ran without holding.
            raise self._lost_error.of(self.name, self.token, self.why) from exc


class Lock(Hold):
    """A held lock: `.name`, `.token` (fences writes: `put(..., fence=lock)`), `.lost`.

    Made by `session.lock()` (as `async with`) or `session.acquire()`.
    """

    @property
    def fence(self) -> Fence:
        return Fence.lock(self.name, self.token)

    async def _give_back(self) -> None:
        s = self._session
        request = pb.ReleaseLockRequest(
            conversation_id=s.conversation_id,
            session_id=s.session_id,
            name=self.name,
            token=self.token,
        )
        await s._client._call(s._client._coordination.ReleaseLock, request)

    async def _watch(self, interval: float) -> None:
        s = self._session
        request = pb.GetLockRequest(conversation_id=s.conversation_id, name=self.name)
        while True:
            await asyncio.sleep(interval)
            try:
                holder = await s._client._call(s._client._coordination.GetLock, request)
            except NoHolder:
                self._lose("nobody holds it now")
                return
            except BlackboardError:
                continue  # unknown is not lost: the session's TTL decides that
            self._check(holder.session_id, holder.token, holder.agent_id)


class Leadership(Hold):
    """Leadership of a role: `.role`, `.token` (the term; fences writes), `.value`, `.lost`.

    Made by `await session.campaign(...)`; use it as `async with` to cancel
    the body when the leadership is lost and resign on exit.
    """

    _lost_error = LeadershipLost

    def __init__(self, session: Session, leader: Leader, *, cancel_on_loss: bool = True) -> None:
        super().__init__(session, leader.role, leader.token, cancel_on_loss=cancel_on_loss)
        self.value = leader.value

    @property
    def role(self) -> str:
        return self.name

    @property
    def fence(self) -> Fence:
        return Fence.election(self.name, self.token)

    async def proclaim(self, value: bytes) -> None:
        """Publishes a new value for this term (NotHolder if the term is over)."""
        s = self._session
        request = pb.ProclaimRequest(
            conversation_id=s.conversation_id,
            session_id=s.session_id,
            role=self.name,
            token=self.token,
            value=value,
        )
        holder = await s._client._call(s._client._coordination.Proclaim, request)
        self.value = _convert.leader(holder).value

    async def resign(self) -> None:
        """Ends the term (the same as `release()`)."""
        await self.release()

    async def _give_back(self) -> None:
        s = self._session
        request = pb.ResignRequest(
            conversation_id=s.conversation_id,
            session_id=s.session_id,
            role=self.name,
            token=self.token,
        )
        await s._client._call(s._client._coordination.Resign, request)

    async def _watch(self, interval: float) -> None:
        s = self._session
        while True:
            try:
                async with s._client.observe(s.conversation_id, self.name) as leaders:
                    async for leader in leaders:
                        if leader is None:
                            self._lose("the role has no leader now")
                            return
                        self._check(leader.session_id, leader.token, leader.agent_id)
                        if self.lost.is_set():
                            return
            except BlackboardError:
                pass  # observing failed for good: look again later
            await asyncio.sleep(interval)
