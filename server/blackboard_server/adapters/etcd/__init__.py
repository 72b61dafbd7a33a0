"""Blackboard's own async etcd v3 client (KV, watch, lease, lock, election) on grpc.aio."""

from blackboard_server.adapters.etcd.client import EtcdClient, LeaseKeeper
from blackboard_server.adapters.etcd.errors import (
    EtcdAuthFailed,
    EtcdCompacted,
    EtcdDeadline,
    EtcdError,
    EtcdLeaseLost,
    EtcdLeaseNotFound,
    EtcdNotLeader,
    EtcdTokenRejected,
    EtcdUnavailable,
    EtcdWatchCanceled,
)
from blackboard_server.adapters.etcd.model import (
    Compare,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaderKey,
    Lease,
    LeaseInfo,
    LockKey,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchBatch,
)
from blackboard_server.adapters.etcd.security import EtcdSecurity
from blackboard_server.adapters.etcd.streams import Observer, Watcher
from blackboard_server.adapters.etcd.transport import RetryPolicy

__all__ = [
    "Compare",
    "DeleteResult",
    "EtcdAuthFailed",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdDeadline",
    "EtcdError",
    "EtcdLeaseLost",
    "EtcdLeaseNotFound",
    "EtcdNotLeader",
    "EtcdSecurity",
    "EtcdTokenRejected",
    "EtcdUnavailable",
    "EtcdWatchCanceled",
    "Event",
    "EventType",
    "KeyValue",
    "LeaderKey",
    "Lease",
    "LeaseInfo",
    "LeaseKeeper",
    "LockKey",
    "Observer",
    "Op",
    "PutResult",
    "RangeResult",
    "RetryPolicy",
    "TxnResult",
    "WatchBatch",
    "Watcher",
]
