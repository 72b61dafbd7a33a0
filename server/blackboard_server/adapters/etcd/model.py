"""Plain values the etcd client hands out and takes in, and their wire form.

Pure: no I/O. The client's public signatures use these, never the generated
protobuf classes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from blackboard.etcd import election_pb2, kv_pb2, rpc_pb2

KeyLike = str | bytes
CompareOp = Literal["==", "!=", "<", ">"]
# Sorting by create revision: the order of claims in a lock or election queue.
CreateOrder = Literal["ascend", "descend"]

_SORT_ORDER = {
    None: rpc_pb2.RangeRequest.NONE,
    "ascend": rpc_pb2.RangeRequest.ASCEND,
    "descend": rpc_pb2.RangeRequest.DESCEND,
}


def range_request(
    key: bytes,
    range_end: bytes = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    by_create: CreateOrder | None = None,
) -> rpc_pb2.RangeRequest:
    return rpc_pb2.RangeRequest(
        key=key,
        range_end=range_end,
        limit=limit,
        revision=revision,
        keys_only=keys_only,
        count_only=count_only,
        sort_order=_SORT_ORDER[by_create],
        sort_target=rpc_pb2.RangeRequest.CREATE if by_create else rpc_pb2.RangeRequest.KEY,
    )


def to_bytes(key: KeyLike) -> bytes:
    return key.encode() if isinstance(key, str) else key


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range_end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key is >= the prefix: range to the end of the keyspace


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    # For a delete, only kv.key and kv.mod_revision (the deleting revision) are set.
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more whole revisions, in order; `revision` is the
    store's revision when etcd sent them. A batch without events is a
    progress report: nothing up to `revision` is still to come."""

    events: tuple[Event, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()


OpResult = RangeResult | PutResult | DeleteResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # seconds, as granted by the server


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    id: int
    ttl: int  # seconds left
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class LockKey:
    """A held lock. `fence` is the lock key's create revision: it only grows."""

    name: bytes
    key: bytes
    fence: int
    lease: int


@dataclass(frozen=True, slots=True)
class LeaderKey:
    """A won election. `rev` is the leader key's create revision (the term token)."""

    name: bytes
    key: bytes
    rev: int
    lease: int


# ---- transactions: a small builder of compares and operations -------------------

_RESULTS = {
    "==": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a transaction, e.g. `Compare.version("k", "==", 0)` (key absent).

    With a `range_end` it must hold for every key in [key, range_end); over no
    keys it compares the absent key's zeros.
    """

    key: bytes
    target: Literal["version", "create", "mod", "value", "lease"]
    op: CompareOp
    operand: int | bytes
    range_end: bytes = b""

    @classmethod
    def version(cls, key: KeyLike, op: CompareOp, version: int) -> Compare:
        return cls(to_bytes(key), "version", op, version)

    @classmethod
    def create_revision(
        cls, key: KeyLike, op: CompareOp, revision: int, *, prefix: bool = False
    ) -> Compare:
        k = to_bytes(key)
        return cls(k, "create", op, revision, prefix_end(k) if prefix else b"")

    @classmethod
    def mod_revision(cls, key: KeyLike, op: CompareOp, revision: int) -> Compare:
        return cls(to_bytes(key), "mod", op, revision)

    @classmethod
    def value(cls, key: KeyLike, op: CompareOp, value: bytes) -> Compare:
        return cls(to_bytes(key), "value", op, value)

    @classmethod
    def lease(cls, key: KeyLike, op: CompareOp, lease_id: int) -> Compare:
        return cls(to_bytes(key), "lease", op, lease_id)

    def to_pb(self) -> rpc_pb2.Compare:
        pb = rpc_pb2.Compare(key=self.key, result=_RESULTS[self.op], range_end=self.range_end)
        if self.target == "value":
            if not isinstance(self.operand, bytes):
                raise TypeError("a value compare needs bytes")
            pb.target = rpc_pb2.Compare.VALUE
            pb.value = self.operand
            return pb
        if not isinstance(self.operand, int):
            raise TypeError(f"a {self.target} compare needs an int")
        if self.target == "version":
            pb.target, pb.version = rpc_pb2.Compare.VERSION, self.operand
        elif self.target == "create":
            pb.target, pb.create_revision = rpc_pb2.Compare.CREATE, self.operand
        elif self.target == "mod":
            pb.target, pb.mod_revision = rpc_pb2.Compare.MOD, self.operand
        else:
            pb.target, pb.lease = rpc_pb2.Compare.LEASE, self.operand
        return pb


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction: `Op.get`, `Op.put` or `Op.delete`."""

    kind: Literal["get", "put", "delete"]
    key: bytes
    range_end: bytes = b""
    value: bytes = b""
    lease: int = 0
    limit: int = 0
    by_create: CreateOrder | None = None

    @classmethod
    def get(
        cls,
        key: KeyLike,
        *,
        prefix: bool = False,
        limit: int = 0,
        by_create: CreateOrder | None = None,
    ) -> Op:
        k = to_bytes(key)
        return cls("get", k, prefix_end(k) if prefix else b"", limit=limit, by_create=by_create)

    @classmethod
    def put(cls, key: KeyLike, value: bytes, *, lease: int = 0) -> Op:
        return cls("put", to_bytes(key), value=value, lease=lease)

    @classmethod
    def delete(cls, key: KeyLike, *, prefix: bool = False) -> Op:
        k = to_bytes(key)
        return cls("delete", k, prefix_end(k) if prefix else b"")

    def to_pb(self) -> rpc_pb2.RequestOp:
        if self.kind == "get":
            return rpc_pb2.RequestOp(
                request_range=range_request(
                    self.key, self.range_end, limit=self.limit, by_create=self.by_create
                )
            )
        if self.kind == "put":
            return rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=self.key, value=self.value, lease=self.lease)
            )
        return rpc_pb2.RequestOp(
            request_delete_range=rpc_pb2.DeleteRangeRequest(key=self.key, range_end=self.range_end)
        )


