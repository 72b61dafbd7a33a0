"""`bb health`: the standard gRPC health service (grpc.health.v1), asked directly."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from blackboard_client._errors import error_from_rpc
from blackboard_client._tls import open_channel
from blackboard_client.cli._common import UNAVAILABLE, Options, command
from blackboard_client.cli._output import Output


def register(subparsers: Any) -> None:
    health = command(
        subparsers, "health", _health, "check the server's gRPC health (exit 6 unless SERVING)"
    )
    health.add_argument(
        "--service", default="", help="a service name, e.g. blackboard.v1.Blackboard (default: all)"
    )


async def _health(args: argparse.Namespace, opts: Options) -> int:
    service: str = args.service
    metadata = (("authorization", f"Bearer {opts.token}"),) if opts.token else ()
    async with open_channel(opts.target, opts.tls) as channel:
        # Not HealthStub: its type stubs do not declare Check.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=opts.timeout,
                metadata=metadata,
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    Output(opts.json).emit({"target": opts.target, "service": service, "status": status}, status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else UNAVAILABLE
