"""Method handlers built from the service descriptor, so every RPC in the proto
is served and a missing servicer method fails at start, not at call time."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api.errors import abort
from blackboard_server.domain.errors import InvalidArgument

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


def _checked(behaviour: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
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
