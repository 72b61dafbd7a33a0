"""Tenant quotas through a real gRPC server, on both stores: each limit is refused with
RESOURCE_EXHAUSTED naming the quota, and the refused call changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer
from blackboard_server.config import SettingsError
from tests.integration.conftest import ServerFactory, error_of, state_of
from tests.integration.test_api import details, put

Stub = pb_grpc.BlackboardStub
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def assert_quota(error: grpc.aio.AioRpcError, quota: str, limit: str) -> dict[str, str]:
    assert error.code() == EXHAUSTED, error
    info, _ = details(error)
    assert info.reason in ("QUOTA_EXCEEDED", "RATE_LIMITED")
    assert (info.metadata["quota"], info.metadata["limit"]) == (quota, limit)
    return dict(info.metadata)


async def channel_to(running: RunningServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(running.address)


async def new_conversation(stub: Stub) -> str:
    conversation_id = f"q-{uuid.uuid4().hex[:12]}"
    await stub.CreateConversation(pb.CreateConversationRequest(id=conversation_id))
    return conversation_id


@pytest.fixture
def tenant() -> str:
    """Each test's own tenant: the Redis server, and so the tenant's usage, is shared."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def quota_server(
    make_server: ServerFactory, request: pytest.FixtureRequest, tenant: str
) -> AsyncIterator[RunningServer]:
    async with make_server(tenant=tenant, **request.param) as running:
        yield running


