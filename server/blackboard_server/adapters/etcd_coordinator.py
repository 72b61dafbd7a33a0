"""The Coordinator on etcd, for servers with several replicas.

    coordinator = await EtcdCoordinator.connect(["10.0.0.1:2379", "10.0.0.2:2379"])
    async with coordinator.running():  # replica lease, shard campaigns, observation watch
        ...
    await coordinator.aclose()

A session is an etcd lease with a key under the conversation; locks and
elections are queues of claims on the sessions' leases (etcd_coord/claims.py);
the key layout is in etcd_coord/keys.py, and what a replica records on its own
in etcd_coord/recorder.py. It behaves as the memory coordinator, the
executable specification, except that:

- TTLs are whole seconds. A session's TTL is rounded up to one (at least 1 s),
  and etcd may grant more (its minimum is 1.5 election timeouts): the TTL
  granted is the one in SessionInfo.ttl_ms and the one keep_alive returns. etcd
  checks leases every 500 ms, so a session ends up to ~0.5 s after its TTL.
- Every call is bounded: one without a wait returns or raises within
  `timeout_s`, an acquire within its wait plus `timeout_s`. etcd out of reach
  or without quorum for that long is BackendUnavailable.
- A claim that cannot be withdrawn because etcd is out of reach stays queued
  until its session ends; acquiring again with that session picks it up.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import structlog

from blackboard_server.adapters.etcd import (
    EtcdAuthFailed,
    EtcdClient,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdSecurity,
    Op,
    RangeResult,
    Watcher,
)
from blackboard_server.adapters.etcd_coord import claims
from blackboard_server.adapters.etcd_coord.keys import (
    ClaimKey,
    Layout,
    SessionKey,
    decode_session,
    encode_claim,
    encode_session,
    holder_of,
    lease_of,
    session_id_of,
)
from blackboard_server.adapters.etcd_coord.recorder import Recorder
from blackboard_server.domain.coordination import Census, Holder, SessionInfo
from blackboard_server.domain.errors import (
    BackendUnavailable,
    LockHeld,
    NotHolder,
    SessionNotFound,
    WaitExpired,
)
from blackboard_server.domain.model import ConversationRef, FenceKind, WriteBatch
from blackboard_server.domain.quota import check_count

log = structlog.get_logger("blackboard.etcd")
_AGENTS_CACHED = 4096
# How grpc reports a TLS connection that failed (a CA that does not match, a
# client certificate etcd wants and did not get): a refusal, not an outage.
_TLS_FAILURES = ("handshake", "ssl", "tsi_", "certificate")
_CENSUS_PAGE = 5000  # keys per etcd read when counting


class EtcdCoordinator:
    def __init__(self, etcd: EtcdClient, recorder: Recorder, keys: Layout) -> None:
        self._etcd = etcd
        self._recorder = recorder
        self._keys = keys
        self._timeout_s = etcd.timeout_s
        # A session's agent never changes: remembering it saves a read per acquire.
        self._agents: OrderedDict[tuple[ConversationRef, str], str] = OrderedDict()

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        prefix: str = "/bb",
        replica_id: str | None = None,
        shards: int = 8,
        replica_ttl_s: int = 5,
        security: EtcdSecurity | None = None,
    ) -> EtcdCoordinator:
        """No I/O yet: etcd may come up after the server does (see check_access)."""
        if shards < 1 or replica_ttl_s < 1:
            raise ValueError("shards and replica_ttl_s must be at least 1")
        client = EtcdClient(endpoints, timeout_s=timeout_s, security=security or EtcdSecurity())
        etcd = await client.__aenter__()
        keys = Layout(prefix)
        replica = replica_id or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        recorder = Recorder(etcd, keys, replica_id=replica, shards=shards, ttl_s=replica_ttl_s)
        return cls(etcd, recorder, keys)

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EtcdCoordinator]:
        async with self._recorder.running():
            yield self

    def observations(self) -> AsyncIterator[tuple[ConversationRef, WriteBatch]]:
        return self._recorder.observations()

    async def aclose(self) -> None:
        self._agents.clear()
        await self._etcd.aclose()

    @asynccontextmanager
    async def _bounded(self, seconds: float | None = None) -> AsyncIterator[None]:
        """Bounds a call and reports etcd trouble as BackendUnavailable."""
        limit = self._timeout_s if seconds is None else seconds
        try:
            async with asyncio.timeout(limit):
                yield
        except EtcdError as error:  # an etcd call's deadline (EtcdDeadline) too
            raise BackendUnavailable("etcd", str(error)) from error
        except TimeoutError as error:
            raise BackendUnavailable("etcd", f"no answer within {limit:g}s") from error

    # --- sessions ------------------------------------------------------------------------

    async def check_access(self) -> None:
        """One read under the prefix: raises EtcdAuthFailed when etcd refuses the
        credentials or the permission; an etcd out of reach is left for later."""
        try:
            await self._etcd.range(self._keys.root + "/", count_only=True)
        except EtcdAuthFailed:
            raise
        except EtcdError as exc:
            if any(sign in str(exc).lower() for sign in _TLS_FAILURES):
                raise EtcdAuthFailed(f"TLS with etcd failed: {exc}") from exc
            log.warning("etcd is not reachable yet; carrying on", error=str(exc))

    async def open_session(
        self, ref: ConversationRef, agent_id: str, ttl_ms: int, *, max_sessions: int = 0
    ) -> SessionInfo:
        tenant_sessions = self._keys.tenant_sessions(ref.tenant)
        async with self._bounded():
            if max_sessions:
                live = await self._etcd.range(tenant_sessions, count_only=True)
                check_count("sessions", max_sessions, live.count)
            lease = await self._etcd.grant(max(1, math.ceil(ttl_ms / 1000)))
            info = SessionInfo(ref, session_id_of(lease.id), agent_id, lease.ttl * 1000)
            session = self._keys.session(ref, info.session_id)
            # The tenant's index of sessions, on the same lease: counted by the quota.
            await self._etcd.txn(
                (),
                (
                    Op.put(session, encode_session(agent_id, info.ttl_ms), lease=lease.id),
                    Op.put(tenant_sessions + info.session_id.encode(), b"", lease=lease.id),
                ),
            )
        self._remember(info)
        return info

    async def keep_alive(self, ref: ConversationRef, session_id: str) -> int:
        lease = self._lease(session_id)
        async with self._bounded():
            # The key first: a session of another conversation is not renewed from here.
            if await self._etcd.get(self._keys.session(ref, session_id)) is None:
                raise SessionNotFound(session_id)
            try:
                return await self._etcd.renew(lease) * 1000
            except EtcdLeaseNotFound:
                raise SessionNotFound(session_id) from None

    async def close_session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        lease = self._lease(session_id)
        key = self._keys.session(ref, session_id)
        async with self._bounded():
            info = await self._session(ref, session_id)
            try:
                # Marked as closing first, so the recorder does not take the revoke for an expiry.
                closing = encode_session(info.agent_id, info.ttl_ms, closing=True)
                await self._etcd.put(key, closing, lease=lease)
                await self._etcd.revoke(lease)
            except EtcdLeaseNotFound:
                pass  # it expired meanwhile: gone all the same
        return info

    async def session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        self._lease(session_id)
        async with self._bounded():
            return await self._session(ref, session_id)

    async def sessions(self, ref: ConversationRef) -> list[SessionInfo]:
        async with self._bounded():
            found = await self._etcd.range(self._keys.sessions(ref))
        prefix = self._keys.sessions(ref)
        infos = [
            decode_session(ref, kv.key[len(prefix) :].decode(), kv.value)[0] for kv in found.kvs
        ]
        return sorted(infos, key=lambda s: s.session_id)

    async def _session(self, ref: ConversationRef, session_id: str) -> SessionInfo:
        kv = await self._etcd.get(self._keys.session(ref, session_id))
        if kv is None:
            raise SessionNotFound(session_id)
        info = decode_session(ref, session_id, kv.value)[0]
        self._remember(info)
        return info

    def _lease(self, session_id: str) -> int:
        lease = lease_of(session_id)
        if lease is None:
            raise SessionNotFound(session_id)
        return lease

    def _remember(self, info: SessionInfo) -> None:
        self._agents[info.ref, info.session_id] = info.agent_id
        self._agents.move_to_end((info.ref, info.session_id))
        while len(self._agents) > _AGENTS_CACHED:
            self._agents.popitem(last=False)

    async def _agent(self, ref: ConversationRef, session_id: str) -> str:
        agent = self._agents.get((ref, session_id))
        return agent if agent is not None else (await self._session(ref, session_id)).agent_id

    # --- locks and elections ------------------------------------------------------------

    async def held(self, ref: ConversationRef, session_id: str) -> list[Holder]:
        kinds = (FenceKind.LOCK, FenceKind.ELECTION)
        async with self._bounded():
            # One read of both kinds, so the answer is of one moment.
            result = await self._etcd.txn(
                [], [Op.get(self._keys.claims(ref, k), prefix=True) for k in kinds], idempotent=True
            )
        first: dict[tuple[FenceKind, str], Holder] = {}
        for response in result.responses:
            assert isinstance(response, RangeResult)
            for kv in response.kvs:
                what = self._keys.parse(kv.key)
                if isinstance(what, ClaimKey):
                    claim = holder_of(ref, what.kind, what.name, kv)
                    known = first.get((what.kind, what.name))
                    if known is None or claim.token < known.token:
                        first[what.kind, what.name] = claim
        return [h for _, h in sorted(first.items()) if h.session_id == session_id]

    async def acquire(
        self,
        ref: ConversationRef,
        kind: FenceKind,
        name: str,
        session_id: str,
        value: bytes,
        wait_ms: int,
    ) -> Holder:
        lease = self._lease(session_id)
        queue = self._keys.queue(ref, kind, name)
        key = queue + session_id.encode()
        loop = asyncio.get_running_loop()
        wait_until = loop.time() + wait_ms / 1000
        give_up_at = wait_until + self._timeout_s
        async with self._bounded(give_up_at - loop.time()):
            agent = await self._agent(ref, session_id)
            try:
                claimed = await claims.claim(
                    self._etcd,
                    queue,
                    key,
                    encode_claim(agent, value),
                    lease,
                    guard=self._keys.session(ref, session_id),
                )
            except EtcdLeaseNotFound:
                claimed = None
            if claimed is None:
                raise SessionNotFound(session_id)
            mine = holder_of(ref, kind, name, claimed.mine)
            if claimed.holds:
                return mine
            try:
                return await self._wait(queue, key, mine, wait_ms, wait_until)
            except claims.ClaimGone:
                raise SessionNotFound(session_id) from None
            except (LockHeld, WaitExpired):
                raise
            except BaseException:  # cancelled, or etcd failed: do not leave the claim queued
                with suppress(EtcdError, TimeoutError):
                    async with asyncio.timeout_at(give_up_at):
                        await claims.withdraw(self._etcd, key, mine.token)
                raise

    async def _wait(
        self, queue: bytes, key: bytes, mine: Holder, wait_ms: int, until: float
    ) -> Holder:
        if wait_ms > 0:
            waiting = asyncio.timeout_at(until)
            try:
                async with waiting:
                    await claims.wait_first(self._etcd, queue, key, mine.token)
                return mine
            except TimeoutError:
                if not waiting.expired():
                    raise  # an etcd call's deadline, not the wait's
        ahead = await claims.withdraw_unless_first(self._etcd, queue, key, mine.token)
        if ahead is None:
            return mine  # it came to hold just now: keep it
        if wait_ms == 0:
            holder = holder_of(mine.ref, mine.kind, mine.name, ahead)
            raise LockHeld(mine.name, holder.agent_id, holder.token)
        raise WaitExpired(mine.name, wait_ms)

    async def release(
        self, ref: ConversationRef, kind: FenceKind, name: str, session_id: str, token: int
    ) -> Holder:
        if lease_of(session_id) is None:
            raise NotHolder(name, token)
        queue = self._keys.queue(ref, kind, name)
        async with self._bounded():
            kv = await claims.release(self._etcd, queue, queue + session_id.encode(), token)
        if kv is None:
            raise NotHolder(name, token)
        return holder_of(ref, kind, name, kv)

    async def proclaim(
        self, ref: ConversationRef, name: str, session_id: str, token: int, value: bytes
    ) -> Holder:
        lease = lease_of(session_id)
        if lease is None:
            raise NotHolder(name, token)
        queue = self._keys.queue(ref, FenceKind.ELECTION, name)
        async with self._bounded():
            try:
                claim = encode_claim(await self._agent(ref, session_id), value)
                kv = await claims.update(
                    self._etcd, queue, queue + session_id.encode(), token, claim, lease
                )
            except (SessionNotFound, EtcdLeaseNotFound):
                kv = None
        if kv is None:
            raise NotHolder(name, token)
        return holder_of(ref, FenceKind.ELECTION, name, kv)

    async def census(self) -> Census:
        """Pages through every key under the conversations' root, keys only."""
        sessions = 0
        queues: set[tuple[ConversationRef, FenceKind, str]] = set()
        start, revision = self._keys.conversations, 0
        while True:
            async with self._bounded():
                page = await self._etcd.range(
                    self._keys.conversations,
                    start=start,
                    limit=_CENSUS_PAGE,
                    revision=revision,
                    keys_only=True,
                )
            revision = page.revision  # every page of one moment
            for kv in page.kvs:
                what = self._keys.parse(kv.key)
                if isinstance(what, SessionKey):
                    sessions += 1
                elif isinstance(what, ClaimKey):
                    queues.add((what.ref, what.kind, what.name))
            if not page.more or not page.kvs:
                break
            start = page.kvs[-1].key + b"\0"
        kinds = [kind for _, kind, _ in queues]
        return Census(sessions, kinds.count(FenceKind.LOCK), kinds.count(FenceKind.ELECTION))

    async def holder(self, ref: ConversationRef, kind: FenceKind, name: str) -> Holder | None:
        async with self._bounded():
            kv = await claims.first(self._etcd, self._keys.queue(ref, kind, name))
        return holder_of(ref, kind, name, kv) if kv is not None else None

    @asynccontextmanager
    async def observe(
        self, ref: ConversationRef, kind: FenceKind, name: str
    ) -> AsyncIterator[AsyncIterator[Holder | None]]:
        # The watch first, so that no change after the first read is missed.
        watch = self._etcd.watch(self._keys.queue(ref, kind, name), prefix=True)
        try:
            async with self._bounded():
                await watch.__aenter__()
            yield self._updates(ref, kind, name, watch)
        finally:
            await watch.aclose()

    async def _updates(
        self, ref: ConversationRef, kind: FenceKind, name: str, watch: Watcher
    ) -> AsyncIterator[Holder | None]:
        last: Holder | bool | None = False  # nothing sent yet
        while True:
            try:
                current = await self.holder(ref, kind, name)
            except BackendUnavailable:
                # Once more: a read that reached a member just as its leader died
                # waits out its deadline, and the next one finds the new leader.
                current = await self.holder(ref, kind, name)
            if current != last:
                last = current
                yield current
            try:  # no deadline: waiting for a change is the point
                await anext(watch)
            except StopAsyncIteration:
                return
            except EtcdError as error:  # no member served the watch for timeout_s
                raise BackendUnavailable("etcd", str(error)) from error
