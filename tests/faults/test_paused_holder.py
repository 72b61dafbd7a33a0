"""A lock holder paused (SIGSTOP) past its TTL while another agent takes the
lock: once it resumes, every write it makes with its old token is FENCED."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from typing import Any

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import serve
from blackboard_server.config import Settings
from tests.servers import EtcdCluster, RedisServer


class Agent:
    """The fenced writer in its own process, and the lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Agent:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.agents.fenced_writer",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def writes(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == "write"]

    async def wait(self, predicate: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.reader.cancel()


@pytest.fixture(params=["embedded", "redis+etcd"])
def settings(request: pytest.FixtureRequest) -> Settings:
    embedded = Settings(listen="127.0.0.1:0", uvloop=False)
    if request.param == "embedded":
        return embedded
    redis: RedisServer = request.getfixturevalue("redis_server")
    etcd: EtcdCluster = request.getfixturevalue("etcd")
    return embedded.replace(
        redis_url=redis.url,
        durability="fast",
        etcd_endpoints=",".join(etcd.endpoints),
        etcd_prefix=f"/bb-{uuid.uuid4().hex[:8]}",
    )


async def test_paused_holder_is_fenced_out_after_it_resumes(settings: Settings) -> None:
    async with serve(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        bb, co = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        conv = f"pause-{uuid.uuid4().hex[:8]}"
        await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        holder = await Agent.start(server.address, conv, "job", "1000")
        try:
            await holder.wait(lambda a: len([w for w in a.writes() if w["ok"]]) >= 10)
            first_token = next(x["token"] for x in holder.lines if x["event"] == "acquired")

            holder.proc.send_signal(signal.SIGSTOP)
            successor = await co.OpenSession(
                pb.OpenSessionRequest(conversation_id=conv), metadata=(("x-agent-id", "successor"),)
            )
            taken = await co.AcquireLock(
                pb.AcquireLockRequest(
                    conversation_id=conv,
                    session_id=successor.session_id,
                    name="job",
                    wait_ms=10_000,
                )
            )
            assert taken.token > first_token
            await bb.Put(
                pb.PutRequest(
                    conversation_id=conv,
                    key="writes/successor",
                    value=pb.Value(data=b"successor"),
                    fence=pb.Fence(lock="job", token=taken.token),
                )
            )

            resumed = time.time()
            holder.proc.send_signal(signal.SIGCONT)
            await holder.wait(lambda a: len([w for w in a.writes() if w["sent"] >= resumed]) >= 20)
            after = [w for w in holder.writes() if w["sent"] >= resumed]
            assert after and all(not w["ok"] and w["reason"] == "FENCED" for w in after), after
            before_pause = [w for w in holder.writes() if w["ok"]]
            assert len(before_pause) >= 10
        finally:
            await holder.kill()
        page = await bb.Range(
            pb.RangeRequest(conversation_id=conv, prefix="writes/", page_size=1000)
        )
        # Nothing the holder wrote landed after the successor's write.
        successor_revision = next(
            e.mod_revision for e in page.entries if e.key == "writes/successor"
        )
        holder_revisions = [e.mod_revision for e in page.entries if e.key != "writes/successor"]
        assert max(holder_revisions) < successor_revision
