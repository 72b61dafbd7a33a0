"""What this replica records: expiries and hand-overs seen in etcd, for the
conversations whose shard it leads.

Replicas register `{root}/replicas/{id}` on a lease of their own and campaign
with it for each of `shards` shards, in the same claim queues locks use. A
conversation's shard is crc32("tenant/conversation") % shards, so every
replica must be configured with the same number of shards. A replica whose
lease is lost drops its shards at once and campaigns again with a new lease.

One watch over every conversation (with prev_kv, so a deleted key still says
whose it was) turns deletions into the records the memory coordinator makes:

  session key deleted, not marked closing       → session_ended(expired)
  holding claim deleted, its session expired     → ended(expired), acquired(next)
  holding claim deleted otherwise                → acquired(next)

Whether a deleted claim held, and who holds after it, is read from its queue
at the deleting revision.

No record is lost when a shard changes hands: its leader writes down the
revision up to which its records have been taken by the consumer
(`{root}/progress/{k}`, every `save_every_s`), and the next leader starts from
there, rereading history. Records can therefore come twice (also after a
retry); they carry request ids derived from what they record, and the store
keeps each once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import structlog

from blackboard_server.adapters.etcd import (
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    Event,
    EventType,
    KeyValue,
    Op,
)
from blackboard_server.adapters.etcd_coord import claims
from blackboard_server.adapters.etcd_coord.keys import (
    ClaimKey,
    Layout,
    SessionKey,
    decode_session,
    holder_of,
    shard_of,
)
from blackboard_server.domain import coordination
from blackboard_server.domain.model import ConversationRef, WriteBatch

log = structlog.get_logger("blackboard.etcd")


@dataclass(eq=False, slots=True)
class _Lead:
    """This replica's leadership of one shard, from winning it to losing it."""

    claim: bytes
    token: int
    next: int  # the first revision whose records are not yet queued
    taken: int  # records up to this revision were taken by the consumer
    saved: int  # the progress written to etcd


@dataclass(frozen=True, slots=True)
class _Record:
    shard: int
    lead: _Lead
    revision: int
    ref: ConversationRef
    batch: WriteBatch


@dataclass(frozen=True, slots=True)
class _Mark:
    """Everything of these leads up to `revision` is queued before this."""

    leads: tuple[_Lead, ...]
    revision: int


