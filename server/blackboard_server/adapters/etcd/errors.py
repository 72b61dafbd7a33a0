"""What can go wrong talking to etcd, as Python exceptions.

    EtcdError                 anything etcd or the connection to it reported
    ├── EtcdUnavailable       no member could serve the call (retryable; a write's
    │                         outcome is unknown)
    ├── EtcdDeadline          the call's deadline ran out (also a TimeoutError)
    ├── EtcdCompacted         the revision asked for is no longer retained
    ├── EtcdLeaseNotFound     the lease does not exist (expired or revoked)
    ├── EtcdLeaseLost         a kept-alive lease could not be renewed in time
    ├── EtcdNotLeader         an election call made with a key that no longer leads
    ├── EtcdWatchCanceled     etcd ended a watch for a reason other than compaction
    └── EtcdAuthFailed        etcd refused the user, the password or the permission
        └── EtcdTokenRejected the auth token expired or went stale: authenticate again

`from_rpc_error` is the one place a gRPC status becomes one of these.
"""

from __future__ import annotations

import grpc
from grpc import aio


class EtcdError(Exception):
    """Base class. `code` is the gRPC status name when the error came from a call."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No member answered, or the member lost its leader. Safe to retry reads;
    a write that failed this way may or may not have been applied."""


class EtcdDeadline(EtcdError, TimeoutError):
    """The call did not finish within its deadline."""


class EtcdCompacted(EtcdError):
    def __init__(self, message: str, *, compact_revision: int = 0, code: str = "") -> None:
        super().__init__(message, code=code)
        self.compact_revision = compact_revision


class EtcdLeaseNotFound(EtcdError):
    pass


class EtcdLeaseLost(EtcdError):
    def __init__(self, lease_id: int, reason: str) -> None:
        super().__init__(f"lease {lease_id:x} lost: {reason}")
        self.lease_id = lease_id
        self.reason = reason


class EtcdNotLeader(EtcdError):
    pass


class EtcdNoLeader(EtcdError):
    """The election has no leader (only raised internally; `leader()` returns None)."""


class EtcdWatchCanceled(EtcdError):
    pass


class EtcdAuthFailed(EtcdError):
    """Wrong or missing credentials, or a user without permission: not retryable."""


class EtcdTokenRejected(EtcdAuthFailed):
    pass


# etcd's own message texts for errors it sends with a generic status code
# (the v3lock and v3election services send them as UNKNOWN).
_BY_MESSAGE: tuple[tuple[str, type[EtcdError]], ...] = (
    ("requested lease not found", EtcdLeaseNotFound),
    ("election: not leader", EtcdNotLeader),
    ("election: no leader", EtcdNoLeader),
    ("has been compacted", EtcdCompacted),
    # a server-side wait (lock, campaign) that ran out of the deadline we sent
    ("context deadline exceeded", EtcdDeadline),
    # etcd's auth errors (rpctypes): the first two need a fresh token
    ("invalid auth token", EtcdTokenRejected),
    ("revision of auth store is old", EtcdTokenRejected),
    ("authentication failed", EtcdAuthFailed),
    ("user name is empty", EtcdAuthFailed),
    ("user name not found", EtcdAuthFailed),
    ("permission denied", EtcdAuthFailed),
)


_CORE_SEND_FAILED = "Internal error from Core"


def from_rpc_error(exc: aio.AioRpcError) -> EtcdError:
    code = exc.code()
    details = exc.details() or ""
    name = code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EtcdDeadline(f"etcd call exceeded its deadline: {details}", code=name)
    # grpc.aio reports a send on a connection that just broke as INTERNAL
    # "Internal error from Core": as far as etcd is concerned, the member is gone.
    if code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.INTERNAL and details == _CORE_SEND_FAILED
    ):
        return EtcdUnavailable(f"etcd unavailable: {details}", code=name)
    for text, kind in _BY_MESSAGE:
        if text in details:
            return kind(details, code=name)
    return EtcdError(f"etcd call failed ({name}): {details}", code=name)
