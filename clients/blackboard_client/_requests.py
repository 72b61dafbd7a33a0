"""The requests of the single-key writes, built once for `Client` and `Writer`.

Each gets a request id (a uuid4 unless the caller gave one), made once per
write and sent on every attempt, so a retried write is applied once.
"""

from __future__ import annotations

import uuid
from typing import Any

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert
from blackboard_client._model import Expect, Fence, SupportsFence, Value, make_value
from blackboard_client._session import Session


def request_id(given: str | None) -> str:
    return given or str(uuid.uuid4())


def session_id(session: Session | str | None) -> str:
    if session is None:
        return ""
    return session if isinstance(session, str) else session.session_id


def put(
    conversation_id: str,
    key: str,
    value: bytes | str | Value | None,
    json: Any,
    content_type: str | None,
    expect: Expect | None,
    ttl_ms: int,
    session: Session | str | None,
    request_id_: str | None,
    fence: Fence | SupportsFence | None,
) -> pb.PutRequest:
    return pb.PutRequest(
        conversation_id=conversation_id,
        key=key,
        value=_convert.value_pb(make_value(value, json, content_type)),
        expect=_convert.expect_pb(expect),
        ttl_ms=ttl_ms,
        session_id=session_id(session),
        request_id=request_id(request_id_),
        fence=_convert.fence_pb(fence),
    )


def delete(
    conversation_id: str,
    key: str,
    expect: Expect | None,
    request_id_: str | None,
    fence: Fence | SupportsFence | None,
) -> pb.DeleteRequest:
    return pb.DeleteRequest(
        conversation_id=conversation_id,
        key=key,
        expect=_convert.expect_pb(expect),
        request_id=request_id(request_id_),
        fence=_convert.fence_pb(fence),
    )


def append(
    conversation_id: str,
    key: str,
    value: bytes | str | Value | None,
    json: Any,
    content_type: str | None,
    ttl_ms: int,
    request_id_: str | None,
    fence: Fence | SupportsFence | None,
) -> pb.AppendRequest:
    return pb.AppendRequest(
        conversation_id=conversation_id,
        key=key,
        value=_convert.value_pb(make_value(value, json, content_type)),
        ttl_ms=ttl_ms,
        request_id=request_id(request_id_),
        fence=_convert.fence_pb(fence),
    )
