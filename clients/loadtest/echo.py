"""A bare grpc.aio unary echo server: the ceiling the Blackboard server is measured against.

One generic handler, bytes in and bytes out (identity serializers), no servicer
logic: what is left is the cost of grpc.aio itself on this machine. Serves the
standard health service so the harness can wait for it like for the real server.

With `--redis-url`, each call first makes one Redis script call that does
nothing (`return 1`), over the same pipelined connection the store's commits
use (adapters/redis_pipe.py): the floor under any Put that stores its write in
Redis, with none of Blackboard's own work. With `--commit` as well, the call
is instead the store's own commit of one Put (RedisStore.commit: the commit
script, its encoding and decoding), of a batch built once at start: the floor
under a Put through this store, without the API layer (parsing, validation,
observation, the reply).

    python -m loadtest.echo --listen 127.0.0.1:PORT [--tls-cert CERT --tls-key KEY]
                            [--redis-url redis://HOST:PORT [--commit]]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blackboard_server.adapters.redis_pipe import Endpoint, Script, ScriptPipe
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.model import ConversationRef, Put, WriteBatch

SERVICE = "loadtest.Echo"
METHOD = f"/{SERVICE}/Echo"
NOTHING = Script.of("loadtest-nothing", "return 1")
Behaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def echo_after_redis(pipe: ScriptPipe) -> Behaviour:
    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await pipe.evalsha(NOTHING, ("loadtest:echo",))
        return request

    return call


async def echo_after_commit(store: RedisStore) -> Behaviour:
    ref = ConversationRef("loadtest", f"echo-{time.time_ns()}")
    await store.create_conversation(ref, {}, 0, time.time_ns() // 1_000_000)
    batch = WriteBatch((), (Put("agents/worker-000/status", b"x" * 116),))

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await store.commit(ref, batch, "", time.time_ns() // 1_000_000)
        return request

    return call


async def serve(
    listen: str, tls: tuple[bytes, bytes] | None = None, redis_url: str = "", commit: bool = False
) -> None:
    """Serves until SIGTERM; `tls` is (private key, certificate chain), PEM."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pipe = store = None
    behaviour: Behaviour = echo
    if redis_url and commit:
        store = await RedisStore.connect(redis_url, prefix="loadtest", timeout_s=30)
        behaviour = await echo_after_commit(store)
    elif redis_url:
        pipe = ScriptPipe(Endpoint.from_url(redis_url), timeout_s=30)
        behaviour = echo_after_redis(pipe)
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=None, response_serializer=None
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
    if pipe is not None:
        await pipe.aclose()
    if store is not None:
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tls-cert", default="", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="and this private key (PEM)")
    parser.add_argument("--redis-url", default="", help="one Redis script call per echo")
    parser.add_argument("--commit", action="store_true", help="the store's commit of a Put")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.listen, tls, args.redis_url, args.commit))
    else:
        uvloop.run(serve(args.listen, tls, args.redis_url, args.commit))


if __name__ == "__main__":
    main()
