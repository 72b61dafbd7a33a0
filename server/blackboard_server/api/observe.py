"""One access log line, the gRPC metrics and a span per call.

Handlers stay thin: this wraps each method handler once, when the server
registers it (api/handlers.py `Registrar`), so that every call, unary or
streaming, is counted, timed and logged the same way.
Messages are counted in the (de)serializers, which run once per message in both
directions. The hot path is a few counter increments, one histogram observation
and, at info, one dict and one rendered line; with tracing off no span is made.

The access line never carries metadata wholesale: only `x-agent-id` and
`x-request-id` are read, so an `authorization` header never reaches a log.
With authentication on, tenant and agent are the verified identity's (empty
for a call turned away before it was verified), never the client's header.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.message import Message

from blackboard_server import logs
from blackboard_server.api.auth import IDENTITY
from blackboard_server.api.errors import REASON
from blackboard_server.api.outcomes import TALLY, Outcome, outcome_for
from blackboard_server.metrics import Metrics
from blackboard_server.tracing import Tracing, mark_error, trace_ids

AGENT_HEADER = "x-agent-id"
REQUEST_ID_HEADER = "x-request-id"
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the stubs
CONVERSATION_ID_RPCS = ("CreateConversation", "GetConversation", "DeleteConversation")
UNSET = "?"
QUIET_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


class _Method:
    """One RPC's pre-bound metric children and what the access line needs."""

    def __init__(self, full_method: str, grpc_type: str, metrics: Metrics) -> None:
        service, _, name = full_method.lstrip("/").rpartition("/")
        labels = (service, name, grpc_type)
        self.rpc = f"{service.rpartition('.')[2]}/{name}"
        self.full = f"{service}/{name}"
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.received = metrics.msg_received.labels(*labels)
        self.sent = metrics.msg_sent.labels(*labels)
        self._handled = metrics.handled
        self._labels = labels
        self.handled: dict[str, Any] = {"OK": metrics.handled.labels(*labels, "OK")}
        self.outcome: Outcome | None = outcome_for(self.full, metrics)
        self.conversation_field = UNSET if grpc_type in ("unary", "server_stream") else ""
        self.conversation_rpc = service == "blackboard.v1.Blackboard" and (
            name in CONVERSATION_ID_RPCS
        )
        # Probes call these every few seconds: their lines go to debug, not info.
        self.quiet = service in QUIET_SERVICES

    def handled_as(self, code: str) -> Any:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self._handled.labels(*self._labels, code)
        return child

    def conversation(self, request: Any) -> str:
        field = self.conversation_field
        if not isinstance(request, Message):
            return ""  # bytes that did not parse (api/handlers.py)
        if field == UNSET:
            if hasattr(request, "conversation_id"):
                field = "conversation_id"
            elif self.conversation_rpc:
                field = "id"
            else:
                field = ""
            self.conversation_field = field
        return str(getattr(request, field)) if field else ""


