"""Coverage-guided fuzzing of every RPC with atheris (libFuzzer).

    python -m tests.fuzz.atheris_rpcs -runs=100000 [corpus_dir]

Runs a server in this process (embedded mode, on a thread of its own) with the
server's code instrumented, so libFuzzer sees which branches each input
reaches. An input is a method number and the bytes sent as that method's
serialized request. A status of INTERNAL or UNKNOWN, or a call that hangs,
is a crash: libFuzzer writes the input to crash-* and exits non-zero.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import atheris

with atheris.instrument_imports(include=["blackboard_server"]):
    from blackboard_server import logs
    from blackboard_server.app import serve
    from blackboard_server.config import Settings

import grpc

from blackboard.v1 import blackboard_pb2 as pb

METHODS = [
    m
    for name in ("Blackboard", "Coordination")
    for m in pb.DESCRIPTOR.services_by_name[name].methods
]
CRASHES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def start_server() -> str:
    """Serves on a thread until the process ends; returns the address."""
    ready = threading.Event()
    address: list[str] = []

    async def run() -> None:
        settings = Settings(listen="127.0.0.1:0", uvloop=False, log_level="error", max_wait_ms=20)
        async with serve(settings) as running:
            address.append(running.address)
            ready.set()
            await asyncio.Event().wait()

    threading.Thread(target=lambda: asyncio.run(run()), daemon=True).start()
    if not ready.wait(30):
        raise RuntimeError("the server did not start")
    return address[0]


def main() -> None:
    logs.configure("error", "json")
    channel = grpc.insecure_channel(start_server())
    for conversation in ("a", "b"):  # so that requests can reach past "not found"
        channel.unary_unary("/blackboard.v1.Blackboard/CreateConversation")(
            pb.CreateConversationRequest(id=conversation).SerializeToString(), timeout=5
        )

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
        path = f"/{method.containing_service.full_name}/{method.name}"
        try:
            if method.server_streaming:
                stream = channel.unary_stream(path)(payload, timeout=0.2)
                try:
                    next(stream, None)
                finally:
                    stream.cancel()
            else:
                channel.unary_unary(path)(payload, timeout=10)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code in CRASHES:
                raise AssertionError(f"{method.name}: {code.name} for {payload!r}") from None

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
