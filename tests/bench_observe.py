"""What the call observer adds to each unary call, without the network:

    python -m tests.bench_observe [--calls 100000] 2>/dev/null

Times `CallObserver._finish` for a successful Put (the gRPC metrics,
the write outcome and the access line), with the access line on (`info`) and
off (`warning`), and the metrics alone. Lines go to stderr in batches: send
stderr to /dev/null. A microbenchmark: per call on one core, the best of five
runs; it moves with the load on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server import logs
from blackboard_server.api.observe import CallObserver, _Method
from blackboard_server.metrics import Metrics


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-agent-id", "agent-1"), ("user-agent", "grpc-python"))


def per_call_us(level: str, calls: int) -> float:
    logs.configure(level, "json")
    metrics = Metrics()
    observing = CallObserver(metrics, None, tenant="default")
    method = _Method("/blackboard.v1.Blackboard/Put", "unary", metrics)
    request = pb.PutRequest(conversation_id="c1", key="k", value=pb.Value(data=b"v" * 100))
    response = pb.WriteResult(revision=1, key="k", version=1, create_revision=1)
    context: Any = _Context()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            t0 = time.perf_counter()
            method.started.inc()
            observing._finish(method, request, context, t0, response, None, None)
        best = min(best, (time.process_time() - start) / calls * 1e6)
    logs.flush()
    return best


async def main(calls: int) -> None:
    for level in ("info", "warning"):
        print(
            f"finish, access line {'on' if level == 'info' else 'off'}: "
            f"{per_call_us(level, calls):.1f} us/call"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().calls))
