"""The one table from domain errors to gRPC status, with google.rpc details.

Every status a handler sends carries a google.rpc.Status in the
`grpc-status-details-bin` trailer: an ErrorInfo (domain "blackboard.v1", the
reason name, typed metadata) and, for bad input, a BadRequest naming the field.
The SDK inverts this table by reason.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from blackboard_server.domain import errors as e

DOMAIN = "blackboard.v1"
# The reason of the error a call ended with, for its access log line and metrics
# (api/observe.py reads it; each RPC runs in a context of its own).
REASON: ContextVar[str] = ContextVar("blackboard_error_reason", default="")

# Most specific first: the first matching class wins.
TABLE: tuple[tuple[type[e.BlackboardError], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.ConversationNotFound, grpc.StatusCode.NOT_FOUND),
    (e.KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (e.ConversationExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.ConditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (e.Fenced, grpc.StatusCode.FAILED_PRECONDITION),
    (e.NotJson, grpc.StatusCode.FAILED_PRECONDITION),
    (e.RetriesExhausted, grpc.StatusCode.ABORTED),
    (e.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.SlowSubscriber, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.RevisionCompacted, grpc.StatusCode.OUT_OF_RANGE),
    (e.SessionNotFound, grpc.StatusCode.NOT_FOUND),
    (e.NoHolder, grpc.StatusCode.NOT_FOUND),
    (e.LockHeld, grpc.StatusCode.FAILED_PRECONDITION),
    (e.NotHolder, grpc.StatusCode.FAILED_PRECONDITION),
    (e.WaitExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (e.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (e.CredentialsMissing, grpc.StatusCode.UNAUTHENTICATED),
    (e.CredentialsInvalid, grpc.StatusCode.UNAUTHENTICATED),
    (e.CredentialsExpired, grpc.StatusCode.UNAUTHENTICATED),
    (e.RoleRequired, grpc.StatusCode.PERMISSION_DENIED),
    (e.TenantMismatch, grpc.StatusCode.PERMISSION_DENIED),
    (e.MethodNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
)


def status_code(error: e.BlackboardError) -> grpc.StatusCode:
    for cls, code in TABLE:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: e.BlackboardError) -> grpc.Status:
    return rpc_status.to_status(status_message(error))


def status_message(error: e.BlackboardError) -> status_pb2.Status:
    """The google.rpc.Status of an error: a unary call's trailer, a streamed write's outcome."""
    code = status_code(error)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=DOMAIN, metadata=dict(error.metadata)
    )
    details = [_pack(info)]
    if isinstance(error, e.InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in error.violations
            ]
        )
        details.append(_pack(bad))
    return status_pb2.Status(code=_code_number(code), message=error.message, details=details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_number(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    assert code_pb2.Code.Name(number)
    return number


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: e.BlackboardError) -> None:
    REASON.set(error.reason)
    status = to_status(error)
    try:
        await context.abort(status.code, status.details, status.trailing_metadata)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        # grpc cannot send a status on a call whose client already went away (its
        # deadline passed, it cancelled); the context may not know yet. The call
        # ends as cancelled, not as a bug.
        if type(exc).__name__ == "ExecuteBatchError":
            raise asyncio.CancelledError from None
        raise


H = TypeVar("H")


def unary(handler: Callable[..., Awaitable[H]]) -> Callable[..., Awaitable[H]]:
    """Turns domain errors of a handler into statuses; anything else is a bug, which the
    call observer (api/observe.py) logs with the call's fields and reports as UNKNOWN."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> H:
        try:
            return await handler(self, request, context)
        except e.BlackboardError as error:
            await abort(context, error)
            raise  # abort raises; this line is for the type checker

    return wrapped