@pytest.fixture
async def quota_channel(quota_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(quota_server.address) as channel:
        yield channel


@pytest.fixture
def quota_stub(quota_channel: grpc.aio.Channel) -> Stub:
    return Stub(quota_channel)


def quotas(**values: object) -> object:
    return pytest.mark.parametrize("quota_server", [values], indirect=True)


@quotas(quota_conversations=2)
async def test_conversations_per_tenant(quota_stub: Stub) -> None:
    first = await new_conversation(quota_stub)
    await new_conversation(quota_stub)
    before = await quota_stub.ListConversations(pb.ListConversationsRequest())
    error = await error_of(quota_stub.CreateConversation(pb.CreateConversationRequest(id="third")))
    assert assert_quota(error, "conversations", "2")["value"] == "3"
    assert await quota_stub.ListConversations(pb.ListConversationsRequest()) == before
    await quota_stub.DeleteConversation(pb.DeleteConversationRequest(id=first))
    await quota_stub.CreateConversation(pb.CreateConversationRequest(id="third"))


@quotas(quota_entries_per_conversation=3)
async def test_entries_per_conversation(quota_stub: Stub) -> None:
    conv = await new_conversation(quota_stub)
    for key in ("a", "b", "c"):
        await put(quota_stub, conv, key, "v")
    before = await state_of(quota_stub, conv)
    for call in (
        put(quota_stub, conv, "d", "v"),
        quota_stub.Append(pb.AppendRequest(conversation_id=conv, key="log")),
        quota_stub.Txn(
            pb.TxnRequest(
                conversation_id=conv,
                success=[pb.TxnOp(put=pb.TxnOp.Put(key="e", value=pb.Value(data=b"v")))],
            )
        ),
    ):
        assert_quota(await error_of(call), "entries_per_conversation", "3")
        assert await state_of(quota_stub, conv) == before
    await put(quota_stub, conv, "a", "replaced")  # a key already there is no new entry


@quotas(quota_bytes=100)
async def test_bytes_per_tenant(quota_stub: Stub) -> None:
    one, two = await new_conversation(quota_stub), await new_conversation(quota_stub)
    await put(quota_stub, one, "k", "x" * 49)  # 50 bytes: key and value
    await put(quota_stub, two, "k", "x" * 49)
    before = await state_of(quota_stub, one)
    error = await error_of(put(quota_stub, one, "k2", "x"))
    assert assert_quota(error, "bytes", "100")["value"] == "103"
    patch = pb.PatchRequest(conversation_id=two, key="doc", merge_patch=b'{"a": 1}')
    assert_quota(await error_of(quota_stub.Patch(patch)), "bytes", "100")
    assert await state_of(quota_stub, one) == before
    await quota_stub.Delete(pb.DeleteRequest(conversation_id=two, key="k"))
    await quota_stub.Patch(patch)


async def first_message(stream: grpc.aio.UnaryStreamCall) -> object:  # type: ignore[type-arg]
    async with asyncio.timeout(10):
        return await stream.read()


@quotas(quota_subscribers_per_conversation=2, quota_subscribers=4)
async def test_subscribers_per_conversation_and_per_tenant(
    quota_stub: Stub, quota_server: RunningServer
) -> None:
    one, two = await new_conversation(quota_stub), await new_conversation(quota_stub)
    three = await new_conversation(quota_stub)
    target = quota_server.address
    async with AsyncExitStack() as channels:

        async def subscribe(conv: str) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
            # A channel per stream: cancelling one stream must not end another.
            channel = await channels.enter_async_context(grpc.aio.insecure_channel(target))
            stream = Stub(channel).Subscribe(pb.SubscribeRequest(conversation_id=conv))
            await first_message(stream)
            return stream

        open_ = [await subscribe(one), await subscribe(one), await subscribe(two)]
        refused = await error_of(subscribe(one))
        assert_quota(refused, "subscribers_per_conversation", "2")
        open_.append(await subscribe(two))
        assert_quota(await error_of(subscribe(three)), "subscribers", "4")
        # The refused streams took nothing: ending one stream makes room for exactly one.
        open_[0].cancel()
        async with asyncio.timeout(10):
            while True:
                try:
                    await subscribe(one)
                    break
                except grpc.aio.AioRpcError as error:  # the cancel has not reached the server
                    assert error.code() == EXHAUSTED
                    await asyncio.sleep(0.05)
        assert_quota(await error_of(subscribe(three)), "subscribers", "4")


@quotas(quota_sessions=2)
async def test_sessions_per_tenant(quota_stub: Stub, quota_channel: grpc.aio.Channel) -> None:
    coord = pb_grpc.CoordinationStub(quota_channel)
    one, two = await new_conversation(quota_stub), await new_conversation(quota_stub)
    first = await coord.OpenSession(pb.OpenSessionRequest(conversation_id=one))
    await coord.OpenSession(pb.OpenSessionRequest(conversation_id=two))
    before = await coord.ListSessions(pb.ListSessionsRequest(conversation_id=one))
    error = await error_of(coord.OpenSession(pb.OpenSessionRequest(conversation_id=one)))
    assert assert_quota(error, "sessions", "2")["value"] == "3"
    assert await coord.ListSessions(pb.ListSessionsRequest(conversation_id=one)) == before
    await coord.CloseSession(
        pb.CloseSessionRequest(conversation_id=one, session_id=first.session_id)
    )
    await coord.OpenSession(pb.OpenSessionRequest(conversation_id=one))


# Refilling one token per 100 s: within the test the burst is all there is.
@quotas(quota_requests_per_second=0.01, quota_burst=5)
async def test_the_request_rate_under_a_burst(quota_stub: Stub) -> None:
    conv = await new_conversation(quota_stub)  # takes one token: 4 left
    before = await state_of(quota_stub, conv)  # another: 3 left

    async def attempt(i: int) -> grpc.aio.AioRpcError | None:
        try:
            await put(quota_stub, conv, f"k{i}", "v")
        except grpc.aio.AioRpcError as error:
            return error
        return None

    outcomes = await asyncio.gather(*(attempt(i) for i in range(40)))
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 37
    for error in refused:
        metadata = assert_quota(error, "requests_per_second", "0.01")
        assert details(error)[0].reason == "RATE_LIMITED"
        assert metadata["burst"] == "5" and int(metadata["retry_after_ms"]) > 0
    # Reads are requests too.
    assert_quota(await error_of(state_of(quota_stub, conv)), "requests_per_second", "0.01")
    assert before[0] == 0


async def test_the_rate_limit_refuses_nothing_else_and_writes_nothing(
    make_server: ServerFactory, tenant: str
) -> None:
    """The three writes the bucket let through are exactly the revisions in the log."""
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            make_server(tenant=tenant, quota_requests_per_second=0.01, quota_burst=8)
        )
        stub = Stub(await stack.enter_async_context(grpc.aio.insecure_channel(running.address)))
        conv = await new_conversation(stub)  # 7 left
        results = await asyncio.gather(
            *(put(stub, conv, f"k{i}", "v") for i in range(20)), return_exceptions=True
        )
        written = [r for r in results if isinstance(r, pb.WriteResult)]
        assert len(written) == 7
        assert sorted(r.revision for r in written) == list(range(1, 8))
        head, _ = await running.store.head(running_ref(running, conv))
        assert head == 7


def running_ref(running: RunningServer, conversation_id: str) -> object:
    from blackboard_server.domain.model import ConversationRef

    return ConversationRef(running.settings.tenant, conversation_id)


async def test_a_quotas_file_overrides_the_defaults(
    make_server: ServerFactory, tmp_path: Path, tenant: str
) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text(
        f'[tenants."{tenant}"]\nconversations = 1\n[tenants.other]\nconversations = 9\n'
    )
    async with (
        make_server(tenant=tenant, quota_conversations=5, quotas_file=str(path)) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = Stub(channel)
        await new_conversation(stub)
        error = await error_of(new_conversation(stub))
        assert_quota(error, "conversations", "1")


async def test_a_bad_quotas_file_stops_the_start(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text("[tenants.acme]\nconversation = 1\n")
    with pytest.raises(SettingsError, match=r"quotas_file: .*tenants\.acme\.conversation: not a"):
        async with make_server(quotas_file=str(path)):
            pass
    with pytest.raises(SettingsError, match="cannot read"):
        async with make_server(quotas_file=str(tmp_path / "missing.toml")):
            pass