# ---- from the wire ----------------------------------------------------------------


def kv_from_pb(pb: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        key=pb.key,
        value=pb.value,
        create_revision=pb.create_revision,
        mod_revision=pb.mod_revision,
        version=pb.version,
        lease=pb.lease,
    )


def event_from_pb(pb: kv_pb2.Event) -> Event:
    kind = EventType.DELETE if pb.type == kv_pb2.Event.DELETE else EventType.PUT
    prev = kv_from_pb(pb.prev_kv) if pb.HasField("prev_kv") else None
    return Event(kind, kv_from_pb(pb.kv), prev)


def range_from_pb(pb: rpc_pb2.RangeResponse) -> RangeResult:
    return RangeResult(
        kvs=tuple(kv_from_pb(kv) for kv in pb.kvs),
        revision=pb.header.revision,
        more=pb.more,
        count=pb.count,
    )


def put_from_pb(pb: rpc_pb2.PutResponse) -> PutResult:
    prev = kv_from_pb(pb.prev_kv) if pb.HasField("prev_kv") else None
    return PutResult(pb.header.revision, prev)


def delete_from_pb(pb: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(pb.header.revision, pb.deleted, tuple(kv_from_pb(kv) for kv in pb.prev_kvs))


def txn_from_pb(pb: rpc_pb2.TxnResponse) -> TxnResult:
    responses: list[OpResult] = []
    for op in pb.responses:
        which = op.WhichOneof("response")
        if which == "response_range":
            responses.append(range_from_pb(op.response_range))
        elif which == "response_put":
            responses.append(put_from_pb(op.response_put))
        else:
            responses.append(delete_from_pb(op.response_delete_range))
    return TxnResult(pb.succeeded, pb.header.revision, tuple(responses))


def leader_key_from_pb(pb: election_pb2.LeaderKey) -> LeaderKey:
    return LeaderKey(name=pb.name, key=pb.key, rev=pb.rev, lease=pb.lease)


def leader_key_to_pb(leader: LeaderKey) -> election_pb2.LeaderKey:
    return election_pb2.LeaderKey(
        name=leader.name, key=leader.key, rev=leader.rev, lease=leader.lease
    )
