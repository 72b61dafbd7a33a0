"""A real Blackboard server on port 0, in embedded mode and on a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
import uvloop

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from tests.servers import RedisServer, ServerProcess

ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop, as the server runs in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return ""


@pytest.fixture
def make_server(backend: str) -> ServerFactory:
    """Starts servers on the test's backend; keyword arguments override settings."""

    def factory(**overrides: object) -> AbstractAsyncContextManager[RunningServer]:
        settings = Settings(
            listen="127.0.0.1:0", redis_url=backend, durability="fast", uvloop=False
        )
        return serve(settings.replace(**overrides))

    return factory


@pytest.fixture
def server_process(backend: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """The server in a process of its own: client and server then use both cores."""
    flags = ["--redis-url", backend, "--durability", "fast"] if backend else []
    process = ServerProcess(tmp_path / "server", *flags)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[RunningServer]:
    async with make_server(progress_interval_s=0.5) as running:
        yield running


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.BlackboardStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.BlackboardStub(channel)


@pytest.fixture
async def conv(stub: pb_grpc.BlackboardStub) -> str:
    conversation_id = f"t-{uuid.uuid4().hex[:12]}"
    await stub.CreateConversation(pb.CreateConversationRequest(id=conversation_id))
    return conversation_id


async def state_of(stub: pb_grpc.BlackboardStub, conversation_id: str) -> tuple[int, list[str]]:
    """The head revision and every entry, to check that a failed call changed nothing."""
    response = await stub.Range(pb.RangeRequest(conversation_id=conversation_id, page_size=1000))
    return response.revision, [e.SerializeToString().hex() for e in response.entries]


async def error_of(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")
