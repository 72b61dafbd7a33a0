"""The SDK's error table: every ErrorReason has a class, and statuses decode to it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client._errors import CODES, error_from_rpc, error_from_status
from blackboard_server.api import errors as server_errors
from blackboard_server.domain import errors as domain


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _status(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    domain_name: str = "blackboard.v1",
    violations: tuple[tuple[str, str], ...] = (),
) -> status_pb2.Status:
    details = []
    if reason:
        info = error_details_pb2.ErrorInfo(
            reason=reason, domain=domain_name, metadata=metadata or {}
        )
        details.append(_any(info))
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        details.append(_any(bad))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def test_every_error_reason_maps_to_a_class_of_that_reason() -> None:
    assert set(bb.REASONS) == set(pb.ErrorReason.keys())
    for name, cls in bb.REASONS.items():
        assert issubclass(cls, bb.BlackboardError)
        assert cls.reason == name
    assert bb.REASONS["ERROR_REASON_UNSPECIFIED"] is bb.BlackboardError


def test_reason_classes_are_distinct_and_exported() -> None:
    classes = [cls for name, cls in bb.REASONS.items() if name != "ERROR_REASON_UNSPECIFIED"]
    assert len(set(classes)) == len(classes)
    for cls in classes:
        assert getattr(bb, cls.__name__) is cls
        assert cls.__name__ in bb.__all__


def test_the_sdk_table_inverts_the_servers_table() -> None:
    for server_cls, code in server_errors.TABLE:
        sdk_cls = bb.REASONS[server_cls.reason]
        assert sdk_cls.code == code.name, server_cls
        assert sdk_cls.__name__ == server_cls.__name__


SERVER_ERRORS: list[domain.BlackboardError] = [
    domain.InvalidArgument("key", "must not be empty"),
    domain.RequestIdReused("r-1"),
    domain.ConversationNotFound("c-1"),
    domain.KeyNotFound("tasks/1"),
    domain.ConversationExists("c-1"),
    domain.ConditionFailed("tasks/1", 3, 17),
    domain.Fenced("lock:jobs", 4, 9),
    domain.NotJson("blob"),
    domain.RetriesExhausted("patch gave up"),
    domain.LimitExceeded("max_value_bytes", 2000, 1000),
    domain.QuotaExceeded("conversations", 10, 11),
    domain.RateLimited(2.5, 5, 400),
    domain.SlowSubscriber(41, 10_000),
    domain.RevisionCompacted(5, 90),
    domain.BackendUnavailable("redis", "connection refused"),
    domain.ShuttingDown(12),
    domain.SessionNotFound("00000000000000ab"),
    domain.NoHolder("task/42"),
    domain.LockHeld("task/42", "worker-2", 1234),
    domain.NotHolder("task/42", 1200),
    domain.WaitExpired("task/42", 5000),
    domain.CredentialsMissing(),
    domain.CredentialsInvalid("wrong audience"),
    domain.CredentialsExpired(),
    domain.RoleRequired("admin", "c-1"),
    domain.TenantMismatch("acme"),
    domain.MethodNotAllowed("/x.Y/Z"),
]


def test_the_server_errors_cover_every_reason() -> None:
    reasons = {error.reason for error in SERVER_ERRORS} | {"ERROR_REASON_UNSPECIFIED"}
    assert reasons == set(pb.ErrorReason.keys())


@pytest.mark.parametrize("error", SERVER_ERRORS, ids=lambda e: type(e).__name__)
def test_a_status_the_server_sends_decodes_to_the_same_class(
    error: domain.BlackboardError,
) -> None:
    sent = server_errors.to_status(error)
    status = status_pb2.Status.FromString(dict(sent.trailing_metadata)["grpc-status-details-bin"])
    decoded = error_from_status(status)
    assert type(decoded).__name__ == type(error).__name__
    assert decoded.message == error.message
    assert decoded.status == sent.code.name
    assert dict(decoded.metadata) == dict(error.metadata)


def test_condition_failed_carries_the_current_version() -> None:
    sent = server_errors.to_status(domain.ConditionFailed("tasks/1", 3, 17))
    error = error_from_status(rpc_status_of(sent))
    assert isinstance(error, bb.ConditionFailed)
    assert isinstance(error, bb.FailedPrecondition)
    assert (error.key, error.current_version, error.current_mod_revision) == ("tasks/1", 3, 17)


def test_quota_errors_name_the_quota_and_its_limit() -> None:
    error = error_from_status(
        rpc_status_of(
            server_errors.to_status(domain.QuotaExceeded("bytes", 1 << 30, (1 << 30) + 7))
        )
    )
    assert isinstance(error, bb.QuotaExceeded) and isinstance(error, bb.ResourceExhausted)
    assert (error.quota, error.limit, error.value) == ("bytes", 1 << 30, (1 << 30) + 7)
    limited = error_from_status(
        rpc_status_of(server_errors.to_status(domain.RateLimited(2.5, 5, 400)))
    )
    assert isinstance(limited, bb.RateLimited) and isinstance(limited, bb.QuotaExceeded)
    assert (limited.quota, limited.limit, limited.retry_after_ms) == (
        "requests_per_second",
        2.5,
        400,
    )
    assert limited.metadata["burst"] == "5"


def rpc_status_of(sent: grpc.Status) -> status_pb2.Status:
    return status_pb2.Status.FromString(dict(sent.trailing_metadata)["grpc-status-details-bin"])


def test_typed_fields_of_the_other_errors() -> None:
    fenced = error_from_status(rpc_status_of(server_errors.to_status(domain.Fenced("jobs", 4, 9))))
    assert isinstance(fenced, bb.Fenced)
    assert (fenced.fence, fenced.token, fenced.current_token) == ("jobs", 4, 9)

    slow = error_from_status(rpc_status_of(server_errors.to_status(domain.SlowSubscriber(41, 5))))
    assert isinstance(slow, bb.SlowSubscriber) and isinstance(slow, bb.ResourceExhausted)
    assert slow.last_revision == 41

    gone = error_from_status(
        rpc_status_of(server_errors.to_status(domain.RevisionCompacted(5, 90)))
    )
    assert isinstance(gone, bb.RevisionCompacted)
    assert (gone.revision, gone.compact_revision) == (5, 90)

    draining = error_from_status(rpc_status_of(server_errors.to_status(domain.ShuttingDown(12))))
    assert isinstance(draining, bb.ShuttingDown) and isinstance(draining, bb.Unavailable)
    assert draining.last_revision == 12


def test_bad_request_details_become_field_violations() -> None:
    status = _status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "two bad fields",
        "INVALID_FIELD",
        violations=(("key", "must not be empty"), ("ttl_ms", "must not be negative")),
    )
    error = error_from_status(status)
    assert isinstance(error, bb.InvalidArgument)
    assert error.violations == (
        bb.FieldViolation("key", "must not be empty"),
        bb.FieldViolation("ttl_ms", "must not be negative"),
    )


def test_an_error_info_of_another_domain_is_ignored() -> None:
    status = _status(grpc.StatusCode.NOT_FOUND, "nope", "KEY_NOT_FOUND", domain_name="other.v1")
    error = error_from_status(status)
    assert type(error) is bb.NotFound


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, bb.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, bb.DeadlineExceeded),
        (grpc.StatusCode.NOT_FOUND, bb.NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, bb.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, bb.Unauthenticated),
        (grpc.StatusCode.CANCELLED, bb.Cancelled),
        (grpc.StatusCode.INTERNAL, bb.InternalError),
        (grpc.StatusCode.UNKNOWN, bb.InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, bb.InternalError),
    ],
)
def test_without_details_the_status_code_picks_the_class(
    code: grpc.StatusCode, expected: type[bb.BlackboardError]
) -> None:
    failed = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="plain status"
    )
    error = error_from_rpc(failed)
    assert type(error) is expected
    assert error.message == "plain status"
    assert error.status == code.name
    assert error.__cause__ is failed


def test_an_rpc_error_with_details_decodes_through_the_trailer() -> None:
    sent = rpc_status.to_status(
        _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "expectation failed",
            "CONDITION_FAILED",
            {"key": "a", "current_version": "2", "current_mod_revision": "7"},
        )
    )
    failed = grpc.aio.AioRpcError(
        sent.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*sent.trailing_metadata),
        details=sent.details,
    )
    error = error_from_rpc(failed)
    assert isinstance(error, bb.ConditionFailed)
    assert (error.key, error.current_version, error.current_mod_revision) == ("a", 2, 7)


def test_details_still_decode_when_a_proxy_rewrote_the_message() -> None:
    sent = rpc_status.to_status(_status(grpc.StatusCode.UNAVAILABLE, "draining", "SHUTTING_DOWN"))
    failed = grpc.aio.AioRpcError(
        sent.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*sent.trailing_metadata),
        details="upstream connect error",
    )
    assert type(error_from_rpc(failed)) is bb.ShuttingDown


def test_every_code_class_names_its_own_code() -> None:
    for name, cls in CODES.items():
        assert cls.code == name
        assert name in grpc.StatusCode.__members__
