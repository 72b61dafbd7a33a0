"""A session: an agent's presence in a conversation, and the owner of its holds.

    async with client.session("conv", ttl=10.0) as s:
        async with s.lock("task/42", wait=5.0) as lock:
            await client.put("conv", "results/42", json=..., fence=lock)

Entering opens the session; a task renews it every `ttl / 3` for as long as
the block runs; leaving closes it, which releases whatever it still holds.
The renewal task, and one watcher per hold, live in the session's
`TaskGroup`: nothing outlives the block.

The session is *lost* when the server says it is gone (SessionNotFound) or
when no renewal has succeeded before its TTL ran out (the server may already
have expired it; counting from when the renewal was sent errs on the safe
side). Then `s.lost` is set and every hold is lost with it. Renewals that
fail with UNAVAILABLE are retried with the client's `RetryPolicy`, and again
after that, until the TTL runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._errors import BlackboardError, NotFound, SessionNotFound
from blackboard_client._holds import Hold, Leadership, Lock

if TYPE_CHECKING:
    from blackboard_client._coordination import CoordinationClient

H = TypeVar("H", bound=Hold)


@dataclass(slots=True)
class Lease:
    """When a session must be renewed and when it is gone. Pure: times in seconds."""

    ttl: float
    expires_at: float

    @property
    def interval(self) -> float:
        """How long to wait between renewals."""
        return self.ttl / 3

    def renewed(self, sent_at: float, left: float) -> None:
        """A renewal sent at `sent_at` succeeded and the server said `left` remains.

        The server started counting when the request arrived, after `sent_at`,
        so this never believes the session lives longer than it does.
        """
        self.expires_at = sent_at + left

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


def wait_ms(wait: float | None) -> int:
    """A lock or campaign wait for the wire: None or 0 means try once (0)."""
    if not wait or wait <= 0:
        return 0
    return max(1, round(wait * 1000))


class Session:
    """Made by `client.session(conversation_id, ttl=...)`; use it as `async with`.

    `session_id` and `agent_id` are set once entered. `lost` is set (and
    `why` says why) when the session ends without being closed.
    """

    def __init__(
        self, client: CoordinationClient, conversation_id: str, *, ttl: float | None
    ) -> None:
        self.conversation_id = conversation_id
        self.session_id = ""
        self.agent_id = ""
        self.ttl = ttl or 0.0
        self.lost = asyncio.Event()
        self.why = ""
        self._client = client
        self._lease = Lease(self.ttl, 0.0)
        self._holds: set[Hold] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._renewing = asyncio.Event()
        self._renewing.set()
        self._abandoned = False
        self._closed = False

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "closed" if self._closed else "open"
        return f"<Session {self.session_id or '(not open)'} of {self.agent_id!r} {state}>"

    @property
    def _can_call(self) -> bool:
        """Whether the server still knows this session, as far as the SDK can tell."""
        live = self._tasks is not None and not self._closed and not self._abandoned
        return live and not self.lost.is_set()

    # --- the session's life -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tasks is not None:
            raise RuntimeError("a session is entered once; open a new one")
        ttl_ms = round(self.ttl * 1000)
        request = pb.OpenSessionRequest(conversation_id=self.conversation_id, ttl_ms=ttl_ms)
        sent = asyncio.get_running_loop().time()
        opened = await self._client._call(self._client._coordination.OpenSession, request)
        info = _convert.session_info(opened)
        self.session_id, self.agent_id = info.session_id, info.agent_id
        self.ttl = info.ttl_ms / 1000
        self._lease = Lease(self.ttl, sent + self.ttl)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._keeper = self._tasks.create_task(self._keep_alive(), name=f"keep-alive {self!r}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tasks is None or self._closed:
            return
        can_call = self._can_call
        self._closed = True
        for hold in list(self._holds):
            hold._lose("its session was closed")  # the close releases it on the server
        if self._keeper is not None:
            self._keeper.cancel()
        # Every task was told to stop; not the body's exception: a TaskGroup would wrap it.
        await self._tasks.__aexit__(None, None, None)
        if not can_call:
            return
        request = pb.CloseSessionRequest(
            conversation_id=self.conversation_id, session_id=self.session_id
        )
        try:
            await self._client._call(self._client._coordination.CloseSession, request)
        except SessionNotFound:
            pass  # it expired just now: closed either way
        except BlackboardError:
            if exc is None:
                raise  # else the body's own error matters more; the session expires anyway

    def abandon(self) -> None:
        """Stops renewing and skips every goodbye, as if this process had died.

        For fault drills in tests and demos: no release, resign or close is
        sent from now on, so the server expires the session after its TTL and
        hands its locks to others. `lost` is set when the TTL runs out here.
        """
        self._abandoned = True
        self._renewing.clear()

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        lease = self._lease
        request = pb.KeepAliveRequest(
            conversation_id=self.conversation_id, session_id=self.session_id
        )
        renew = self._client._coordination.KeepAlive
        delay = lease.interval
        why = ""
        while not why:
            try:
                async with asyncio.timeout_at(lease.expires_at):
                    await self._renewing.wait()
                    await asyncio.sleep(delay)
                    sent = loop.time()
                    renewal = await self._client._call(renew, request)
            except TimeoutError:
                why = f"not renewed within its TTL of {lease.ttl:g} s"
            except NotFound as error:
                why = f"the server ended it ({error.message})"
            except BlackboardError:
                delay = min(lease.interval, self._client.retry.backoff(1))  # try again soon
            else:
                lease.renewed(sent, renewal.ttl_ms / 1000)
                delay = lease.interval
        self._end(why)

    def _end(self, why: str) -> None:
        self.why = why
        self.lost.set()
        for hold in list(self._holds):
            hold._lose(f"its session ended: {why}")

    # --- holds ----------------------------------------------------------------------------

    def _keep(self, hold: H) -> H:
        """Starts watching a new hold, in the session's task group."""
        if self._tasks is None or self._closed:
            raise RuntimeError("the session is not open: use it as `async with`")
        self._holds.add(hold)
        if self.lost.is_set():
            hold._lose(f"its session ended: {self.why}")
        else:
            watcher = self._tasks.create_task(hold._watch(self._lease.interval))
            hold._watch_with(watcher)
        return hold

    def _forget(self, hold: Hold) -> None:
        self._holds.discard(hold)

    async def acquire(
        self, name: str, *, wait: float | None = None, cancel_on_loss: bool = True
    ) -> Lock:
        """Takes the lock `name`; the low-level form of `lock()`.

        `wait` None or 0: try once (LockHeld if held). Otherwise wait up to
        `wait` seconds (WaitExpired). Release it with `release()`, or use the
        returned lock as `async with` to guard a body with it.
        """
        request = pb.AcquireLockRequest(
            conversation_id=self.conversation_id,
            session_id=self.session_id,
            name=name,
            wait_ms=wait_ms(wait),
        )
        coordination = self._client._coordination
        holder = await self._client._call(coordination.AcquireLock, request, extra_time=wait or 0)
        return self._keep(Lock(self, holder.name, holder.token, cancel_on_loss=cancel_on_loss))

    async def release(self, hold: Hold) -> None:
        """Releases a lock or resigns a leadership (`hold.release()`)."""
        await hold.release()

    @asynccontextmanager
    async def lock(
        self, name: str, *, wait: float | None = None, cancel_on_loss: bool = True
    ) -> AsyncIterator[Lock]:
        """`async with s.lock(name, wait=5.0) as lock:` holds `name` for the block.

        If the lock is lost meanwhile the body is cancelled and the block
        raises `LockLost` (with `cancel_on_loss=False`, only `lock.lost` is
        set). The lock is released on exit.
        """
        held = await self.acquire(name, wait=wait, cancel_on_loss=cancel_on_loss)
        async with held:
            yield held

    async def campaign(
        self,
        role: str,
        value: bytes | str = b"",
        *,
        wait: float | None = None,
        cancel_on_loss: bool = True,
    ) -> Leadership:
        """Becomes the leader of `role`, proclaiming `value`; `wait` as in `acquire()`.

        Use the result as `async with` to resign on exit and to have the body
        cancelled (LeadershipLost) if the leadership is lost.
        """
        request = pb.CampaignRequest(
            conversation_id=self.conversation_id,
            session_id=self.session_id,
            role=role,
            value=value.encode() if isinstance(value, str) else value,
            wait_ms=wait_ms(wait),
        )
        coordination = self._client._coordination
        holder = await self._client._call(coordination.Campaign, request, extra_time=wait or 0)
        leadership = Leadership(self, _convert.leader(holder), cancel_on_loss=cancel_on_loss)
        return self._keep(leadership)
