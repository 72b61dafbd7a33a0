"""Queues of claims in etcd: the one mechanism behind locks, elections and the
replicas' shard campaigns.

A claim is a key `{queue}{owner}` put on the owner's lease. Its create
revision is its token, so tokens only grow; the claim with the smallest create
revision holds and the others wait for every claim ahead of them to go. A
claim goes when it is released or withdrawn, or when its lease ends.

Not etcd's v3lock/v3election services: a lock hand-off there waits ~100 ms
(etcd 3.4 serves the waiter from a watch that starts at a past revision, and
such watches catch up in a 100 ms loop), and Observe never says "no leader".
Here a waiter watches its queue from *now* (a synced watch delivers in about a
millisecond), then reads who is ahead of it, then drops each one as the watch
reports it deleted: the hand-off is one watch event, with no read after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from blackboard_server.adapters.etcd import (
    Compare,
    EtcdClient,
    EtcdCompacted,
    EtcdUnavailable,
    EventType,
    KeyValue,
    Op,
    RangeResult,
)


class ClaimGone(Exception):
    """The claim was deleted (its lease ended, or it was withdrawn) while in use."""


@dataclass(frozen=True, slots=True)
class Claimed:
    mine: KeyValue  # the claim as stored
    first: KeyValue  # the claim that holds: maybe mine

    @property
    def token(self) -> int:
        return self.mine.create_revision

    @property
    def holds(self) -> bool:
        return self.first.key == self.mine.key


def _first_op(queue: bytes) -> Op:
    return Op.get(queue, prefix=True, limit=1, by_create="ascend")


def _kvs(result: object) -> tuple[KeyValue, ...]:
    assert isinstance(result, RangeResult)
    return result.kvs


async def claim(
    etcd: EtcdClient,
    queue: bytes,
    key: bytes,
    value: bytes,
    lease: int,
    *,
    guard: bytes | None = None,
) -> Claimed | None:
    """Creates the claim `key`, or finds the one already there (whose value stays).

    None if `guard`, a key that must exist, does not. Raises EtcdLeaseNotFound
    if `lease` is gone. Safe to retry, so it is retried like a read.
    """
    compares = [Compare.create_revision(key, "==", 0)]
    failure = [Op.get(key), _first_op(queue)]
    if guard is not None:
        compares.append(Compare.version(guard, ">", 0))
        failure.append(Op.get(guard))
    while True:
        result = await etcd.txn(
            compares,
            [Op.put(key, value, lease=lease), Op.get(key), _first_op(queue)],
            failure,
            idempotent=True,
        )
        if result.succeeded:
            mine, holder = _kvs(result.responses[1]), _kvs(result.responses[2])
        elif guard is not None and not _kvs(result.responses[2]):
            return None
        else:
            mine, holder = _kvs(result.responses[0]), _kvs(result.responses[1])
        if mine and holder:
            return Claimed(mine[0], holder[0])
        # The claim went between the compare and the read: claim again.


async def first(etcd: EtcdClient, queue: bytes, *, revision: int = 0) -> KeyValue | None:
    """The claim that holds (at `revision`, if given), or None."""
    result = await etcd.range(queue, limit=1, by_create="ascend", revision=revision)
    return result.kvs[0] if result.kvs else None


async def wait_first(etcd: EtcdClient, queue: bytes, key: bytes, token: int) -> None:
    """Returns once the claim `key` (created at `token`) holds; ClaimGone if it goes.

    No deadline of its own: the caller bounds the wait.
    """
    while True:
        try:
            return await _wait_first(etcd, queue, key, token)
        except EtcdCompacted:
            continue  # the watch fell behind a compaction while reconnecting: look again


async def _wait_first(etcd: EtcdClient, queue: bytes, key: bytes, token: int) -> None:
    async with etcd.watch(queue, prefix=True) as watch:
        # The watch exists before the read, so nothing deleted after the read is missed.
        now = await etcd.range(queue, keys_only=True)
        if not any(kv.key == key and kv.create_revision == token for kv in now.kvs):
            raise ClaimGone(key.decode())
        ahead = {kv.key for kv in now.kvs if kv.create_revision < token}
        # Claims made after ours can never be ahead of it, so only deletes matter.
        while ahead:
            try:
                batch = await anext(watch)
            except StopAsyncIteration:
                raise EtcdUnavailable("the watch on the queue ended") from None
            for event in batch.events:
                if event.revision <= now.revision or event.type is not EventType.DELETE:
                    continue
                if event.kv.key == key:
                    raise ClaimGone(key.decode())
                ahead.discard(event.kv.key)


async def withdraw_unless_first(
    etcd: EtcdClient, queue: bytes, key: bytes, token: int
) -> KeyValue | None:
    """Deletes the claim unless it holds. Returns the claim that holds instead
    of it, or None if it holds (and is kept). ClaimGone if it is gone already.

    The delete is guarded by the holder's claim, so a claim that came to hold
    a moment ago is never thrown away.
    """
    while True:
        holder = await first(etcd, queue)
        if holder is None:
            raise ClaimGone(key.decode())
        if holder.key == key:
            return None
        result = await etcd.txn(
            [
                Compare.create_revision(key, "==", token),
                Compare.create_revision(holder.key, "==", holder.create_revision),
            ],
            [Op.delete(key)],
            [Op.get(key)],
        )
        if result.succeeded:
            return holder
        if not _kvs(result.responses[0]):
            raise ClaimGone(key.decode())
        # The holder changed meanwhile: look again.


async def withdraw(etcd: EtcdClient, key: bytes, token: int) -> None:
    """Deletes the claim if it is still the one created at `token`."""
    await etcd.txn([Compare.create_revision(key, "==", token)], [Op.delete(key)])


def _holds(queue: bytes, key: bytes, token: int) -> list[Compare]:
    # Every claim in the queue is this one or younger: it holds.
    return [
        Compare.create_revision(key, "==", token),
        Compare.create_revision(queue, ">", token - 1, prefix=True),
    ]


async def release(etcd: EtcdClient, queue: bytes, key: bytes, token: int) -> KeyValue | None:
    """Deletes the claim if it holds with `token`: the claim as it was, else None."""
    result = await etcd.txn(_holds(queue, key, token), [Op.get(key), Op.delete(key)])
    return _kvs(result.responses[0])[0] if result.succeeded else None


async def update(
    etcd: EtcdClient, queue: bytes, key: bytes, token: int, value: bytes, lease: int
) -> KeyValue | None:
    """Sets the claim's value if it holds with `token` (on the same lease), else None."""
    result = await etcd.txn(
        _holds(queue, key, token), [Op.put(key, value, lease=lease), Op.get(key)]
    )
    return _kvs(result.responses[1])[0] if result.succeeded else None
