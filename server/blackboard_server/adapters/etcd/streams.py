"""The long-lived calls: watches, election observers and lease keep-alives.

Each survives the loss of the member it is connected to by reconnecting to the
next endpoint and picking up where it left off, and gives up with
EtcdUnavailable once no member has served it for the client's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, Self

from grpc import aio

from blackboard.etcd import election_pb2, rpc_pb2
from blackboard_server.adapters.etcd.errors import (
    EtcdCompacted,
    EtcdDeadline,
    EtcdLeaseLost,
    EtcdLeaseNotFound,
    EtcdTokenRejected,
    EtcdUnavailable,
    EtcdWatchCanceled,
    from_rpc_error,
)
from blackboard_server.adapters.etcd.model import KeyValue, WatchBatch, event_from_pb, kv_from_pb
from blackboard_server.adapters.etcd.transport import Transport


class _Reconnect(Exception):
    """The stream broke in a way another member may not: reconnect."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _classify(exc: aio.AioRpcError, transport: Transport) -> Exception:
    """Unavailable members and rejected tokens are reconnected (with a fresh token)."""
    error = from_rpc_error(exc)
    if isinstance(error, EtcdTokenRejected):
        transport.token_rejected()
    return _Reconnect(error) if isinstance(error, EtcdUnavailable | EtcdTokenRejected) else error


class _Outage:
    """How long a stream has gone without a member serving it."""

    def __init__(self, transport: Transport, limit_s: float, what: str) -> None:
        self._transport = transport
        self._limit_s = limit_s
        self._what = what
        self._since: float | None = None
        self._attempt = 0

    def ok(self) -> None:
        self._since = None
        self._attempt = 0

    async def failed(self, index: int, cause: BaseException) -> None:
        """Moves on to the next member and pauses; raises EtcdUnavailable once
        the outage has lasted the limit."""
        self._transport.failed(index)
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since >= self._limit_s:
            raise EtcdUnavailable(
                f"{self._what}: no etcd member served it for {self._limit_s}s ({cause})"
            ) from cause
        await asyncio.sleep(self._transport.pause(self._attempt))
        self._attempt += 1


class _Stream:
    """An async iterator that is also an async context manager owning one call."""

    _call: aio.Call | None = None
    _closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


