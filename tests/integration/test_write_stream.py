"""The Write stream, raw and through the SDK's writer, on both stores.

Each write has its own outcome: a failed write answers with the status its unary
call would have ended with, changes nothing, and does not end the stream.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from blackboard_server.domain.limits import Limits
from tests.identities import TokenFile
from tests.integration.conftest import ServerFactory, state_of
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)
FAST = bb.RetryPolicy(attempts=30, initial_backoff=0.05, max_backoff=0.3)
PER_WRITER = 200


def put(conv: str, key: str, data: bytes = b"v", **fields: Any) -> pb.StreamedWrite:
    request = pb.PutRequest(conversation_id=conv, key=key, value=pb.Value(data=data), **fields)
    return pb.StreamedWrite(put=request)


def numbered(*writes: pb.StreamedWrite, start: int = 1) -> pb.WriteStreamRequest:
    for sequence, write in enumerate(writes, start):
        write.sequence = sequence
    return pb.WriteStreamRequest(writes=writes)


def reason(outcome: pb.WriteOutcome) -> str:
    status = status_pb2.Status.FromString(outcome.error.status)
    assert status.code == outcome.error.code and status.message == outcome.error.message
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


class Stream:
    """A raw Write call: send a message, read its answer."""

    def __init__(self, stub: pb_grpc.BlackboardStub, metadata: Any = None) -> None:
        self.call = stub.Write(metadata=metadata)

    async def exchange(self, message: pb.WriteStreamRequest) -> list[pb.WriteOutcome]:
        await self.call.write(message)
        async with asyncio.timeout(20):
            response = await self.call.read()
        assert response is not grpc.aio.EOF
        return list(response.outcomes)

    async def close(self) -> grpc.StatusCode:
        await self.call.done_writing()
        async with asyncio.timeout(20):
            assert await self.call.read() is grpc.aio.EOF
            code: grpc.StatusCode = await self.call.code()
        return code


async def test_writes_answer_in_message_order_and_failures_do_not_end_the_stream(
    stub: pb_grpc.BlackboardStub, conv: str
) -> None:
    stream = Stream(stub)
    first = await stream.exchange(numbered(put(conv, "a"), put(conv, "b"), put(conv, "c")))
    assert [o.sequence for o in first] == [1, 2, 3]
    assert [o.result.key for o in first] == ["a", "b", "c"]
    assert sorted(o.result.revision for o in first) == [1, 2, 3]
    before = await state_of(stub, conv)
    bad = await stream.exchange(
        numbered(
            put(conv, "a", expect=pb.Expect(absent=True)),  # exists
            put(conv, ""),  # no key
            put("no-such-conversation", "k"),
            pb.StreamedWrite(),  # no write at all
            pb.StreamedWrite(delete=pb.DeleteRequest(conversation_id=conv, key="absent")),
            start=10,
        )
    )
    assert [o.sequence for o in bad] == [10, 11, 12, 13, 14]
    assert [o.WhichOneof("outcome") for o in bad] == ["error"] * 5
    codes = [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT]
    codes += [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]
    codes += [grpc.StatusCode.NOT_FOUND]
    assert [o.error.code for o in bad] == [c.value[0] for c in codes]
    assert [reason(o) for o in bad] == [
        "CONDITION_FAILED",
        "INVALID_FIELD",
        "CONVERSATION_NOT_FOUND",
        "INVALID_FIELD",
        "KEY_NOT_FOUND",
    ]
    assert await state_of(stub, conv) == before
    # The stream goes on: a mixed message, then the delete and append kinds.
    mixed = await stream.exchange(numbered(put(conv, "", b"x"), put(conv, "d"), start=20))
    assert mixed[0].WhichOneof("outcome") == "error" and mixed[1].result.key == "d"
    append = pb.AppendRequest(conversation_id=conv, key="log", value=pb.Value(data=b"m"))
    delete = pb.DeleteRequest(conversation_id=conv, key="a")
    last = await stream.exchange(
        numbered(pb.StreamedWrite(append=append), pb.StreamedWrite(delete=delete), start=30)
    )
    assert last[0].result.key.startswith("log/") and last[1].result.key == "a"
    assert await stream.close() == grpc.StatusCode.OK
    revision, entries = await state_of(stub, conv)
    assert revision == 6  # 3 puts, d, the append, the delete
    assert len(entries) == 4  # b, c, d, the appended child


async def test_a_retried_write_applies_once(stub: pb_grpc.BlackboardStub, conv: str) -> None:
    stream = Stream(stub)
    once = put(conv, "k", b"1", request_id="req-1")
    (first,) = await stream.exchange(numbered(once))
    again = put(conv, "k", b"1", request_id="req-1")
    (second,) = await stream.exchange(numbered(again, start=2))
    assert not first.result.replayed and second.result.replayed
    assert second.result.revision == first.result.revision
    other = put(conv, "k", b"different", request_id="req-1")
    (reused,) = await stream.exchange(numbered(other, start=3))
    assert reason(reused) == "REQUEST_ID_REUSED"
    revision, _ = await state_of(stub, conv)
    assert revision == first.result.revision
    got = await stub.Get(pb.GetRequest(conversation_id=conv, key="k"))
    assert got.entry.value.data == b"1" and got.entry.version == 1
    await stream.close()


async def test_too_many_writes_in_a_message_are_all_refused(
    stub: pb_grpc.BlackboardStub, conv: str
) -> None:
    limit = Limits().max_stream_message_writes
    stream = Stream(stub)
    before = await state_of(stub, conv)
    outcomes = await stream.exchange(numbered(*(put(conv, f"k{i}") for i in range(limit + 1))))
    assert len(outcomes) == limit + 1
    assert {reason(o) for o in outcomes} == {"LIMIT_EXCEEDED"}
    assert {o.error.code for o in outcomes} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert await state_of(stub, conv) == before
    (ok,) = await stream.exchange(numbered(put(conv, "after"), start=limit + 2))
    assert ok.result.key == "after"
    await stream.close()


async def test_many_messages_in_flight_each_get_their_answer(
    stub: pb_grpc.BlackboardStub, conv: str
) -> None:
    stream = Stream(stub)
    messages = 50
    for m in range(messages):
        batch = [put(conv, f"m{m}-{i}") for i in range(5)]
        await stream.call.write(numbered(*batch, start=m * 5 + 1))
    seen: list[int] = []
    async with asyncio.timeout(30):
        for _ in range(messages):
            response = await stream.call.read()
            sequences = [o.sequence for o in response.outcomes]
            assert sequences == sorted(sequences) and len(sequences) == 5  # in message order
            assert all(o.WhichOneof("outcome") == "result" for o in response.outcomes)
            seen += sequences
    assert sorted(seen) == list(range(1, messages * 5 + 1))
    revision, entries = await state_of(stub, conv)
    assert revision == messages * 5 and len(entries) == messages * 5
    assert await stream.close() == grpc.StatusCode.OK


# --- the SDK's writer --------------------------------------------------------------------


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[bb.Client]:
    async with bb.connect(server.address, agent_id="tester", retry=FAST) as c:
        yield c


async def test_the_writer_returns_what_the_unary_calls_return(client: bb.Client, conv: str) -> None:
    async with client.writer(max_batch=16) as w:
        results = await asyncio.gather(*(w.put(conv, f"k{i}", f"v{i}") for i in range(200)))
        assert sorted(r.revision for r in results) == list(range(1, 201))
        assert [r.key for r in results] == [f"k{i}" for i in range(200)]
        appended = await w.append(conv, "log", json={"n": 1})
        assert appended.key.startswith("log/")
        with pytest.raises(bb.ConditionFailed) as conflict:
            await w.put(conv, "k0", "x", expect=bb.Expect.absent())
        assert conflict.value.current_version == 1
        with pytest.raises(bb.KeyNotFound):
            await w.delete(conv, "absent")
        with pytest.raises(bb.InvalidArgument):
            await w.put(conv, "", "x")
        # Awaited one after the other, writes to one key apply in that order.
        for i in range(5):
            await w.put(conv, "ordered", str(i))
        deleted = await w.delete(conv, "k1")
        assert deleted.key == "k1"
    got = await client.get(conv, "ordered")
    assert got.value.data == b"4" and got.version == 5
    assert (await client.get(conv, "k0")).value.data == b"v0"
    with pytest.raises(bb.KeyNotFound):
        await client.get(conv, "k1")
    with pytest.raises(RuntimeError):
        await w.put(conv, "closed", "x")


async def test_the_writer_replays_a_request_id(client: bb.Client, conv: str) -> None:
    async with client.writer() as w:
        first = await w.put(conv, "k", "1", request_id="same")
        second = await w.put(conv, "k", "1", request_id="same")
    direct = await client.put(conv, "k", "1", request_id="same")
    assert not first.replayed and second.replayed and direct.replayed
    assert first.revision == second.revision == direct.revision
    assert (await client.get(conv, "k")).version == 1


async def test_the_writer_rides_out_a_server_restart(tmp_path: Path, redis_server: Any) -> None:
    """Writes sent while the server is down are sent again when it is back: none lost,
    none applied twice."""
    port = free_port()
    args = ("--redis-url", redis_server.url, "--durability", "fast")
    process = ServerProcess(tmp_path / "a", *args)
    process.port = port
    process.start()
    conv = f"t-{uuid.uuid4().hex[:12]}"
    async with bb.connect(f"127.0.0.1:{port}", retry=FAST, timeout=30) as client:
        await client.create_conversation(conv)
        async with client.writer() as w:
            assert (await w.put(conv, "before", "x")).revision == 1
            process.stop()
            pending = [asyncio.create_task(w.put(conv, f"k{i}", "x")) for i in range(20)]
            await asyncio.sleep(0.5)
            restarted = ServerProcess(tmp_path / "b", *args)
            restarted.port = port
            restarted.start()
            try:
                results = await asyncio.gather(*pending)
            finally:
                await w.aclose()
                restarted.stop()
    assert sorted(r.revision for r in results) == list(range(2, 22))


async def test_writes_in_flight_at_a_graceful_stop_are_applied_once(
    tmp_path: Path, redis_server: Any
) -> None:
    """Writers keep writing while the server stops (it answers what it holds, then ends
    the stream UNAVAILABLE) and a new one starts on the same port: every write is
    acknowledged, and the head revision shows none was applied twice."""
    port = free_port()
    args = ("--redis-url", redis_server.url, "--durability", "fast", "--shutdown-grace-s", "5")
    first = ServerProcess(tmp_path / "a", *args)
    first.port = port
    first.start()
    conv = f"t-{uuid.uuid4().hex[:12]}"
    second = ServerProcess(tmp_path / "b", *args)
    second.port = port
    async with bb.connect(f"127.0.0.1:{port}", retry=FAST, timeout=60) as client:
        await client.create_conversation(conv)
        async with client.writer() as w:
            acknowledged: list[int] = []

            async def writer(n: int) -> None:
                for i in range(PER_WRITER):
                    acknowledged.append((await w.put(conv, f"w{n}-{i}", "x")).revision)

            writing = asyncio.gather(*(writer(n) for n in range(16)))
            async with asyncio.timeout(30):
                while len(acknowledged) < 100:  # well under way, far from done
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(first.stop)
            await asyncio.to_thread(second.start)
            try:
                await writing
            finally:
                await w.aclose()
        head = await client.range(conv, page_size=1)
    second.stop()
    assert sorted(acknowledged) == list(range(1, 16 * PER_WRITER + 1))
    assert head.revision == 16 * PER_WRITER
    lines = [json.loads(x) for x in (first.workdir / "server.log").read_text().splitlines()]
    ended = [x for x in lines if x.get("event") == "rpc" and x.get("rpc") == "Blackboard/Write"]
    assert [(x["code"], x["reason"]) for x in ended] == [("UNAVAILABLE", "SHUTTING_DOWN")]


# --- metrics and the access line -----------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_writes_are_counted_by_kind_and_outcome(make_server: ServerFactory) -> None:
    async with (
        make_server(metrics_port=free_port()) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.BlackboardStub(channel)
        conv = f"t-{uuid.uuid4().hex[:12]}"
        await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
        before = await asyncio.to_thread(scrape, running.metrics_port)
        stream = Stream(stub)
        await stream.exchange(numbered(put(conv, "a"), put(conv, "b", request_id="r")))
        await stream.exchange(
            numbered(put(conv, "b", request_id="r"), put(conv, "a", expect=pb.Expect(version=9)))
        )
        await stream.close()
        after = await asyncio.to_thread(scrape, running.metrics_port)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("blackboard_writes_total", kind="put", outcome="ok") == 2
    assert delta("blackboard_writes_total", kind="put", outcome="replayed") == 1
    assert delta("blackboard_writes_total", kind="put", outcome="conflict") == 1
    rpc = {
        "grpc_service": "blackboard.v1.Blackboard",
        "grpc_method": "Write",
        "grpc_type": "bidi_stream",
    }
    assert delta("grpc_server_started_total", **rpc) == 1
    assert delta("grpc_server_msg_received_total", **rpc) == 2
    assert delta("grpc_server_msg_sent_total", **rpc) == 2
    assert delta("grpc_server_handled_total", **rpc, grpc_code="OK") == 1


async def test_a_stream_has_one_access_line_with_its_counts(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "server").start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.BlackboardStub(channel)
            conv = f"t-{uuid.uuid4().hex[:12]}"
            await stub.CreateConversation(pb.CreateConversationRequest(id=conv))
            stream = Stream(stub, metadata=(("x-agent-id", "alice"), ("x-request-id", "w-1")))
            await stream.exchange(numbered(put(conv, "a"), put(conv, "")))
            await stream.exchange(numbered(put(conv, "b"), start=3))
            await stream.close()
    finally:
        process.stop()
    lines = [json.loads(x) for x in (process.workdir / "server.log").read_text().splitlines()]
    writes = [x for x in lines if x.get("event") == "rpc" and x.get("rpc") == "Blackboard/Write"]
    assert len(writes) == 1
    line = writes[0]
    expected = {"code": "OK", "agent": "alice", "request_id": "w-1", "conversation": ""}
    assert line.items() >= {**expected, "messages": 2, "writes": 3, "failed": 1}.items()


# --- authorization, write by write ---------------------------------------------------------


async def test_each_write_is_authorized_for_its_own_conversation(
    tmp_path: Path, backend: str
) -> None:
    """A writer on `c-a*` only: its writes there apply, those to `c-b` are refused one by
    one (PERMISSION_DENIED) and change nothing, and the stream goes on."""
    tokens = TokenFile(tmp_path / "tokens.json")
    admin = tokens.add("acme", "boss", ["admin"])
    scoped = tokens.add("acme", "scoped", ["c-a*:writer"])
    settings = Settings(
        listen="127.0.0.1:0",
        uvloop=False,
        redis_url=backend,
        durability="fast",
        auth="tokens",
        auth_tokens_file=str(tokens.path),
    ).replace()
    async with (
        serve(settings) as running,
        bb.connect(running.address, token=admin, retry=FAST) as boss,
        bb.connect(running.address, token=scoped, retry=FAST) as client,
    ):
        suffix = uuid.uuid4().hex[:8]
        mine, theirs = f"c-a-{suffix}", f"c-b-{suffix}"
        for conv in (mine, theirs):
            await boss.create_conversation(conv)
        await boss.put(theirs, "k", "theirs")
        before = await boss.range(theirs)
        async with client.writer() as w:
            denied = [w.put(theirs, "k", "mine"), w.delete(theirs, "k"), w.append(theirs, "log")]
            allowed = [w.put(mine, f"k{i}", "x") for i in range(5)]
            outcomes = await asyncio.gather(*denied, *allowed, return_exceptions=True)
            assert all(isinstance(o, bb.RoleRequired) for o in outcomes[:3]), outcomes[:3]
            results = [o for o in outcomes[3:] if isinstance(o, bb.WriteResult)]
            assert sorted(r.revision for r in results) == [1, 2, 3, 4, 5]
            assert (await w.put(mine, "after", "x")).revision == 6
        after = await boss.range(theirs)
        assert (after.revision, after.entries) == (before.revision, before.entries)
