"""Domain errors. Each names the reason it reports (the proto's ErrorReason).

    BlackboardError
    ├── InvalidArgument          bad input; carries field violations
    │   └── RequestIdReused      the same request id for a different call
    ├── ConversationNotFound
    ├── KeyNotFound
    ├── ConversationExists
    ├── ConditionFailed          an expectation or compare did not hold
    ├── Fenced                   a newer token exists for the fence
    ├── NotJson                  Patch on a value that is not JSON
    ├── RetriesExhausted         an internal optimistic retry gave up
    ├── LimitExceeded            a configured limit on a request's size
    ├── QuotaExceeded            a tenant's quota: conversations, entries, bytes, ...
    │   └── RateLimited          the tenant's request rate
    ├── SlowSubscriber           a subscriber fell too far behind
    ├── RevisionCompacted        the revision is no longer retained
    ├── SessionNotFound          the session was closed or expired
    ├── NoHolder                 nobody holds the lock or leads the role
    ├── LockHeld                 a try-once acquire found the lock held
    ├── NotHolder                the session does not hold that lock or term
    ├── WaitExpired              a lock or campaign wait ran out
    ├── BackendUnavailable       Redis or etcd cannot be reached (retryable)
    ├── ShuttingDown             this replica is draining (retry elsewhere)
    ├── Unauthenticated          no credentials, or they were not accepted
    │   ├── CredentialsMissing
    │   ├── CredentialsInvalid
    │   └── CredentialsExpired
    └── PermissionDenied         the identity may not make this call
        ├── RoleRequired         it lacks the role on the conversation
        ├── TenantMismatch       it asked for another tenant
        └── MethodNotAllowed     no role may call the method

api/errors.py maps each class to a gRPC status; the SDK inverts that table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class BlackboardError(Exception):
    reason: ClassVar[str] = "ERROR_REASON_UNSPECIFIED"

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: Mapping[str, str] = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(BlackboardError):
    reason = "INVALID_FIELD"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}", field=field)
        self.violations: tuple[tuple[str, str], ...] = ((field, description),)


class RequestIdReused(InvalidArgument):
    reason = "REQUEST_ID_REUSED"

    def __init__(self, request_id: str) -> None:
        super().__init__("request_id", f"{request_id!r} was already used for a different call")


class ConversationNotFound(BlackboardError):
    reason = "CONVERSATION_NOT_FOUND"

    def __init__(self, conversation_id: str) -> None:
        super().__init__(
            f"conversation {conversation_id!r} not found", conversation=conversation_id
        )


class KeyNotFound(BlackboardError):
    reason = "KEY_NOT_FOUND"

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} not found", key=key)


class ConversationExists(BlackboardError):
    reason = "CONVERSATION_EXISTS"

    def __init__(self, conversation_id: str) -> None:
        super().__init__(
            f"conversation {conversation_id!r} already exists", conversation=conversation_id
        )


class ConditionFailed(BlackboardError):
    reason = "CONDITION_FAILED"

    def __init__(self, key: str, current_version: int, current_mod_revision: int) -> None:
        super().__init__(
            f"expectation on {key!r} failed: its version is {current_version}",
            key=key,
            current_version=current_version,
            current_mod_revision=current_mod_revision,
        )
        self.key = key
        self.current_version = current_version
        self.current_mod_revision = current_mod_revision


class Fenced(BlackboardError):
    reason = "FENCED"

    def __init__(self, fence: str, token: int, current_token: int) -> None:
        holder = f"the current holder's is {current_token}" if current_token else "nobody holds it"
        super().__init__(
            f"fence {fence!r}: token {token} is not the current holder's ({holder})",
            fence=fence,
            token=token,
            current_token=current_token,
        )
        self.current_token = current_token


class NotJson(BlackboardError):
    reason = "NOT_JSON"

    def __init__(self, key: str) -> None:
        super().__init__(f"value of {key!r} is not JSON", key=key)


class RetriesExhausted(BlackboardError):
    reason = "RETRIES_EXHAUSTED"


class LimitExceeded(BlackboardError):
    reason = "LIMIT_EXCEEDED"

    def __init__(self, limit: str, value: int, maximum: int) -> None:
        super().__init__(
            f"{limit}: {value} exceeds {maximum}", limit=limit, value=value, maximum=maximum
        )
        self.limit = limit


class QuotaExceeded(BlackboardError):
    reason = "QUOTA_EXCEEDED"

    def __init__(self, quota: str, limit: float, value: float, **extra: object) -> None:
        super().__init__(
            f"quota {quota} exceeded: {_number(value)} would pass the limit of {_number(limit)}",
            quota=quota,
            limit=_number(limit),
            value=_number(value),
            **extra,
        )
        self.quota = quota


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class RateLimited(QuotaExceeded):
    reason = "RATE_LIMITED"

    def __init__(self, rate: float, burst: int, retry_after_ms: int) -> None:
        super().__init__(
            "requests_per_second", rate, rate, burst=burst, retry_after_ms=retry_after_ms
        )
        self.message = (
            f"quota requests_per_second exceeded ({_number(rate)}/s, burst {burst}); "
            f"retry after {retry_after_ms} ms"
        )
        self.args = (self.message,)


class SlowSubscriber(BlackboardError):
    reason = "SLOW_SUBSCRIBER"

    def __init__(self, last_revision: int, lag: int) -> None:
        super().__init__(
            f"subscriber fell {lag} revisions behind; resume from {last_revision + 1}",
            last_revision=last_revision,
        )
        self.last_revision = last_revision


class RevisionCompacted(BlackboardError):
    reason = "REVISION_COMPACTED"

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {revision} is no longer retained (compacted up to {compact_revision})",
            revision=revision,
            compact_revision=compact_revision,
        )
        self.compact_revision = compact_revision


class SessionNotFound(BlackboardError):
    reason = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} was closed or has expired", session=session_id)


class NoHolder(BlackboardError):
    reason = "NO_HOLDER"

    def __init__(self, name: str) -> None:
        super().__init__(f"nobody holds {name!r}", name=name)


class LockHeld(BlackboardError):
    reason = "LOCK_HELD"

    def __init__(self, name: str, holder_agent_id: str, token: int) -> None:
        super().__init__(
            f"{name!r} is held by {holder_agent_id or 'another session'}",
            name=name,
            holder_agent_id=holder_agent_id,
            token=token,
        )


class NotHolder(BlackboardError):
    reason = "NOT_HOLDER"

    def __init__(self, name: str, token: int) -> None:
        super().__init__(
            f"this session does not hold {name!r} with token {token}", name=name, token=token
        )


class WaitExpired(BlackboardError):
    reason = "WAIT_EXPIRED"

    def __init__(self, name: str, waited_ms: int) -> None:
        super().__init__(f"gave up waiting for {name!r} after {waited_ms} ms", name=name)


class BackendUnavailable(BlackboardError):
    reason = "BACKEND_UNAVAILABLE"

    def __init__(self, backend: str, detail: str = "", *, outcome_unknown: bool = False) -> None:
        # outcome "unknown": a write may have happened (and may survive); retry it
        # with the same request id to learn its result.
        outcome = {"outcome": "unknown"} if outcome_unknown else {}
        super().__init__(f"{backend} is unavailable{': ' + detail if detail else ''}", **outcome)


class ShuttingDown(BlackboardError):
    reason = "SHUTTING_DOWN"

    def __init__(self, last_revision: int = 0) -> None:
        super().__init__(
            "server is shutting down; resume on another replica", last_revision=last_revision
        )


class Unauthenticated(BlackboardError):
    """Never says which part of a credential was wrong beyond missing/invalid/expired,
    and never carries the credential itself."""


class CredentialsMissing(Unauthenticated):
    reason = "CREDENTIALS_MISSING"

    def __init__(self) -> None:
        super().__init__("this call needs a bearer token or a client certificate")


class CredentialsInvalid(Unauthenticated):
    reason = "CREDENTIALS_INVALID"

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"credentials not accepted{': ' + detail if detail else ''}")


class CredentialsExpired(Unauthenticated):
    reason = "CREDENTIALS_EXPIRED"

    def __init__(self) -> None:
        super().__init__("the token has expired")


class PermissionDenied(BlackboardError):
    pass


class RoleRequired(PermissionDenied):
    reason = "ROLE_REQUIRED"

    def __init__(self, role: str, conversation_id: str) -> None:
        where = f"conversation {conversation_id!r}" if conversation_id else "the whole tenant"
        super().__init__(
            f"this call needs the {role} role on {where}",
            role=role,
            conversation=conversation_id,
        )


class TenantMismatch(PermissionDenied):
    reason = "TENANT_MISMATCH"

    def __init__(self, tenant: str) -> None:
        super().__init__(f"this identity does not belong to tenant {tenant!r}", tenant=tenant)


class MethodNotAllowed(PermissionDenied):
    reason = "METHOD_NOT_ALLOWED"

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} is not open to any role", method=method)
