"""A bare grpc.aio unary echo server: the ceiling the Blackboard server is measured against.

One generic handler, bytes in and bytes out (identity serializers), no servicer
logic: what is left is the cost of grpc.aio itself on this machine. Serves the
standard health service so the harness can wait for it like for the real server.

    python -m loadtest.echo --listen 127.0.0.1:PORT [--tls-cert CERT --tls-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "loadtest.Echo"
METHOD = f"/{SERVICE}/Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(listen: str, tls: tuple[bytes, bytes] | None = None) -> None:
    """Serves until SIGTERM; `tls` is (private key, certificate chain), PEM."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler})]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is None:
        server.add_insecure_port(listen)
    else:
        server.add_secure_port(listen, grpc.ssl_server_credentials([tls]))
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tls-cert", default="", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="and this private key (PEM)")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, tls))
    else:
        uvloop.run(serve(args.listen, tls))


if __name__ == "__main__":
    main()
