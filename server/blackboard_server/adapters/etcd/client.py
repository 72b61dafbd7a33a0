"""EtcdClient: the small async etcd v3 client Blackboard's coordinator uses.

    async with EtcdClient(["127.0.0.1:2379"], timeout_s=5) as etcd:
        await etcd.put("k", b"v")

Every call has a deadline (the client's `timeout_s` unless the call is given
its own) and ends in a result or an EtcdError, never a hang. Reads, lease
keep-alives and TTL queries and election leader queries are retried on the
next endpoint when a member is unavailable; writes, locks and campaigns are
not, since etcd may have applied them: they raise EtcdUnavailable and the
caller decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import NoReturn, Self, TypeVar

from grpc import aio

from blackboard.etcd import election_pb2, lock_pb2, rpc_pb2
from blackboard_server.adapters.etcd.errors import (
    EtcdError,
    EtcdLeaseLost,
    EtcdNoLeader,
)
from blackboard_server.adapters.etcd.model import (
    Compare,
    CreateOrder,
    DeleteResult,
    KeyLike,
    KeyValue,
    LeaderKey,
    Lease,
    LeaseInfo,
    LockKey,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    delete_from_pb,
    kv_from_pb,
    leader_key_from_pb,
    leader_key_to_pb,
    prefix_end,
    put_from_pb,
    range_from_pb,
    range_request,
    to_bytes,
    txn_from_pb,
)
from blackboard_server.adapters.etcd.security import NO_SECURITY, EtcdSecurity
from blackboard_server.adapters.etcd.streams import Observer, Watcher, keep_alive, renew_once
from blackboard_server.adapters.etcd.transport import Member, RetryPolicy, Transport

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class LeaseKeeper:
    """Handle of a running keep-alive: `lost` is set if the lease is lost."""

    def __init__(self, lease_id: int, ttl: int) -> None:
        self.lease_id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.error: EtcdLeaseLost | None = None
        self.renewals = 0

    def _renewed(self, ttl: int) -> None:
        self.ttl = ttl
        self.renewals += 1

    async def wait_lost(self) -> EtcdLeaseLost:
        await self.lost.wait()
        assert self.error is not None
        return self.error


class EtcdClient:
    """One client per process; safe to share between tasks of one event loop."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        security: EtcdSecurity = NO_SECURITY,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._security = security
        self._endpoints = tuple(endpoints)
        self._retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._transport: Transport | None = None

    async def __aenter__(self) -> Self:
        self._transport = Transport(self._endpoints, self._retry, self._security)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("EtcdClient is not open: use 'async with EtcdClient(...)'")
        return self._transport

    async def _call(
        self,
        pick: Callable[[Member], aio.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
    ) -> _Resp:
        return await self.transport.unary(
            pick, request, timeout_s=timeout_s or self.timeout_s, idempotent=idempotent
        )

    # ---- key-value ----------------------------------------------------------------

    async def get(self, key: KeyLike, *, revision: int = 0) -> KeyValue | None:
        result = await self._range(rpc_pb2.RangeRequest(key=to_bytes(key), revision=revision))
        return result.kvs[0] if result.kvs else None

    async def range(
        self,
        prefix: KeyLike,
        *,
        start: KeyLike | None = None,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        by_create: CreateOrder | None = None,
    ) -> RangeResult:
        """Keys under `prefix` in key order (or by create revision), from
        `start` (inclusive) if given."""
        p = to_bytes(prefix)
        request = range_request(
            to_bytes(start) if start is not None else p,
            prefix_end(p),
            limit=limit,
            revision=revision,
            keys_only=keys_only,
            count_only=count_only,
            by_create=by_create,
        )
        return await self._range(request)

    async def _range(self, request: rpc_pb2.RangeRequest) -> RangeResult:
        response = await self._call(lambda m: m.kv.Range, request, idempotent=True)
        return range_from_pb(response)

    async def put(
        self, key: KeyLike, value: bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> PutResult:
        request = rpc_pb2.PutRequest(key=to_bytes(key), value=value, lease=lease, prev_kv=prev_kv)
        return put_from_pb(await self._call(lambda m: m.kv.Put, request, idempotent=False))

    async def delete(
        self, key: KeyLike, *, prefix: bool = False, prev_kv: bool = False
    ) -> DeleteResult:
        k = to_bytes(key)
        request = rpc_pb2.DeleteRangeRequest(
            key=k, range_end=prefix_end(k) if prefix else b"", prev_kv=prev_kv
        )
        return delete_from_pb(
            await self._call(lambda m: m.kv.DeleteRange, request, idempotent=False)
        )

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        idempotent: bool = False,
    ) -> TxnResult:
        """All of `compare` hold → apply `success`, else `failure`; one revision.

        `idempotent`: the caller vouches that applying it twice is the same as
        once (e.g. "create if absent, else read"), so it is retried on the next
        member after UNAVAILABLE like a read.
        """
        request = rpc_pb2.TxnRequest(
            compare=[c.to_pb() for c in compare],
            success=[op.to_pb() for op in success],
            failure=[op.to_pb() for op in failure],
        )
        return txn_from_pb(await self._call(lambda m: m.kv.Txn, request, idempotent=idempotent))

    async def compact(self, revision: int, *, physical: bool = False) -> int:
        """Drops history before `revision`; returns the store revision."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        response = await self._call(lambda m: m.kv.Compact, request, idempotent=False)
        return response.header.revision

    # ---- leases -------------------------------------------------------------------

    async def grant(self, ttl: int, *, lease_id: int = 0) -> Lease:
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        response = await self._call(lambda m: m.lease.LeaseGrant, request, idempotent=False)
        if response.error:
            raise EtcdError(f"lease grant refused: {response.error}")
        return Lease(response.ID, response.TTL)

    async def revoke(self, lease_id: int) -> None:
        """Ends the lease and deletes its keys. Raises EtcdLeaseNotFound if it is gone."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        await self._call(lambda m: m.lease.LeaseRevoke, request, idempotent=False)

    async def time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseInfo | None:
        """The lease's remaining TTL, or None if it has expired or was revoked."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        response = await self._call(lambda m: m.lease.LeaseTimeToLive, request, idempotent=True)
        if response.TTL < 0:
            return None
        return LeaseInfo(response.ID, response.TTL, response.grantedTTL, tuple(response.keys))

    async def renew(self, lease_id: int) -> int:
        """One keep-alive round trip: the lease's TTL in seconds from now.

        Raises EtcdLeaseNotFound if the lease has expired or was revoked.
        """
        return await renew_once(self.transport, lease_id, timeout_s=self.timeout_s)

    async def keep_alive(
        self, lease_id: int, ttl: int, *, on_renewed: Callable[[int], None] | None = None
    ) -> NoReturn:
        """Keeps the lease alive until cancelled; raises EtcdLeaseLost if it is lost.

        Meant to run in the caller's TaskGroup, where losing the lease cancels
        the work that depended on it.
        """
        await keep_alive(
            self.transport, lease_id, ttl, timeout_s=self.timeout_s, on_renewed=on_renewed
        )

    @asynccontextmanager
    async def keepalive(self, lease_id: int, ttl: int) -> AsyncIterator[LeaseKeeper]:
        """Keeps the lease alive for the duration of the block.

        Loss does not cancel the block: it sets `keeper.lost` (and
        `keeper.error`), for the block to check or wait on.
        """
        keeper = LeaseKeeper(lease_id, ttl)

        async def run() -> None:
            try:
                await self.keep_alive(lease_id, ttl, on_renewed=keeper._renewed)
            except EtcdLeaseLost as lost:
                keeper.error = lost
            except EtcdError as error:  # e.g. refused by etcd: the lease will not be renewed
                keeper.error = EtcdLeaseLost(lease_id, str(error))
                keeper.error.__cause__ = error
            keeper.lost.set()

        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(run(), name=f"etcd-keepalive-{lease_id:x}")
            try:
                yield keeper
            finally:
                task.cancel()

    # ---- watches ------------------------------------------------------------------

    def watch(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> Watcher:
        """Changes of `key` (or of every key under it) from `start_revision`
        (inclusive; 0 = from now). Use as `async with etcd.watch(...) as w`."""
        k = to_bytes(key)
        create = rpc_pb2.WatchCreateRequest(
            key=k,
            range_end=prefix_end(k) if prefix else b"",
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
        return Watcher(self.transport, create, timeout_s=self.timeout_s)

    # ---- locks (etcd's v3lock service) --------------------------------------------

    async def lock(self, name: KeyLike, lease: int, *, timeout_s: float | None = None) -> LockKey:
        """Waits up to `timeout_s` to hold the lock `name` for `lease`.

        The lock is released by `unlock` or when the lease ends. Raises
        EtcdDeadline if the wait runs out (etcd then withdraws the request).
        etcd treats locking again with the same lease as the same acquisition,
        so after an EtcdUnavailable the caller can simply call `lock` again.
        """
        n = to_bytes(name)
        request = lock_pb2.LockRequest(name=n, lease=lease)
        response = await self._call(
            lambda m: m.lock.Lock, request, idempotent=False, timeout_s=timeout_s
        )
        # The fencing token is the lock key's create revision; etcd's reply does
        # not carry it, so read it back.
        kv = await self.get(response.key)
        if kv is None:
            raise EtcdLeaseLost(lease, "the lock key was gone before its fence could be read")
        return LockKey(name=n, key=response.key, fence=kv.create_revision, lease=lease)

    async def unlock(self, key: LockKey | bytes) -> None:
        k = key.key if isinstance(key, LockKey) else key
        await self._call(lambda m: m.lock.Unlock, lock_pb2.UnlockRequest(key=k), idempotent=False)

    # ---- elections (etcd's v3election service) ------------------------------------

    async def campaign(
        self, name: KeyLike, lease: int, value: bytes, *, timeout_s: float | None = None
    ) -> LeaderKey:
        """Waits up to `timeout_s` to lead election `name`, proclaiming `value`."""
        request = election_pb2.CampaignRequest(name=to_bytes(name), lease=lease, value=value)
        response = await self._call(
            lambda m: m.election.Campaign, request, idempotent=False, timeout_s=timeout_s
        )
        return leader_key_from_pb(response.leader)

    async def proclaim(self, leader: LeaderKey, value: bytes) -> None:
        """Raises EtcdNotLeader if `leader` no longer leads."""
        request = election_pb2.ProclaimRequest(leader=leader_key_to_pb(leader), value=value)
        await self._call(lambda m: m.election.Proclaim, request, idempotent=False)

    async def leader(self, name: KeyLike) -> KeyValue | None:
        """The current leader's key and value, or None when nobody leads."""
        request = election_pb2.LeaderRequest(name=to_bytes(name))
        try:
            response = await self._call(lambda m: m.election.Leader, request, idempotent=True)
        except EtcdNoLeader:
            return None
        return kv_from_pb(response.kv)

    def observe(self, name: KeyLike) -> Observer:
        """The election's leaders and proclamations as they happen."""
        return Observer(self.transport, to_bytes(name), timeout_s=self.timeout_s)

    async def resign(self, leader: LeaderKey) -> None:
        """Gives up leadership; a no-op if `leader` no longer leads."""
        request = election_pb2.ResignRequest(leader=leader_key_to_pb(leader))
        await self._call(lambda m: m.election.Resign, request, idempotent=False)


__all__ = ["EtcdClient", "LeaseKeeper"]
