"""Typed errors, decoded from the server's gRPC status.

    BlackboardError                 .code .reason .message .metadata
    ├── InvalidArgument             .violations
    │   └── RequestIdReused
    ├── NotFound
    │   ├── ConversationNotFound
    │   ├── KeyNotFound             .key
    │   ├── SessionNotFound         .session_id: the session was closed or expired
    │   └── NoHolder                nobody holds the lock or leads the role
    ├── AlreadyExists
    │   └── ConversationExists
    ├── FailedPrecondition
    │   ├── ConditionFailed         .key .current_version .current_mod_revision
    │   ├── Fenced                  .fence .token .current_token
    │   ├── NotJson                 .key
    │   ├── LockHeld                .name .holder_agent_id .token: try-once acquire of a held lock
    │   └── NotHolder               release/proclaim/resign without holding
    ├── Aborted
    │   └── RetriesExhausted
    ├── ResourceExhausted
    │   ├── LimitExceeded           .limit .value .maximum
    │   ├── QuotaExceeded           .quota .limit .value: a tenant quota
    │   │   └── RateLimited         .retry_after_ms: the tenant's request rate
    │   └── SlowSubscriber          .last_revision
    ├── OutOfRange
    │   └── RevisionCompacted       .revision .compact_revision
    ├── Unavailable                 (retried by RetryPolicy)
    │   ├── BackendUnavailable
    │   └── ShuttingDown            .last_revision
    ├── DeadlineExceeded
    │   └── WaitExpired             a lock or campaign wait ran out
    ├── Cancelled
    ├── Unauthenticated             check the token or client certificate
    │   ├── CredentialsMissing
    │   ├── CredentialsInvalid
    │   └── CredentialsExpired
    ├── PermissionDenied
    │   ├── RoleRequired            .role .conversation_id
    │   ├── TenantMismatch          .tenant
    │   └── MethodNotAllowed
    ├── InternalError               INTERNAL, UNKNOWN and anything else
    └── LockLost                    .name .token .why: the body of `async with lock` was
        └── LeadershipLost          cancelled because the lock or leadership was lost

`LockLost` is the SDK's own (defined with the holds, in `_holds.py`): the
server never sends it, so it has no reason and no place in `REASONS`.

The server attaches a google.rpc.Status whose ErrorInfo names a reason (the
proto's ErrorReason); `REASONS` maps every reason to its class. Without
details (a proxy, a refused connection) the status code picks the class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from blackboard.v1 import blackboard_pb2 as pb

DOMAIN = "blackboard.v1"
_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class BlackboardError(Exception):
    """Base of every error the SDK raises for a failed call."""

    code: ClassVar[str] = "UNKNOWN"
    reason: ClassVar[str] = "ERROR_REASON_UNSPECIFIED"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
        status: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.violations = violations
        # The status code the server actually sent, when it differs from `code`.
        self.status = status or self.code

    def _int(self, name: str) -> int:
        try:
            return int(self.metadata.get(name, "0"))
        except ValueError:
            return 0


class InvalidArgument(BlackboardError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_FIELD"


class RequestIdReused(InvalidArgument):
    reason = "REQUEST_ID_REUSED"


class NotFound(BlackboardError):
    code = "NOT_FOUND"


class ConversationNotFound(NotFound):
    reason = "CONVERSATION_NOT_FOUND"

    @property
    def conversation_id(self) -> str:
        return self.metadata.get("conversation", "")


class KeyNotFound(NotFound):
    reason = "KEY_NOT_FOUND"

    @property
    def key(self) -> str:
        return self.metadata.get("key", "")


class SessionNotFound(NotFound):
    reason = "SESSION_NOT_FOUND"

    @property
    def session_id(self) -> str:
        return self.metadata.get("session", "")


class NoHolder(NotFound):
    reason = "NO_HOLDER"


class AlreadyExists(BlackboardError):
    code = "ALREADY_EXISTS"


class ConversationExists(AlreadyExists):
    reason = "CONVERSATION_EXISTS"


class FailedPrecondition(BlackboardError):
    code = "FAILED_PRECONDITION"


class ConditionFailed(FailedPrecondition):
    """An expectation or a compare did not hold; nothing was written."""

    reason = "CONDITION_FAILED"

    @property
    def key(self) -> str:
        return self.metadata.get("key", "")

    @property
    def current_version(self) -> int:
        return self._int("current_version")

    @property
    def current_mod_revision(self) -> int:
        return self._int("current_mod_revision")


class Fenced(FailedPrecondition):
    reason = "FENCED"

    @property
    def fence(self) -> str:
        return self.metadata.get("fence", "")

    @property
    def token(self) -> int:
        return self._int("token")

    @property
    def current_token(self) -> int:
        return self._int("current_token")


class NotJson(FailedPrecondition):
    reason = "NOT_JSON"

    @property
    def key(self) -> str:
        return self.metadata.get("key", "")


class LockHeld(FailedPrecondition):
    reason = "LOCK_HELD"

    @property
    def name(self) -> str:
        return self.metadata.get("name", "")

    @property
    def holder_agent_id(self) -> str:
        return self.metadata.get("holder_agent_id", "")

    @property
    def token(self) -> int:
        """The token of the current holder."""
        return self._int("token")


class NotHolder(FailedPrecondition):
    reason = "NOT_HOLDER"


class Aborted(BlackboardError):
    code = "ABORTED"


class RetriesExhausted(Aborted):
    reason = "RETRIES_EXHAUSTED"


class ResourceExhausted(BlackboardError):
    code = "RESOURCE_EXHAUSTED"


class LimitExceeded(ResourceExhausted):
    reason = "LIMIT_EXCEEDED"

    @property
    def limit(self) -> str:
        return self.metadata.get("limit", "")

    @property
    def value(self) -> int:
        return self._int("value")

    @property
    def maximum(self) -> int:
        return self._int("maximum")


class QuotaExceeded(ResourceExhausted):
    """A tenant quota (conversations, entries, bytes, subscribers, sessions, rate)."""

    reason = "QUOTA_EXCEEDED"

    @property
    def quota(self) -> str:
        return self.metadata.get("quota", "")

    @property
    def limit(self) -> float:
        return float(self.metadata.get("limit", "0") or 0)

    @property
    def value(self) -> float:
        return float(self.metadata.get("value", "0") or 0)


class RateLimited(QuotaExceeded):
    reason = "RATE_LIMITED"

    @property
    def retry_after_ms(self) -> int:
        return self._int("retry_after_ms")


class SlowSubscriber(ResourceExhausted):
    reason = "SLOW_SUBSCRIBER"

    @property
    def last_revision(self) -> int:
        return self._int("last_revision")


class OutOfRange(BlackboardError):
    code = "OUT_OF_RANGE"


class RevisionCompacted(OutOfRange):
    reason = "REVISION_COMPACTED"

    @property
    def revision(self) -> int:
        return self._int("revision")

    @property
    def compact_revision(self) -> int:
        return self._int("compact_revision")


class Unavailable(BlackboardError):
    code = "UNAVAILABLE"


class BackendUnavailable(Unavailable):
    reason = "BACKEND_UNAVAILABLE"


class ShuttingDown(Unavailable):
    reason = "SHUTTING_DOWN"

    @property
    def last_revision(self) -> int:
        return self._int("last_revision")


class DeadlineExceeded(BlackboardError):
    code = "DEADLINE_EXCEEDED"


class WaitExpired(DeadlineExceeded):
    reason = "WAIT_EXPIRED"


class Cancelled(BlackboardError):
    code = "CANCELLED"


class Unauthenticated(BlackboardError):
    code = "UNAUTHENTICATED"


class CredentialsMissing(Unauthenticated):
    reason = "CREDENTIALS_MISSING"


class CredentialsInvalid(Unauthenticated):
    reason = "CREDENTIALS_INVALID"


class CredentialsExpired(Unauthenticated):
    reason = "CREDENTIALS_EXPIRED"


class PermissionDenied(BlackboardError):
    code = "PERMISSION_DENIED"


class RoleRequired(PermissionDenied):
    reason = "ROLE_REQUIRED"

    @property
    def role(self) -> str:
        return self.metadata.get("role", "")

    @property
    def conversation_id(self) -> str:
        return self.metadata.get("conversation", "")


class TenantMismatch(PermissionDenied):
    reason = "TENANT_MISMATCH"

    @property
    def tenant(self) -> str:
        return self.metadata.get("tenant", "")


class MethodNotAllowed(PermissionDenied):
    reason = "METHOD_NOT_ALLOWED"


class InternalError(BlackboardError):
    code = "INTERNAL"


def _leaves() -> dict[str, type[BlackboardError]]:
    found: dict[str, type[BlackboardError]] = {}
    pending: list[type[BlackboardError]] = [BlackboardError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "reason" in vars(cls):
            found[cls.reason] = cls
    return found


def _reason_table() -> Mapping[str, type[BlackboardError]]:
    by_reason = _leaves()
    table: dict[str, type[BlackboardError]] = {}
    for name in pb.ErrorReason.keys():  # noqa: SIM118 (an enum wrapper, not a dict)
        if name not in by_reason:
            raise RuntimeError(f"ErrorReason {name} has no SDK error class")
        table[name] = by_reason[name]
    return table


#: ErrorReason name -> class, one entry for every value of the proto enum.
REASONS: Mapping[str, type[BlackboardError]] = _reason_table()

#: Status code name -> class, for statuses that carry no ErrorInfo.
CODES: Mapping[str, type[BlackboardError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        OutOfRange,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unauthenticated,
        PermissionDenied,
        InternalError,
    )
}


def _class_for(code: str, reason: str) -> type[BlackboardError]:
    cls = REASONS.get(reason)
    if cls is not None and reason != "ERROR_REASON_UNSPECIFIED":
        return cls
    return CODES.get(code, InternalError)


def error_from_status(status: status_pb2.Status) -> BlackboardError:
    """Decodes a google.rpc.Status (code, message, ErrorInfo, BadRequest)."""
    code = grpc.StatusCode.UNKNOWN.name
    for candidate in grpc.StatusCode:
        if candidate.value[0] == status.code:
            code = candidate.name
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info) and info.domain == DOMAIN:
            reason = info.reason
            metadata.update(info.metadata)
        elif detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    cls = _class_for(code, reason)
    return cls(status.message, metadata=metadata, violations=tuple(violations), status=code)


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    try:
        found: status_pb2.Status | None = rpc_status.from_call(call)
        return found
    except ValueError:
        # Code or message differ from the details (a proxy rewrote them): the
        # details still say what happened.
        trailers = cast(Iterable[tuple[str, Any]], call.trailing_metadata() or ())
        for key, value in trailers:
            if key == _DETAILS_KEY:
                return status_pb2.Status.FromString(value)
        return None


def error_from_rpc(error: grpc.RpcError) -> BlackboardError:
    """The typed SDK error for a failed gRPC call (sync or grpc.aio)."""
    # Failed calls (sync and grpc.aio) are also grpc.Call: code, details, trailers.
    call = cast(grpc.Call, error)
    status = _rich_status(call)
    if status is not None:
        decoded = error_from_status(status)
    else:
        code = call.code()
        name = code.name if code is not None else "UNKNOWN"
        decoded = _class_for(name, "")(call.details() or name, status=name)
    decoded.__cause__ = error
    return decoded
