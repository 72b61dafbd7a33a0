"""An agent in its own process: takes a lock, keeps its session alive, and writes
with the lock's token as fast as it can, printing one JSON line per write.

    python -m tests.agents.fenced_writer ADDRESS CONVERSATION LOCK TTL_MS

Fault tests pause it (SIGSTOP) and kill it; raw stubs keep it independent of the SDK.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
from google.rpc import error_details_pb2, status_pb2

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc


def reason_of(error: grpc.aio.AioRpcError) -> str:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if raw is None:
        return ""
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def keep_alive(co: pb_grpc.CoordinationStub, conv: str, session: str, ttl_ms: int) -> None:
    while True:
        await asyncio.sleep(ttl_ms / 3000)
        try:
            await co.KeepAlive(
                pb.KeepAliveRequest(conversation_id=conv, session_id=session), timeout=1
            )
        except grpc.aio.AioRpcError as error:
            say(event="keepalive-failed", code=error.code().name)


async def main(address: str, conv: str, lock: str, ttl_ms: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        bb, co = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        agent = (("x-agent-id", "paused-holder"),)
        session = await co.OpenSession(
            pb.OpenSessionRequest(conversation_id=conv, ttl_ms=ttl_ms), metadata=agent
        )
        held = await co.AcquireLock(
            pb.AcquireLockRequest(
                conversation_id=conv, session_id=session.session_id, name=lock, wait_ms=10_000
            ),
            metadata=agent,
        )
        say(event="acquired", token=held.token)
        keeper = asyncio.create_task(keep_alive(co, conv, session.session_id, ttl_ms))
        fence = pb.Fence(lock=lock, token=held.token)
        n = 0
        try:
            while True:
                n += 1
                sent = time.time()
                try:
                    await bb.Put(
                        pb.PutRequest(
                            conversation_id=conv,
                            key=f"writes/{n}",
                            value=pb.Value(data=b"holder"),
                            fence=fence,
                        ),
                        metadata=agent,
                        timeout=2,
                    )
                    say(event="write", n=n, sent=sent, ok=True)
                except grpc.aio.AioRpcError as error:
                    say(
                        event="write",
                        n=n,
                        sent=sent,
                        ok=False,
                        code=error.code().name,
                        reason=reason_of(error),
                    )
                await asyncio.sleep(0.02)
        finally:
            keeper.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
