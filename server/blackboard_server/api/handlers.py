"""Method handlers built from the service descriptor, so every RPC in the proto
is served and a missing servicer method fails at start, not at call time."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from blackboard.v1 import blackboard_pb2 as pb

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


def generic_handler(service: ServiceDescriptor, servicer: object) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {method.full_name}")
        request = message_factory.GetMessageClass(method.input_type)
        make = _MAKERS[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(
            behaviour, request_deserializer=request.FromString, response_serializer=_serialize
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