class Watcher(_Stream):
    """Events of a key or key range from a start revision, as `WatchBatch`es.

    After a member failure the watch is created again from the revision after
    the last one delivered, so nothing is missed or repeated; if that revision
    was compacted meanwhile, iteration raises EtcdCompacted.
    """

    def __init__(
        self, transport: Transport, create: rpc_pb2.WatchCreateRequest, *, timeout_s: float
    ) -> None:
        self._transport = transport
        self._create = create
        self._timeout_s = timeout_s
        self._outage = _Outage(transport, timeout_s, "watch")
        self._stream: aio.StreamStreamCall[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse] | None
        self._stream = None
        self._index = 0
        # The next revision to deliver; 0 until known when watching "from now".
        self.next_revision = create.start_revision

    async def __aenter__(self) -> Self:
        """Creates the watch now, so that "from now" means from here."""
        while self._stream is None:
            try:
                await self._open()
            except _Reconnect as broken:
                self._drop()
                await self._outage.failed(self._index, broken.cause)
        return self

    async def __anext__(self) -> WatchBatch:
        while not self._closed:
            try:
                response = await self._read()
            except _Reconnect as broken:
                self._drop()
                await self._outage.failed(self._index, broken.cause)
                continue
            batch = self._accept(response)
            if batch is not None:
                return batch
        raise StopAsyncIteration

    async def _read(self) -> rpc_pb2.WatchResponse:
        if self._stream is not None and self._stream.cancelled():
            # A caller's timeout cancelled an earlier read, and gRPC cancels the
            # whole call with it. Nothing after next_revision was delivered.
            self._drop()
        try:
            if self._stream is None:
                await self._open()
            assert self._stream is not None
            response = await self._stream.read()
        except aio.AioRpcError as exc:
            raise _classify(exc, self._transport) from exc
        if not isinstance(response, rpc_pb2.WatchResponse):
            raise _Reconnect(EOFError("etcd ended the watch stream"))
        return response

    async def _open(self) -> None:
        await self._transport.authorize(rejected=self._transport.rejected())
        self._index, member = self._transport.current()
        request = rpc_pb2.WatchCreateRequest()
        request.CopyFrom(self._create)
        request.start_revision = self.next_revision
        self._stream = member.watch.Watch(metadata=self._transport.metadata())
        self._call = self._stream
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._stream.write(rpc_pb2.WatchRequest(create_request=request))
                created = await self._stream.read()
        except aio.AioRpcError as exc:
            raise _classify(exc, self._transport) from exc
        except (TimeoutError, asyncio.InvalidStateError) as exc:  # slow, or ended at once
            raise _Reconnect(exc) from exc
        if not isinstance(created, rpc_pb2.WatchResponse):
            raise _Reconnect(EOFError("etcd ended the watch stream before creating it"))
        self._accept(created)
        self._outage.ok()

    def _drop(self) -> None:
        super()._drop()
        self._stream = None

    def _accept(self, response: rpc_pb2.WatchResponse) -> WatchBatch | None:
        if response.canceled:
            self._closed = True
            self._drop()
            if response.compact_revision:
                raise EtcdCompacted(
                    f"watch from revision {self.next_revision} needs history that was "
                    f"compacted (compact revision {response.compact_revision})",
                    compact_revision=response.compact_revision,
                )
            raise EtcdWatchCanceled(f"etcd canceled the watch: {response.cancel_reason}")
        revision = response.header.revision
        if response.created:
            if self.next_revision == 0:  # watching from now: what follows is after this
                self.next_revision = revision + 1
            return None
        fresh = [e for e in response.events if e.kv.mod_revision >= self.next_revision]
        if response.events and not fresh:
            return None  # only repeats of what was delivered before a reconnect
        events = tuple(event_from_pb(e) for e in fresh)
        if events:
            self.next_revision = events[-1].revision + 1
        else:  # a progress report (etcd 3.4 sends them to caught-up watchers only)
            self.next_revision = max(self.next_revision, revision + 1)
        return WatchBatch(events, revision)


class Observer(_Stream):
    """The successive leaders (and their proclaimed values) of one election.

    etcd's Observe first reports the current leader, then each proclamation
    and each new leader. It says nothing while there is no leader. After a
    member failure the stream is opened again and the repeat of the last
    value seen is skipped.
    """

    def __init__(self, transport: Transport, name: bytes, *, timeout_s: float) -> None:
        self._transport = transport
        self._name = name
        self._outage = _Outage(transport, timeout_s, "election observe")
        self._stream: aio.UnaryStreamCall[election_pb2.LeaderRequest, election_pb2.LeaderResponse]
        self._stream_open = False
        self._index = 0
        self._last: KeyValue | None = None

    async def __anext__(self) -> KeyValue:
        while not self._closed:
            try:
                kv = await self._read()
            except _Reconnect as broken:
                self._drop()
                await self._outage.failed(self._index, broken.cause)
                continue
            self._outage.ok()
            last = self._last
            # A new leader's key may be older than the last proclamation, so only
            # the same key at the same or an older revision is a repeat.
            if last is None or kv.key != last.key or kv.mod_revision > last.mod_revision:
                self._last = kv
                return kv
        raise StopAsyncIteration

    async def _read(self) -> KeyValue:
        if self._stream_open and self._stream.cancelled():  # see Watcher._read
            self._drop()
        if not self._stream_open:
            await self._transport.authorize(rejected=self._transport.rejected())
            self._index, member = self._transport.current()
            request = election_pb2.LeaderRequest(name=self._name)
            self._stream = member.election.Observe(request, metadata=self._transport.metadata())
            self._call = self._stream
            self._stream_open = True
        try:
            response = await self._stream.read()
        except aio.AioRpcError as exc:
            raise _classify(exc, self._transport) from exc
        if not isinstance(response, election_pb2.LeaderResponse):
            raise _Reconnect(EOFError("etcd ended the observe stream"))
        return kv_from_pb(response.kv)

    def _drop(self) -> None:
        super()._drop()
        self._stream_open = False


