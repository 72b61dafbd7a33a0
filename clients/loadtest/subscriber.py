"""Subscribers in a process of their own, so that many streams do not share the
load generator's core. Spoken to in JSON lines over stdin and stdout:

    <- {"ready": true, "errors": []}            once every stream is synced
    -> {"last": {"conv": REVISION, ...}, "deadline_s": S}
    <- {"streams": [{"conversation": ..., ...Stream.report()}, ...]}

    python -m loadtest.subscriber --target HOST:PORT --conversation ID [--conversation ID] \
        --streams N --channels C
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from loadtest.streams import Stream, caught_up, follow
from loadtest.target import Endpoint


async def run(args: argparse.Namespace) -> None:
    ca = await asyncio.to_thread(Path(args.tls_ca).read_bytes) if args.tls_ca else None
    ep = Endpoint(
        args.target, tls_ca=ca, tls=args.tls, token=os.environ.get("BB_LOADTEST_TOKEN", "")
    )
    channels = [ep.channel() for _ in range(args.channels)]
    stubs = [pb_grpc.BlackboardStub(c) for c in channels]
    jobs = [
        (conv, Stream(), asyncio.Event()) for conv in args.conversation for _ in range(args.streams)
    ]
    tasks = [
        asyncio.create_task(follow(stubs[i % len(stubs)], conv, s, e, ep.metadata()))
        for i, (conv, s, e) in enumerate(jobs)
    ]
    await asyncio.gather(*(e.wait() for _, _, e in jobs))
    errors = [s.error for _, s, _ in jobs if s.error]
    print(json.dumps({"ready": not errors, "errors": errors[:3]}), flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line:
        order = json.loads(line)
        for conv, s, _ in jobs:
            s.wait_for(order["last"].get(conv, 0))
        await caught_up([s for _, s, _ in jobs], order["deadline_s"])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    with contextlib.suppress(BrokenPipeError):  # the harness gave up on us
        reports = [{"conversation": conv, **s.report()} for conv, s, _ in jobs]
        print(json.dumps({"streams": reports}), flush=True)


class SubscriberProcess:
    """The harness's side of one subscriber process.

    Started with subprocess.Popen rather than the event loop's subprocess support:
    uvloop forks through libuv, and gRPC would log that it skipped its fork handlers.
    """

    def __init__(
        self, ep: Endpoint, conversations: list[str], streams: int, channels: int, tls_ca: str
    ) -> None:
        argv = [sys.executable, "-m", "loadtest.subscriber", "--target", ep.address]
        for conv in conversations:
            argv += ["--conversation", conv]
        argv += ["--streams", str(streams), "--channels", str(channels)]
        if tls_ca:
            argv += ["--tls-ca", tls_ca]
        if ep.tls:
            argv.append("--tls")
        env = {**os.environ, "BB_LOADTEST_TOKEN": ep.token}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    async def receive(self, within_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within_s):
            line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"subscriber process exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--conversation", action="append", required=True)
    parser.add_argument("--streams", type=int, default=50, help="per conversation")
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--tls-ca", default="")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
