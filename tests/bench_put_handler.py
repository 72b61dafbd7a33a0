"""The Python cost of the Put handler chain, in process and without the network:

    python -m tests.bench_put_handler [--calls 20000] 2>/dev/null

The server is built by `serve` as usual (embedded store), except that gRPC's
server is replaced by one that only records the method handlers registered
on it. Each call is what gRPC would do: parse the request bytes, run the
registered Put handler (the observer, the servicer, the service, the memory
store's commit) and serialize the reply. Per call on one core, the best of
five runs, with the access line on (`info`) and off (`warning`); lines go
to stderr: send it to /dev/null. A microbenchmark: it moves with the load
on the machine, and under real load the same code costs more (shared
cores, gRPC's own work in between; docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server import app, logs
from blackboard_server.config import Settings


class _RecordingServer:
    """Stands in for grpc.aio.Server: keeps the handlers, serves nothing."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def add_insecure_port(self, listen: str) -> int:
        return 1

    async def start(self) -> None:
        return None

    async def stop(self, grace: float | None) -> None:
        return None


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-agent-id", "agent-1"), ("user-agent", "grpc-python"))


async def per_call_us(level: str, calls: int) -> float:
    logs.configure(level, "json")
    recording = _RecordingServer()
    real = app.grpc.aio.server
    app.grpc.aio.server = lambda *args, **kwargs: recording  # type: ignore[assignment]
    try:
        async with app.serve(Settings(listen="127.0.0.1:0", uvloop=False, log_level=level)):
            context: Any = _Context()
            create = recording.handlers["/blackboard.v1.Blackboard/CreateConversation"]
            request = pb.CreateConversationRequest(id="c1").SerializeToString()
            await create.unary_unary(create.request_deserializer(request), context)
            put = recording.handlers["/blackboard.v1.Blackboard/Put"]
            value = pb.Value(data=b"x" * 116)
            raw = pb.PutRequest(conversation_id="c1", key="agents/w/status", value=value)
            data = raw.SerializeToString()
            best = float("inf")
            for _ in range(5):
                start = time.process_time()
                for _ in range(calls):
                    reply = await put.unary_unary(put.request_deserializer(data), context)
                    put.response_serializer(reply)
                best = min(best, (time.process_time() - start) / calls * 1e6)
    finally:
        app.grpc.aio.server = real  # type: ignore[assignment]
    logs.flush()
    return best


async def main(calls: int) -> None:
    for level in ("info", "warning"):
        us = await per_call_us(level, calls)
        print(f"Put handler chain, access line {'on' if level == 'info' else 'off'}: {us:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
