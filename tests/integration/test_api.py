"""The Blackboard API through a real gRPC server, on both stores."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer
from tests.integration.conftest import error_of, state_of

Stub = pb_grpc.BlackboardStub
JSON = "application/json"


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo and the BadRequest field names of a failed call."""
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return info, fields


def value(data: bytes | str, content_type: str = "") -> pb.Value:
    return pb.Value(
        data=data.encode() if isinstance(data, str) else data, content_type=content_type
    )


async def put(stub: Stub, conv: str, key: str, data: str, **kw: object) -> pb.WriteResult:
    return await stub.Put(pb.PutRequest(conversation_id=conv, key=key, value=value(data), **kw))


# --- conversations ------------------------------------------------------------


async def test_conversation_lifecycle(stub: Stub) -> None:
    ids = sorted(f"life-{uuid.uuid4().hex[:8]}-{i}" for i in range(5))
    for i in ids:
        created = await stub.CreateConversation(
            pb.CreateConversationRequest(id=i, metadata={"team": "a"})
        )
        assert created.id == i and created.metadata["team"] == "a" and created.revision == 0
    error = await error_of(stub.CreateConversation(pb.CreateConversationRequest(id=ids[0])))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListConversations(
            pb.ListConversationsRequest(page_size=2, page_token=token)
        )
        seen += [c.id for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert [s for s in seen if s in ids] == ids
    await stub.DeleteConversation(pb.DeleteConversationRequest(id=ids[0]))
    for call in (
        stub.GetConversation(pb.GetConversationRequest(id=ids[0])),
        stub.DeleteConversation(pb.DeleteConversationRequest(id=ids[0])),
        put(stub, ids[0], "k", "v"),
    ):
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert details(error)[0].reason == "CONVERSATION_NOT_FOUND"
    generated = await stub.CreateConversation(pb.CreateConversationRequest())
    assert generated.id


# --- writes -------------------------------------------------------------------


async def test_versions_and_contiguous_revisions(stub: Stub, conv: str) -> None:
    first = await put(stub, conv, "tasks/1", "a")
    second = await put(stub, conv, "tasks/1", "b")
    third = await put(stub, conv, "tasks/2", "c")
    assert (first.revision, second.revision, third.revision) == (1, 2, 3)
    assert (first.version, second.version, third.version) == (1, 2, 1)
    assert second.create_revision == 1
    got = await stub.Get(pb.GetRequest(conversation_id=conv, key="tasks/1"))
    assert got.entry.value.data == b"b" and got.entry.mod_revision == 2 and got.revision == 3
    deleted = await stub.Delete(pb.DeleteRequest(conversation_id=conv, key="tasks/1"))
    assert deleted.revision == 4 and deleted.version == 2
    error = await error_of(stub.Get(pb.GetRequest(conversation_id=conv, key="tasks/1")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and details(error)[0].reason == "KEY_NOT_FOUND"


async def test_expectations_fail_with_current_version_and_write_nothing(
    stub: Stub, conv: str
) -> None:
    await put(stub, conv, "k", "v1")
    await put(stub, conv, "k", "v2")
    before = await state_of(stub, conv)
    for expect in (pb.Expect(absent=True), pb.Expect(version=1), pb.Expect(mod_revision=1)):
        error = await error_of(put(stub, conv, "k", "x", expect=expect))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = details(error)
        assert info.reason == "CONDITION_FAILED"
        assert info.metadata["current_version"] == "2"
        assert info.metadata["current_mod_revision"] == "2"
    error = await error_of(
        stub.Delete(pb.DeleteRequest(conversation_id=conv, key="k", expect=pb.Expect(version=7)))
    )
    assert details(error)[0].reason == "CONDITION_FAILED"
    assert await state_of(stub, conv) == before
    ok = await put(stub, conv, "k", "v3", expect=pb.Expect(version=2))
    assert ok.version == 3
    created = await put(stub, conv, "new", "n", expect=pb.Expect(absent=True))
    assert created.version == 1


async def test_append_adds_ordered_children(stub: Stub, conv: str) -> None:
    results = [
        await stub.Append(pb.AppendRequest(conversation_id=conv, key="chat", value=value(f"m{i}")))
        for i in range(3)
    ]
    keys = [r.key for r in results]
    assert keys == sorted(keys) and len(set(keys)) == 3
    assert all(k.startswith("chat/") for k in keys)
    page = await stub.Range(pb.RangeRequest(conversation_id=conv, prefix="chat/"))
    assert [e.value.data for e in page.entries] == [b"m0", b"m1", b"m2"]


async def test_patch_merges_json(stub: Stub, conv: str) -> None:
    await put(stub, conv, "doc", json.dumps({"a": 1, "b": {"c": 2}}))
    patched = await stub.Patch(
        pb.PatchRequest(conversation_id=conv, key="doc", merge_patch=b'{"b": {"c": null, "d": 3}}')
    )
    assert json.loads(patched.value.data) == {"a": 1, "b": {"d": 3}}
    assert patched.result.version == 2
    fresh = await stub.Patch(
        pb.PatchRequest(conversation_id=conv, key="fresh", merge_patch=b'{"x": 1}')
    )
    assert json.loads(fresh.value.data) == {"x": 1} and fresh.result.version == 1
    await put(stub, conv, "text", "not json")
    before = await state_of(stub, conv)
    error = await error_of(
        stub.Patch(pb.PatchRequest(conversation_id=conv, key="text", merge_patch=b'{"x": 1}'))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0].reason == "NOT_JSON"
    error = await error_of(
        stub.Patch(pb.PatchRequest(conversation_id=conv, key="doc", merge_patch=b"{oops"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await error_of(
        stub.Patch(
            pb.PatchRequest(
                conversation_id=conv, key="doc", merge_patch=b"{}", expect=pb.Expect(version=1)
            )
        )
    )
    assert details(error)[0].reason == "CONDITION_FAILED"
    assert await state_of(stub, conv) == before


async def test_txn_branches(stub: Stub, conv: str) -> None:
    await put(stub, conv, "a", "1")
    compare = pb.Compare(key="a", target=pb.Compare.VALUE, operator=pb.Compare.EQUAL, value=b"1")
    ok = await stub.Txn(
        pb.TxnRequest(
            conversation_id=conv,
            compares=[compare],
            success=[
                pb.TxnOp(put=pb.TxnOp.Put(key="b", value=value("2"))),
                pb.TxnOp(delete=pb.TxnOp.Delete(key="a")),
            ],
            failure=[pb.TxnOp(put=pb.TxnOp.Put(key="failed", value=value("x")))],
        )
    )
    assert ok.succeeded and ok.revision == 2 and len(ok.results) == 2
    history = await stub.History(pb.HistoryRequest(conversation_id=conv, prefix=""))
    assert [len(e.changes) for e in history.events] == [1, 2]  # one revision for the txn
    not_ok = await stub.Txn(
        pb.TxnRequest(
            conversation_id=conv,
            compares=[compare],
            failure=[pb.TxnOp(put=pb.TxnOp.Put(key="failed", value=value("x")))],
        )
    )
    assert not not_ok.succeeded and not_ok.revision == 3
    nothing = await stub.Txn(pb.TxnRequest(conversation_id=conv, compares=[compare]))
    assert not nothing.succeeded and nothing.revision == 3


async def test_request_id_makes_a_retry_apply_once(stub: Stub, conv: str) -> None:
    first = await put(stub, conv, "k", "v", request_id="req-1")
    again = await put(stub, conv, "k", "v", request_id="req-1")
    assert again.revision == first.revision and again.replayed and not first.replayed
    head, _ = await state_of(stub, conv)
    assert head == 1
    appended = await stub.Append(
        pb.AppendRequest(conversation_id=conv, key="log", value=value("m"), request_id="req-2")
    )
    replay = await stub.Append(
        pb.AppendRequest(conversation_id=conv, key="log", value=value("m"), request_id="req-2")
    )
    assert replay.key == appended.key and replay.replayed
    patch = pb.PatchRequest(
        conversation_id=conv, key="doc", merge_patch=b'{"n": 1}', request_id="req-3"
    )
    await stub.Patch(patch)
    replayed_patch = await stub.Patch(patch)
    assert replayed_patch.result.replayed and json.loads(replayed_patch.value.data) == {"n": 1}
    before = await state_of(stub, conv)
    error = await error_of(put(stub, conv, "k", "different", request_id="req-1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[0].reason == "REQUEST_ID_REUSED"
    assert await state_of(stub, conv) == before


async def test_a_fence_nobody_was_issued_is_rejected(stub: Stub, conv: str) -> None:
    """Tokens are recorded when a lock is taken (test_coordination_api covers that
    flow); a token the store never recorded cannot write."""
    await put(stub, conv, "task", "v")
    before = await state_of(stub, conv)
    for token in (1, 10**12):
        error = await error_of(
            put(stub, conv, "task", "forged", fence=pb.Fence(lock="task", token=token))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = details(error)
        assert info.reason == "FENCED" and info.metadata["current_token"] == "0"
    assert await state_of(stub, conv) == before


# --- reads --------------------------------------------------------------------


async def test_reads_at_a_past_revision(stub: Stub, conv: str) -> None:
    await put(stub, conv, "p/a", "a1")  # 1
    await put(stub, conv, "p/b", "b1")  # 2
    await put(stub, conv, "p/a", "a2")  # 3
    await stub.Delete(pb.DeleteRequest(conversation_id=conv, key="p/b"))  # 4
    await put(stub, conv, "p/c", "c1")  # 5
    old = await stub.Get(pb.GetRequest(conversation_id=conv, key="p/a", revision=2))
    assert old.entry.value.data == b"a1" and old.revision == 2
    expected = {1: [b"a1"], 2: [b"a1", b"b1"], 3: [b"a2", b"b1"], 4: [b"a2"], 5: [b"a2", b"c1"]}
    for revision, values in expected.items():
        collected: list[bytes] = []
        token = ""
        while True:
            page = await stub.Range(
                pb.RangeRequest(
                    conversation_id=conv,
                    prefix="p/",
                    revision=revision,
                    page_size=1,
                    page_token=token,
                )
            )
            assert page.revision == revision
            collected += [e.value.data for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        assert collected == values, revision
    error = await error_of(stub.Get(pb.GetRequest(conversation_id=conv, key="p/b", revision=5)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    keys = await stub.Range(pb.RangeRequest(conversation_id=conv, prefix="p/", keys_only=True))
    assert [e.key for e in keys.entries] == ["p/a", "p/c"]
    assert all(not e.value.data for e in keys.entries)
    history = await stub.History(
        pb.HistoryRequest(conversation_id=conv, key="p/a", with_previous=True)
    )
    assert [e.revision for e in history.events] == [1, 3]
    assert history.events[1].changes[0].previous.value.data == b"a1"


async def test_reads_before_retention_are_out_of_range(make_server: object) -> None:
    async with (
        make_server(retention=5) as running,  # type: ignore[operator]
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.BlackboardStub(channel)
        conv = f"r-{uuid.uuid4().hex[:8]}"
        await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
        for i in range(12):
            await put(stub, conv, "k", str(i))
        for call in (
            stub.Get(pb.GetRequest(conversation_id=conv, key="k", revision=2)),
            stub.History(pb.HistoryRequest(conversation_id=conv, prefix="", from_revision=3)),
        ):
            error = await error_of(call)
            assert error.code() == grpc.StatusCode.OUT_OF_RANGE
            assert details(error)[0].reason == "REVISION_COMPACTED"
        recent = await stub.Get(pb.GetRequest(conversation_id=conv, key="k", revision=10))
        assert recent.entry.value.data == b"9"


# --- bad input ----------------------------------------------------------------

BAD = [
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="", value=value("v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="a//b", value=value("v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="a b", value=value("v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="x" * 513, value=value("v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="k", value=value(b"x" * 1200)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        None,
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id="bad id!", key="k", value=value("v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "conversation_id",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="k", ttl_ms=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl_ms",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="k", request_id="white space"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="k", fence=pb.Fence(token=3)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fence",
    ),
    (
        "Put",
        lambda c: pb.PutRequest(conversation_id=c, key="k", fence=pb.Fence(lock="l", token=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fence.token",
    ),
    (
        "Delete",
        lambda c: pb.DeleteRequest(conversation_id=c, key="missing"),
        grpc.StatusCode.NOT_FOUND,
        None,
    ),
    (
        "Append",
        lambda c: pb.AppendRequest(conversation_id=c, key="/chat"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key",
    ),
    (
        "Txn",
        lambda c: pb.TxnRequest(conversation_id=c, success=[pb.TxnOp()] * 1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "success[0]",
    ),
    (
        "Txn",
        lambda c: pb.TxnRequest(
            conversation_id=c, success=[pb.TxnOp(put=pb.TxnOp.Put(key=f"k{i}")) for i in range(20)]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        None,
    ),
    (
        "Txn",
        lambda c: pb.TxnRequest(
            conversation_id=c,
            success=[
                pb.TxnOp(put=pb.TxnOp.Put(key="k")),
                pb.TxnOp(delete=pb.TxnOp.Delete(key="k")),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "success[1].key",
    ),
    (
        "Txn",
        lambda c: pb.TxnRequest(conversation_id=c, compares=[pb.Compare(key="k")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "compares[0]",
    ),
    (
        "Range",
        lambda c: pb.RangeRequest(conversation_id=c, page_token="@@not-a-token"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    ),
    (
        "Range",
        lambda c: pb.RangeRequest(conversation_id=c, page_size=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    ),
    (
        "Get",
        lambda c: pb.GetRequest(conversation_id=c, key="k", revision=10**9),
        grpc.StatusCode.INVALID_ARGUMENT,
        "revision",
    ),
    (
        "Patch",
        lambda c: pb.PatchRequest(conversation_id=c, key="k", merge_patch=b"[1,"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "merge_patch",
    ),
    (
        "CreateConversation",
        lambda c: pb.CreateConversationRequest(id="m", metadata={f"k{i}": "v" for i in range(100)}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        None,
    ),
]


@pytest.fixture
async def small_server(make_server: object) -> object:
    async with make_server(
        max_value_bytes=1000,
        max_txn_ops=10,  # type: ignore[operator]
        max_request_bytes=1 << 20,
    ) as running:
        yield running


@pytest.mark.parametrize(
    ("rpc", "build", "code", "field"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
async def test_bad_input_is_rejected_and_changes_nothing(
    small_server: RunningServer,
    rpc: str,
    build: object,
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    async with grpc.aio.insecure_channel(small_server.address) as channel:
        stub = pb_grpc.BlackboardStub(channel)
        conv = f"bad-{uuid.uuid4().hex[:8]}"
        await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
        await put(stub, conv, "k", "original")
        before = await state_of(stub, conv)
        error = await error_of(getattr(stub, rpc)(build(conv)))  # type: ignore[operator]
        assert error.code() == code, error.details()
        info, fields = details(error)
        assert info.domain == "blackboard.v1" and info.reason
        if field is not None:
            assert fields == [field]
        assert await state_of(stub, conv) == before


async def test_oversized_request_is_refused_by_transport(small_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(small_server.address) as channel:
        stub = pb_grpc.BlackboardStub(channel)
        conv = f"big-{uuid.uuid4().hex[:8]}"
        await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
        error = await error_of(put(stub, conv, "k", "x" * (2 << 20)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await state_of(stub, conv))[0] == 0


# --- operations -----------------------------------------------------------------


async def test_health_and_reflection_are_served(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "blackboard.v1.Blackboard"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            assert "blackboard.v1.Blackboard" in names
            break


async def test_ttl_entries_expire_as_logged_deletes(stub: Stub, conv: str) -> None:
    await put(stub, conv, "lease", "short", ttl_ms=150)
    await put(stub, conv, "keep", "long")
    for _ in range(100):
        page = await stub.Range(pb.RangeRequest(conversation_id=conv))
        if [e.key for e in page.entries] == ["keep"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the TTL entry did not expire")
    history = await stub.History(pb.HistoryRequest(conversation_id=conv, key="lease"))
    last = history.events[-1]
    assert last.changes[0].type == pb.Change.DELETE
    assert last.provenance.agent_id == "blackboard:ttl"