class Recorder:
    def __init__(
        self,
        etcd: EtcdClient,
        keys: Layout,
        *,
        replica_id: str,
        shards: int,
        ttl_s: int = 5,
        save_every_s: float = 2.0,
        backlog: int = 1024,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self._etcd = etcd
        self._keys = keys
        self.replica_id = replica_id
        self._shards = shards
        self._ttl_s = ttl_s
        self._save_every_s = save_every_s
        self._led: dict[int, _Lead] = {}
        self._gained = asyncio.Event()
        # Bounded: a consumer that falls behind holds up the watch, not memory.
        self._queue: asyncio.Queue[_Record | _Mark] = asyncio.Queue(backlog)
        self._origin = 0  # where shards nobody recorded before start

    def leads(self) -> frozenset[int]:
        """The shards this replica records now."""
        return frozenset(self._led)

    def shard(self, ref: ConversationRef) -> int:
        return shard_of(ref, self._shards)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        with suppress(EtcdError):
            self._origin = await self._head() + 1
        async with asyncio.TaskGroup() as tasks:
            member = tasks.create_task(self._member_forever(), name="bb-etcd-member")
            watch = tasks.create_task(self._watch_forever(), name="bb-etcd-observe")
            saver = tasks.create_task(self._save_forever(), name="bb-etcd-progress")
            try:
                yield
            finally:
                watch.cancel()
                saver.cancel()
                with suppress(EtcdError, TimeoutError):
                    async with asyncio.timeout(self._etcd.timeout_s):
                        await self._save()
                member.cancel()  # revokes the lease: another replica takes over at once

    async def observations(self) -> AsyncIterator[tuple[ConversationRef, WriteBatch]]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Mark):
                for lead in item.leads:
                    lead.taken = max(lead.taken, item.revision)
                continue
            # Taking this one means everything before its revision was dealt with.
            item.lead.taken = max(item.lead.taken, item.revision - 1)
            if self._led.get(item.shard) is item.lead:  # not if the shard moved meanwhile
                yield item.ref, item.batch

    async def _head(self) -> int:
        return (await self._etcd.range(self._keys.conversations, count_only=True)).revision

    # ---- membership and shard campaigns ---------------------------------------------

    async def _member_forever(self) -> None:
        pause = 0.1
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await self._member()
            except* (EtcdError, claims.ClaimGone) as trouble:
                log.warning("replica lost its etcd lease or shards", error=repr(trouble))
            if asyncio.get_running_loop().time() - started > 10:
                pause = 0.1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _member(self) -> None:
        lease = await self._etcd.grant(self._ttl_s)
        try:
            value = json.dumps({"lease": f"{lease.id:016x}"}).encode()
            await self._etcd.put(self._keys.replica(self.replica_id), value, lease=lease.id)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._etcd.keep_alive(lease.id, lease.ttl))
                for shard in range(self._shards):
                    tasks.create_task(self._campaign(shard, lease.id))
        finally:
            self._led.clear()
            with suppress(EtcdError, TimeoutError):
                async with asyncio.timeout(self._etcd.timeout_s):
                    await self._etcd.revoke(lease.id)

    async def _campaign(self, shard: int, lease: int) -> None:
        queue = self._keys.shard_queue(shard)
        key = queue + f"{lease:016x}".encode()
        while True:
            claimed = await claims.claim(self._etcd, queue, key, self.replica_id.encode(), lease)
            assert claimed is not None  # no guard
            if not claimed.holds:
                await claims.wait_first(self._etcd, queue, key, claimed.token)
            progress = await self._etcd.get(self._keys.progress(shard))
            if not self._origin:  # etcd did not answer at start
                self._origin = await self._head() + 1
            # Nobody recorded this shard before: from this replica's start.
            done = int(progress.value) if progress else self._origin - 1
            lead = _Lead(key, claimed.token, next=done + 1, taken=done, saved=-1)
            self._led[shard] = lead
            self._gained.set()
            try:
                await self._until_deleted(key, claimed.token)
            finally:
                if self._led.get(shard) is lead:
                    del self._led[shard]

    async def _until_deleted(self, key: bytes, token: int) -> None:
        async with self._etcd.watch(key) as watch:
            kv = await self._etcd.get(key)
            if kv is None or kv.create_revision != token:
                return
            async for batch in watch:
                if any(e.type is EventType.DELETE for e in batch.events):
                    return

    async def _save_forever(self) -> None:
        while True:
            await asyncio.sleep(self._save_every_s)
            try:
                await self._save()
            except EtcdError as error:
                log.warning("could not save observation progress", error=str(error))

    async def _save(self) -> None:
        for shard, lead in list(self._led.items()):
            if lead.taken > lead.saved:
                taken = lead.taken
                # Only while this replica still leads the shard.
                await self._etcd.txn(
                    [Compare.create_revision(lead.claim, "==", lead.token)],
                    [Op.put(self._keys.progress(shard), str(taken).encode())],
                )
                lead.saved = taken

    # ---- the observation watch ---------------------------------------------------------

    async def _watch_forever(self) -> None:
        """Watches for the shards led; starts over (reaching back if need be)
        whenever a shard is gained."""
        while True:
            self._gained.clear()
            leads = dict(self._led)
            if not leads:
                await self._gained.wait()
                continue
            try:
                async with asyncio.TaskGroup() as tasks:
                    reader = tasks.create_task(self._read(leads))
                    await self._gained.wait()
                    reader.cancel()
            except* EtcdCompacted as compacted:
                error = compacted.exceptions[0]
                assert isinstance(error, EtcdCompacted)
                log.warning(
                    "observation history compacted: records may be missing",
                    compact_revision=error.compact_revision,
                )
                for lead in leads.values():
                    lead.next = max(lead.next, error.compact_revision)
            except* EtcdError as trouble:
                log.warning("observation watch failed; watching again", error=repr(trouble))
                await asyncio.sleep(0.5)

    async def _read(self, leads: dict[int, _Lead]) -> None:
        start = min(lead.next for lead in leads.values())
        async with self._etcd.watch(
            self._keys.conversations, prefix=True, prev_kv=True, start_revision=start
        ) as watch:
            async for batch in watch:
                for revision, events in itertools.groupby(batch.events, lambda e: e.revision):
                    try:
                        await self._observe(revision, list(events), leads)
                    except (ValueError, KeyError) as error:  # a value not written by us
                        log.error("cannot read a deleted key", revision=revision, error=repr(error))
                for lead in leads.values():
                    lead.next = max(lead.next, watch.next_revision)
                await self._queue.put(_Mark(tuple(leads.values()), watch.next_revision - 1))
        raise EtcdUnavailable("the observation watch ended")

    async def _observe(
        self, revision: int, events: Sequence[Event], leads: dict[int, _Lead]
    ) -> None:
        """The records one revision calls for, in the memory coordinator's order."""

        async def emit(ref: ConversationRef, batch: WriteBatch) -> None:
            shard = self.shard(ref)
            lead = leads.get(shard)
            if lead is not None and revision >= lead.next and self._led.get(shard) is lead:
                await self._queue.put(_Record(shard, lead, revision, ref, batch))

        deleted = [(e, self._keys.parse(e.kv.key)) for e in events if e.type is EventType.DELETE]
        ended: dict[tuple[ConversationRef, str], bool] = {}  # session → it was being closed
        for event, what in deleted:
            if isinstance(what, SessionKey) and event.prev_kv is not None:
                info, closing = decode_session(what.ref, what.session_id, event.prev_kv.value)
                ended[what.ref, what.session_id] = closing
                if not closing:
                    await emit(what.ref, coordination.session_ended(info, expired=True))
        for event, what in deleted:
            if not isinstance(what, ClaimKey) or event.prev_kv is None:
                continue
            shard = self.shard(what.ref)
            if shard not in leads or revision < leads[shard].next:
                continue  # not ours: spare etcd the read
            gone = holder_of(what.ref, what.kind, what.name, event.prev_kv)
            after = await self._first_at(self._keys.queue(what.ref, what.kind, what.name), revision)
            if after is not None and after.create_revision < gone.token:
                continue  # it was waiting, not holding
            if ended.get((what.ref, what.session_id)) is False:
                await emit(what.ref, coordination.ended(gone, expired=True))
            if after is not None:
                holder = holder_of(what.ref, what.kind, what.name, after)
                await emit(what.ref, coordination.acquired(holder))

    async def _first_at(self, queue: bytes, revision: int) -> KeyValue | None:
        try:
            return await claims.first(self._etcd, queue, revision=revision)
        except EtcdCompacted:
            return await claims.first(self._etcd, queue)  # the best there is now
