"""Method handlers built from the service descriptor, so every RPC in the proto
is served and a missing servicer method fails at start, not at call time; and
the registrar that wraps every handler the server serves, once, at start."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api.errors import abort
from blackboard_server.domain.errors import InvalidArgument

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the stubs
# A layer around every call (api/observe.py, api/auth.py): (`/pkg.Service/Method`, handler).
Wrap = Callable[[str, "Handler"], "Handler"]

BLACKBOARD = pb.DESCRIPTOR.services_by_name["Blackboard"]
COORDINATION = pb.DESCRIPTOR.services_by_name["Coordination"]


def _serialize(message: Any) -> bytes:
    # Streams send pre-encoded bytes (each event is encoded once per replica).
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


_MAKERS: dict[tuple[bool, bool], Any] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True, slots=True)
class Malformed:
    """Bytes that do not parse as the method's request message."""

    error: str


def _parser(request: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        # grpc answers INTERNAL when a deserializer raises; this is the client's fault.
        try:
            return request.FromString(data)
        except (DecodeError, ValueError, RecursionError) as exc:
            return Malformed(str(exc) or type(exc).__name__)

    return parse


def _checked(behaviour: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):  # a library's servicer may yield its replies

        @functools.wraps(behaviour)
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Malformed):
                await abort(context, InvalidArgument("request", "is not a valid request message"))
            async for reply in behaviour(request, context):
                yield reply

        return stream

    @functools.wraps(behaviour)
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Malformed):
            await abort(context, InvalidArgument("request", "is not a valid request message"))
        return await behaviour(request, context)

    return handle


def method_handlers(
    service: ServiceDescriptor, servicer: object
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Each method of `service`, by name, as `servicer` implements it."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {method.full_name}")
        request = message_factory.GetMessageClass(method.input_type)
        make = _MAKERS[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(
            _checked(behaviour),
            request_deserializer=_parser(request),
            response_serializer=_serialize,
        )
    return handlers


class Registrar:
    """Adds services to a grpc.aio server with each method handler wrapped by
    `wraps` (the first outermost), once, when the service is added.

    This is what server interceptors would do, without their cost: grpc.aio
    runs the interceptor chain on every call (a coroutine per interceptor and
    the call details), about 30 us of a Put's server CPU here
    (docs/performance.md), while a wrapper costs only its own work. Every
    service goes through here (health and reflection too, as `method_handlers`
    builds them), so none escapes the layers.
    """

    def __init__(self, server: grpc.aio.Server, wraps: Iterable[Wrap]) -> None:
        self._server = server
        self._wraps = tuple(reversed(tuple(wraps)))

    def wrap(self, method: str, handler: Handler) -> Handler:
        for layer in self._wraps:
            handler = layer(method, handler)
        return handler

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)