class CallObserver:
    def __init__(
        self, metrics: Metrics, tracing: Tracing | None, *, tenant: str, verified: bool = False
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._tenant = tenant
        self._verified = verified
        # Bound now, after logs.configure: a concrete logger, not a lazy proxy per call.
        self._log = structlog.get_logger("blackboard.rpc").bind()
        self._info = self._log.is_enabled_for(logging.INFO)
        self._debug = self._log.is_enabled_for(logging.DEBUG)
        self._line = logs.json_line_writer()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    # --- building wrapped handlers ------------------------------------------------

    def wrap(self, method: str, handler: Handler) -> Handler:
        """`handler` of `method` (`/package.Service/Method`), observed."""
        behaviour: Any
        if handler.unary_unary is not None:
            grpc_type, behaviour, make = "unary", handler.unary_unary, _unary_unary
        elif handler.unary_stream is not None:
            grpc_type, behaviour, make = "server_stream", handler.unary_stream, _unary_stream
        elif handler.stream_unary is not None:
            grpc_type, behaviour, make = "client_stream", handler.stream_unary, _stream_unary
        else:
            grpc_type, behaviour, make = "bidi_stream", handler.stream_stream, _stream_stream
        m = _Method(method, grpc_type, self._metrics)
        if inspect.isasyncgenfunction(behaviour):
            observed: Any = self._observe_generator(m, behaviour)
        elif inspect.iscoroutinefunction(behaviour):
            observed = self._observe_call(m, behaviour)
        else:
            return handler  # a synchronous behaviour: not on this server
        deserialize = handler.request_deserializer or _same
        serialize = handler.response_serializer or _same
        received, sent = m.received.inc, m.sent.inc

        def counting_deserializer(data: bytes) -> Any:
            received()
            return deserialize(data)

        def counting_serializer(message: Any) -> bytes:
            sent()
            return serialize(message)

        return make(
            observed,
            request_deserializer=counting_deserializer,
            response_serializer=counting_serializer,
        )

    def _observe_call(
        self, m: _Method, behaviour: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def observed(request: Any, context: Context) -> Any:
            start = perf_counter()
            m.started.inc()
            if self._tracing is None:
                try:
                    response = await behaviour(request, context)
                except BaseException as error:
                    self._finish(m, request, context, start, None, error, None)
                    raise
                self._finish(m, request, context, start, response, None, None)
                return response
            attributes = {"rpc.system": "grpc", "rpc.method": m.full}
            with self._tracing.server_span(m.full, attributes) as span:
                try:
                    response = await behaviour(request, context)
                except BaseException as error:
                    self._finish(m, request, context, start, None, error, span)
                    raise
                self._finish(m, request, context, start, response, None, span)
                return response

        return observed

    def _observe_generator(
        self, m: _Method, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        # No span here: a span made current across yields would leak into the caller.
        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            start = perf_counter()
            m.started.inc()
            try:
                async for message in behaviour(request, context):
                    yield message
            except BaseException as error:
                self._finish(m, request, context, start, None, error, None)
                raise
            self._finish(m, request, context, start, None, None, None)

        return observed

    # --- at the end of each call ------------------------------------------------------

    def _finish(
        self,
        m: _Method,
        request: Any,
        context: Context,
        start: float,
        response: Any,
        error: BaseException | None,
        span: Any,
    ) -> None:
        elapsed = perf_counter() - start
        if error is None:
            code, reason = "OK", ""
        else:
            code, reason = _status(error, context)
        m.handling.observe(elapsed)
        m.handled_as(code).inc()
        if m.outcome is not None:
            m.outcome(response if error is None else None, reason)
        if span is not None and code != "OK":
            mark_error(span, code, reason)
        if code == "UNKNOWN":
            self._log.error("rpc", exc_info=error, **self._fields(m, request, context, span))
        elif self._debug if m.quiet else self._info:
            fields = self._fields(m, request, context, span)
            line = self._log.debug if m.quiet else self._log.info
            tally = TALLY.get()
            if tally is not None:
                fields.update(tally)
            ms = round(elapsed * 1000, 3)
            if self._line is not None:
                fields.update(code=code, reason=reason, ms=ms)
                self._line("debug" if m.quiet else "info", "rpc", fields)
            else:
                line("rpc", code=code, reason=reason, ms=ms, **fields)

    def _fields(self, m: _Method, request: Any, context: Context, span: Any) -> dict[str, Any]:
        agent = request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == AGENT_HEADER:
                agent = str(value)[:128]
            elif key == REQUEST_ID_HEADER:
                request_id = str(value)[:128]
        tenant = self._tenant
        if self._verified:
            who = IDENTITY.get()
            tenant, agent = (who.tenant, who.agent_id) if who is not None else ("", "")
        fields = {
            "rpc": m.rpc,
            "request_id": request_id or f"{self._id_prefix}-{next(self._ids):x}",
            "tenant": tenant,
            "conversation": m.conversation(request) if request is not None else "",
            "agent": agent,
        }
        if span is not None:
            fields["trace_id"], fields["span_id"] = trace_ids(span)
        return fields


def _status(error: BaseException, context: Context) -> tuple[str, str]:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED", ""
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name, REASON.get()
        return CODE_NAMES.get(code, "UNKNOWN"), REASON.get()
    return "UNKNOWN", ""


def _same(x: Any) -> Any:
    return x


_unary_unary = grpc.unary_unary_rpc_method_handler
_unary_stream = grpc.unary_stream_rpc_method_handler
_stream_unary = grpc.stream_unary_rpc_method_handler
_stream_stream = grpc.stream_stream_rpc_method_handler