async def keep_alive(
    transport: Transport,
    lease_id: int,
    ttl: float,
    *,
    timeout_s: float,
    on_renewed: Callable[[int], None] | None = None,
) -> NoReturn:
    """Renews `lease_id` every third of its TTL until cancelled.

    Raises EtcdLeaseLost when etcd says the lease is gone, or when it could
    not be renewed before its TTL (counted from the last renewal) ran out.
    Never returns otherwise.
    """
    expires_at = time.monotonic() + ttl
    attempt = 0
    while True:
        await transport.authorize(rejected=transport.rejected())
        index, member = transport.current()
        call = member.lease.LeaseKeepAlive(metadata=transport.metadata())
        try:
            while True:
                sent = time.monotonic()
                async with asyncio.timeout(min(timeout_s, max(expires_at - sent, 0.0))):
                    await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                    response = await call.read()
                if not isinstance(response, rpc_pb2.LeaseKeepAliveResponse):
                    break  # the member ended the stream: try the next one
                if response.TTL <= 0:
                    raise EtcdLeaseLost(lease_id, "etcd reports it expired or revoked")
                expires_at = sent + response.TTL
                attempt = 0
                if on_renewed is not None:
                    on_renewed(response.TTL)
                await asyncio.sleep(response.TTL / 3)
        except aio.AioRpcError as exc:
            error = _classify(exc, transport)
            if not isinstance(error, _Reconnect):
                raise error from exc
        except (TimeoutError, asyncio.InvalidStateError):
            pass  # no answer in time, or the stream ended before the write: reconnect
        finally:
            call.cancel()
        transport.failed(index)
        if time.monotonic() >= expires_at:
            raise EtcdLeaseLost(lease_id, f"not renewed within its TTL of {ttl}s")
        await asyncio.sleep(min(transport.pause(attempt), max(expires_at - time.monotonic(), 0)))
        attempt += 1


async def renew_once(transport: Transport, lease_id: int, *, timeout_s: float) -> int:
    """One keep-alive round trip on a stream of its own: the TTL (s) granted.

    A renewal is safe to repeat, so an unavailable member is skipped for the
    next one until `timeout_s` runs out (EtcdDeadline). Raises
    EtcdLeaseNotFound if etcd says the lease is gone.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        await transport.authorize(rejected=transport.rejected())
        index, member = transport.current()
        call = member.lease.LeaseKeepAlive(metadata=transport.metadata())
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                response = await call.read()
            if isinstance(response, rpc_pb2.LeaseKeepAliveResponse):
                if response.TTL <= 0:
                    raise EtcdLeaseNotFound(f"lease {lease_id:x} expired or was revoked")
                return int(response.TTL)
        except aio.AioRpcError as exc:
            error = _classify(exc, transport)
            if not isinstance(error, _Reconnect):
                raise error from exc
        except TimeoutError as exc:
            raise EtcdDeadline(f"lease renewal exceeded its deadline of {timeout_s}s") from exc
        except asyncio.InvalidStateError:
            pass  # the stream ended before the write: try the next member
        finally:
            call.cancel()
        transport.failed(index)
        pause = transport.pause(attempt)
        if time.monotonic() + pause >= deadline:
            raise EtcdUnavailable(f"no etcd member renewed lease {lease_id:x} in {timeout_s}s")
        await asyncio.sleep(pause)
        attempt += 1
