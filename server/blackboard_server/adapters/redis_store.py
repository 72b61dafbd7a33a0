"""The durable store: conversations, entries and change logs in Redis.

Every write is one Lua script (adapters/lua/commit.lua, a port of
domain/commit.py::plan), so checks, revision bump, apply, log append, trim,
idempotency record and (S)PUBLISH happen as one atomic step. All keys of a
conversation share one hash tag, so the scripts run unchanged on Redis
Cluster; the key layout is in redis_codec.py. Commits go through one
pipelined connection (redis_pipe.py); everything else through redis-py.

On a Redis Cluster (a redis+cluster:// URL) the same scripts run on the
primary owning the conversation's slot (redis_cluster.py). Notifications
(redis_notify.py) use plain pub/sub on one Redis and sharded pub/sub on a
cluster. They only wake readers: the log is the truth, so after any
(re)subscription the listener gets None for the conversation and reads the log.

Confirmed reads: when the pipe waits for replicas (durable mode with
replicas), every read a client can see also goes through the pipe, as a
script that writes one short-lived key of the conversation's own (`:c`)
besides reading. The WAIT the pipe sends after it then covers every write the
read saw, so a read returns only what the replicas have, and nothing a
failover could take back; one they do not confirm in time fails
BackendUnavailable. Notifications carry no event in that mode (they are
published before the write is confirmed): they only wake the hub, which reads
the log. docs/backends.md says what this guarantees and costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from blackboard_server.adapters import redis_codec as codec
from blackboard_server.adapters.memory import EXPIRY_AGENT
from blackboard_server.adapters.redis_access import RedisAccess
from blackboard_server.adapters.redis_cluster import ClusterPipe
from blackboard_server.adapters.redis_connect import open_redis, raise_if_transient
from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_notify import Notifications
from blackboard_server.adapters.redis_pipe import Arg, Script, ScriptPipe
from blackboard_server.domain import quota as quotas
from blackboard_server.domain.errors import (
    BackendUnavailable,
    ConversationExists,
    ConversationNotFound,
    Fenced,
    QuotaExceeded,
    RequestIdReused,
    RevisionCompacted,
    SessionNotFound,
)
from blackboard_server.domain.model import (
    CommitResult,
    Conversation,
    ConversationRef,
    Event,
    Snapshot,
    WriteBatch,
)
from blackboard_server.ports import Listener

log = structlog.get_logger("blackboard.redis")

# Larger events are announced with an empty payload; listeners read the log.
MAX_NOTIFY_PAYLOAD = 64 * 1024
_LUA = Path(__file__).with_name("lua")
_KEYS_CACHED = 4096  # conversations whose key names are kept, not rebuilt per call
_FAST = Durability()
CONNECTIONS = 64  # redis-py calls in flight at once (per node of a cluster)
POOL_SPARE = 16  # connections beyond those, for calls made outside the guard


class RedisStore:
    def __init__(
        self,
        client: Redis | RedisCluster,
        pipe: ScriptPipe | ClusterPipe,
        notifications: Notifications,
        *,
        retention: int,
        dedupe_window_ms: int,
        prefix: str,
        timeout_s: float,
        connections: int = CONNECTIONS,
    ) -> None:
        self._client = client
        # Calls through redis-py wait here for one of its connections: its pool
        # refuses ("Too many connections") rather than waits once all are taken.
        self._connections = asyncio.Semaphore(connections)
        self._pipe = pipe
        self._notifications = notifications
        self._retention = retention
        self._dedupe_window_ms = dedupe_window_ms
        self._prefix = prefix
        self._timeout_s = timeout_s
        # Notifications on a cluster are sharded: SPUBLISH reaches only the channel's shard.
        self._cluster = isinstance(client, RedisCluster)
        self._publish = "SPUBLISH" if self._cluster else "PUBLISH"
        self._ttl_index = f"{prefix}:ttl"
        # Conversations with an idle TTL, by a time no later than they go idle.
        self._idle_index = f"{prefix}:idle"
        self._known_keys: dict[ConversationRef, codec.Keys] = {}
        # Reads go through redis-py, or, confirmed, through the pipe; every
        # write through the pipe, which waits for replicas when durability asks it to.
        self._confirmed = pipe.waits
        self._max_payload = 0 if self._confirmed else MAX_NOTIFY_PAYLOAD
        self._reads = {
            name: Script.of(name, _source(name))
            for name in ("read", "events", "meta", "conversation")  # conversation: grants
        }
        self._scripts = {
            name: client.register_script(_source(name))
            for name in ("read", "events", "conversation")  # conversation: reading grants
        }
        self._writes = {
            name: Script.of(name, _source(name))
            for name in ("commit", "conversation", "expire", "index")
        }
        self._commit_script = self._writes["commit"]

    @classmethod
    async def connect(
        cls,
        url: str | RedisAccess,
        *,
        retention: int = 10_000,
        dedupe_window_ms: int = 86_400_000,
        prefix: str = "bb",
        timeout_s: float = 5.0,
        durability: Durability = _FAST,
        connections: int = CONNECTIONS,
    ) -> RedisStore:
        """Connects to one Redis or a cluster (redis_access.py lists the URLs).

        Raises BackendUnavailable when Redis cannot be reached, SettingsError
        when it refuses the credentials or is not configured for `durability`.
        """
        access = url if isinstance(url, RedisAccess) else RedisAccess.of(url)
        client, pipe, notifications = await open_redis(
            access, durability, timeout_s, connections + POOL_SPARE
        )
        return cls(
            client,
            pipe,
            notifications,
            retention=retention,
            dedupe_window_ms=dedupe_window_ms,
            prefix=prefix,
            timeout_s=timeout_s,
            connections=connections,
        )

    @property
    def confirmed(self) -> bool:
        """Whether reads return only what replicas confirmed (and notifications carry
        no event)."""
        return self._confirmed

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._notifications.aclose()
        await self._pipe.aclose()
        await self._client.aclose()

    @contextlib.asynccontextmanager
    async def _guard(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Bounds a call by the timeout and reports Redis trouble as BackendUnavailable."""
        try:
            async with (
                asyncio.timeout(self._timeout_s if timeout_s is None else timeout_s),
                self._connections,
            ):
                yield
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            # The pool's other idle connections were very likely cut by the same
            # outage: drop them, so one failed call per outage, not one per connection.
            # (A cluster client drops a failed node's connections itself.)
            if isinstance(self._client, Redis):
                await self._client.connection_pool.disconnect(inuse_connections=False)
            raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc
        except RedisClusterException as exc:  # no node owns a slot: the cluster is failing over
            raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc
        except ResponseError as exc:
            raise_if_transient(exc)
            raise
        except RedisError as exc:  # e.g. a cluster's redirections that never settled
            raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc

    async def _write(self, script: str, keys: Sequence[str], *args: Arg) -> Any:
        return await self._pipe.evalsha(self._writes[script], keys, *args)

    async def _index(self, op: str, index: str, member: str) -> None:
        await self._write("index", [index], op, member)

    async def _run(self, script: str, keys: Sequence[str], *args: object) -> Any:
        # AsyncScript re-loads the script when Redis answers NOSCRIPT (after a restart).
        return await self._scripts[script](keys=keys, args=args)  # type: ignore[arg-type]

    async def _read(self, script: str, keys: codec.Keys, names: Sequence[str], *args: Arg) -> Any:
        """A read script on the keys `names`, confirmed by the replicas when the pipe
        waits for them (the script then also writes keys.confirm)."""
        if not self._confirmed:
            return await self._run(script, names, *args)
        return await self._pipe.evalsha(
            self._reads[script], (*names, keys.confirm), *args, read=True
        )

    async def _meta(self, keys: codec.Keys, fields: Sequence[str]) -> list[Any]:
        if self._confirmed:
            return list(await self._read("meta", keys, [keys.meta], *fields))
        return list(await self._client.hmget(keys.meta, fields))

    def _keys(self, ref: ConversationRef) -> codec.Keys:
        keys = self._known_keys.get(ref)
        if keys is None:
            if len(self._known_keys) >= _KEYS_CACHED:
                self._known_keys.clear()
            keys = self._known_keys[ref] = codec.Keys.of(self._prefix, ref)
        return keys

    def _tenant_index(self, tenant: str) -> str:
        return f"{self._prefix}:conversations:{tenant}"

    # --- conversations --------------------------------------------------------

    async def create_conversation(
        self,
        ref: ConversationRef,
        metadata: dict[str, str],
        idle_ttl_ms: int,
        now_ms: int,
        *,
        max_conversations: int = 0,
    ) -> Conversation:
        keys, index = self._keys(ref), self._tenant_index(ref.tenant)
        packed = codec.pack_metadata(metadata)
        async with self._guard():
            # Indexed before it exists: a crash in between leaves an id that
            # listing skips, never a conversation that listing misses.
            await self._index("add", index, ref.id)
            if idle_ttl_ms > 0:  # the same for the idle sweep (expire_idle)
                await self._client.zadd(self._idle_index, {keys.tag: now_ms + idle_ttl_ms}, lt=True)
            created = await self._write(
                "conversation",
                (*keys.all, self._usage(keys)),
                "create",
                now_ms,
                idle_ttl_ms,
                packed,
                max_conversations,
            )
            if created == -1:
                await self._unindex(index, keys, ref)
            elif created:
                # A delete of the same id racing this create may have removed it.
                await self._index("add", index, ref.id)
        if created == -1:
            usage = await self.usage(ref.tenant)
            raise QuotaExceeded("conversations", max_conversations, usage.conversations + 1)
        if not created:
            raise ConversationExists(ref.id)
        return Conversation(ref, dict(metadata), now_ms, now_ms, idle_ttl_ms, 0, 0)

    async def _unindex(self, index: str, keys: codec.Keys, ref: ConversationRef) -> None:
        await self._index("remove", index, ref.id)
        # A create of the same id racing this must stay listed.
        if await self._client.exists(keys.meta):
            await self._index("add", index, ref.id)

    def _usage(self, keys: codec.Keys) -> str:
        """The usage hash the scripts keep: the tenant's on one Redis; on a cluster
        the conversation's own, as the tenant's lies in another slot."""
        return keys.own_usage if self._cluster else keys.usage

    async def usage(self, tenant: str) -> quotas.Usage:
        """On a cluster tenants' usage is not kept (docs/quotas.md): zeros."""
        async with self._guard():
            conversations, size = await self._client.hmget(
                codec.usage_key(self._prefix, tenant), ["conversations", "bytes"]
            )
        return quotas.Usage(int(conversations or 0), int(size or 0))

    async def get_conversation(self, ref: ConversationRef) -> Conversation:
        async with self._guard():
            fields = await self._meta(self._keys(ref), codec.META_FIELDS)
        conversation = codec.conversation(ref, fields)
        if conversation is None:
            raise ConversationNotFound(ref.id)
        return conversation

    async def list_conversations(
        self, tenant: str, after: str, limit: int
    ) -> tuple[list[Conversation], bool]:
        """Ids whose conversation is gone (a create or delete cut short) are skipped."""
        index = self._tenant_index(tenant)
        page: list[Conversation] = []
        cursor = after
        async with self._guard():
            while len(page) <= limit:
                wanted = limit + 1 - len(page)
                found = await self._client.zrangebylex(index, f"({cursor}", "+", 0, wanted)
                refs = [ConversationRef(tenant, codec.as_bytes(i).decode()) for i in found]
                async with self._client.pipeline(transaction=False) as pipe:
                    for ref in refs:
                        pipe.hmget(self._keys(ref).meta, codec.META_FIELDS)
                    metas = await pipe.execute()
                page.extend(
                    c
                    for ref, fields in zip(refs, metas, strict=True)
                    if (c := codec.conversation(ref, fields)) is not None
                )
                if len(refs) < wanted:
                    break
                cursor = refs[-1].id
        return page[:limit], len(page) > limit

    async def delete_conversation(self, ref: ConversationRef) -> None:
        keys = self._keys(ref)
        async with self._guard():
            deleted = await self._write(
                "conversation",
                (*keys.all, self._usage(keys)),
                "delete",
                keys.channel,
                self._publish,
            )
            if deleted:
                await self._forget(ref, keys)
        if not deleted:
            raise ConversationNotFound(ref.id)

    async def grants(self, ref: ConversationRef) -> dict[str, int]:
        async with self._guard():
            keys = self._keys(ref)
            reply = await self._read("conversation", keys, keys.all, "grants")
        if reply is None:
            raise ConversationNotFound(ref.id)
        flat = [codec.as_bytes(x).decode() for x in reply]
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def set_grant(self, ref: ConversationRef, subject: str, role: int) -> bool:
        async with self._guard():
            had = await self._write("conversation", self._keys(ref).all, "grant", subject, role)
        if had < 0:
            raise ConversationNotFound(ref.id)
        return bool(had)

    # --- writes ---------------------------------------------------------------

    async def commit(
        self,
        ref: ConversationRef,
        batch: WriteBatch,
        fingerprint: str,
        now_ms: int,
        quota: quotas.StoreQuota = quotas.UNLIMITED,
    ) -> CommitResult:
        keys = self._keys(ref)
        started = time.monotonic()
        try:
            # No guard: the pipe bounds every call by the timeout itself.
            reply = await self._pipe.evalsha(
                self._commit_script,
                # Confirmed, even a refused write's answer (a version, a fence) counts.
                (*keys.all, self._usage(keys), *((keys.confirm,) if self._confirmed else ())),
                codec.pack_batch(batch),
                fingerprint,
                now_ms,
                self._retention,
                self._dedupe_window_ms,
                keys.channel,
                self._max_payload,
                self._publish,
                quota.entries_per_conversation,
                quota.bytes,
            )
        except ResponseError as exc:
            raise_if_transient(exc)
            raise
        status = reply[0]
        if status == b"OK" and reply[3] >= 0:
            # What is left of the call's timeout, so the whole commit stays within it.
            async with self._guard(self._timeout_s - (time.monotonic() - started)):
                # After the commit, so the sweeper can never miss it (see expire_due).
                await self._client.zadd(self._ttl_index, {keys.tag: reply[3]}, lt=True)
        if status == b"NOTFOUND":
            raise ConversationNotFound(ref.id)
        if status == b"FENCED":
            assert batch.fence is not None
            raise Fenced(batch.fence.mark, batch.fence.token, reply[1])
        if status == b"REUSED":
            raise RequestIdReused(batch.request_id)
        if status == b"SESSION_ENDED":
            raise SessionNotFound(reply[1].decode())
        if status == b"QUOTA":
            raise QuotaExceeded(reply[1].decode(), reply[2], reply[3])
        return codec.unpack_result(reply[1], replayed=bool(reply[2]))

    async def expire_due(self, now_ms: int, limit: int) -> int:
        """Works through conversations by their earliest expiry.

        The index member is removed before the script runs and re-added (LT)
        with the expiry the script reports, while writers add (LT) after they
        commit: whichever order they interleave in, the index ends up with the
        earliest expiry. A process dying between removal and re-adding drops
        the conversation from the index until its next TTL write.
        """
        count = 0
        while count < limit:
            async with self._guard():
                due = await self._client.zrangebyscore(
                    self._ttl_index, "-inf", now_ms, 0, limit - count
                )
            before = count
            for member in due:
                if count < limit:
                    count += await self._expire_conversation(member, now_ms, limit - count)
            if count == before:  # nothing was due after all: the index was ahead
                break
        return count

    async def _expire_conversation(self, member: Any, now_ms: int, limit: int) -> int:
        keys = self._keys(codec.Keys.ref_of(member))
        async with self._guard():
            await self._client.zrem(self._ttl_index, member)
            deleted, following = await self._write(
                "expire",
                (*keys.named("m", "d", "k", "l", "x", "b"), self._usage(keys)),
                now_ms,
                limit,
                self._retention,
                keys.channel,
                self._max_payload,
                EXPIRY_AGENT,
                self._publish,
            )
            if following >= 0:
                await self._client.zadd(self._ttl_index, {member: following}, lt=True)
        return int(deleted)

    async def expire_idle(self, now_ms: int, limit: int) -> int:
        """Deletes the conversations whose idle TTL passed with no write.

        Writers do not touch the index: its time for a conversation is when it
        would go idle with no write after the last check, never later than the
        truth. The script decides from the conversation's own update time and
        says when to look again; the member moves only after that, so a process
        dying in between leaves it due, to be checked again.
        """
        async with self._guard():
            due = await self._client.zrangebyscore(self._idle_index, "-inf", now_ms, 0, limit)
        deleted = 0
        for member in due:
            deleted += await self._delete_if_idle(member, now_ms)
        return deleted

    async def _delete_if_idle(self, member: Any, now_ms: int) -> int:
        ref = codec.Keys.ref_of(member)
        keys = self._keys(ref)
        async with self._guard():
            idle_at = await self._write(
                "conversation",
                (*keys.all, self._usage(keys)),
                "idle",
                now_ms,
                keys.channel,
                self._publish,
            )
            if idle_at > 0:  # written to since: look again then
                await self._client.zadd(self._idle_index, {member: idle_at}, xx=True)
                return 0
            if idle_at < 0:
                await self._forget(ref, keys)
            else:  # gone already, or no idle TTL
                await self._client.zrem(self._idle_index, member)
        return 1 if idle_at < 0 else 0

    async def _forget(self, ref: ConversationRef, keys: codec.Keys) -> None:
        """Out of the indexes, once the conversation's keys are deleted."""
        await self._unindex(self._tenant_index(ref.tenant), keys, ref)
        await self._client.zrem(self._idle_index, keys.tag)

    # --- reads ----------------------------------------------------------------

    async def read(
        self, ref: ConversationRef, prefix: str, after: str, limit: int, *, exact: bool = False
    ) -> Snapshot:
        keys = self._keys(ref)
        raw_prefix = prefix.encode()
        if exact:
            bounds = (b"1", raw_prefix, b"")
        else:
            low = b"(" + after.encode() if after >= prefix else b"[" + raw_prefix
            # No UTF-8 key contains the byte 0xff, so it bounds every key under the prefix.
            bounds = (b"0", low, b"(" + raw_prefix + b"\xff" if prefix else b"+")
        async with self._guard():
            reply = await self._read("read", keys, keys.named("m", "d", "k"), *bounds, limit)
        if reply[0] == b"NOTFOUND":
            raise ConversationNotFound(ref.id)
        entries = tuple(codec.unpack_entry(raw) for raw in reply[4:])
        return Snapshot(entries, reply[1], reply[2], bool(reply[3]))

    async def events(
        self, ref: ConversationRef, start: int, end: int, limit: int
    ) -> tuple[Sequence[Event], int]:
        keys = self._keys(ref)
        async with self._guard():
            reply = await self._read("events", keys, keys.named("m", "l"), start, end, limit)
        if reply[0] == b"NOTFOUND":
            raise ConversationNotFound(ref.id)
        if reply[0] == b"COMPACTED":
            raise RevisionCompacted(start, reply[1])
        return [codec.unpack_event(raw) for raw in reply[3:]], reply[2]

    async def head(self, ref: ConversationRef) -> tuple[int, int]:
        async with self._guard():
            revision, compact = await self._meta(self._keys(ref), ("rev", "compact"))
        if revision is None or compact is None:
            raise ConversationNotFound(ref.id)
        return int(revision), int(compact)

    # --- notifications --------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        if self._confirmed:
            # A notification is published before its write is confirmed: never
            # pass its event on (another server, in fast mode, may send one).
            self._notifications.book.listeners.append(lambda ref, _: listener(ref, None))
        else:
            self._notifications.book.listeners.append(listener)

    async def watch(self, ref: ConversationRef) -> None:
        """Returns once Redis confirms the subscription.

        Every confirmation, including those after a reconnect, also calls the
        listener with None: events committed before it were not announced.
        """
        await self._notifications.watch(ref, self._keys(ref).channel)

    async def unwatch(self, ref: ConversationRef) -> None:
        """Local bookkeeping first: it never fails, even with Redis down."""
        await self._notifications.unwatch(self._keys(ref).channel)


def _source(name: str) -> str:
    return (_LUA / "common.lua").read_text() + (_LUA / f"{name}.lua").read_text()


__all__ = ["MAX_NOTIFY_PAYLOAD", "RedisStore"]
