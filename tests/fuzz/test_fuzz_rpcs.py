"""Every RPC of blackboard.v1.Blackboard and blackboard.v1.Coordination, fuzzed.

A real server process in embedded mode gets random and edge-case requests, built
field by field from the proto descriptors (huge and odd strings, invalid UTF-8
and deeply nested JSON in bytes fields, extreme numbers, unknown enum values,
empty ids), valid messages with bytes flipped or cut, and plain random bytes
sent as the serialized request through a generic channel call. Many requests
are in flight at once. It checks:

- every status is one that RPC is documented to answer (`ALLOWED`): never
  INTERNAL or UNKNOWN, and the server process never dies or logs a traceback;
- calls aimed at a sentinel conversation that must be refused change nothing in it;
- the server's RSS, after the fuzzed conversations are deleted, is back near
  what it was after a warm-up.

Hypothesis runs derandomized (the same examples every run); a failure prints
the shrunk batch, and `BB_FUZZ_EXAMPLES` scales the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.servers import ServerProcess

SERVICES = [pb.DESCRIPTOR.services_by_name[n] for n in ("Blackboard", "Coordination")]
METHODS: list[MethodDescriptor] = [m for s in SERVICES for m in s.methods]
EXAMPLES = int(os.environ.get("BB_FUZZ_EXAMPLES", "170"))
BATCH = 64  # requests in flight per example
SENTINEL = "fuzz-sentinel"
POOL = [f"fuzz-{i}" for i in range(6)]  # conversations the fuzzed calls mostly aim at
MAX_WAIT_MS = 50  # the server's cap on lock and campaign waits

C = grpc.StatusCode
REFUSED = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}
READ = REFUSED | {C.NOT_FOUND, C.OUT_OF_RANGE}
WRITE = REFUSED | {C.NOT_FOUND, C.FAILED_PRECONDITION}
STREAM = READ | {C.DEADLINE_EXCEEDED, C.CANCELLED}  # our short deadline, our cancel
# What each RPC may answer besides OK, as documented in docs/api.md.
ALLOWED: dict[str, set[grpc.StatusCode]] = {
    "CreateConversation": REFUSED | {C.ALREADY_EXISTS},
    "GetConversation": REFUSED | {C.NOT_FOUND},
    "ListConversations": REFUSED,
    "DeleteConversation": REFUSED | {C.NOT_FOUND},
    "Get": READ,
    "Range": READ,
    "History": READ,
    "Put": WRITE,
    "Delete": WRITE,
    "Append": WRITE,
    "Patch": WRITE | {C.ABORTED},
    "Txn": WRITE,
    "Subscribe": STREAM,
    "Write": STREAM,  # a bad write is refused in its outcome; a bad message ends the stream
    "GrantRole": REFUSED | {C.NOT_FOUND},
    "RevokeRole": REFUSED | {C.NOT_FOUND},
    "ListGrants": REFUSED | {C.NOT_FOUND},
    "OpenSession": REFUSED | {C.NOT_FOUND},
    "KeepAlive": REFUSED | {C.NOT_FOUND},
    "CloseSession": REFUSED | {C.NOT_FOUND},
    "ListSessions": REFUSED | {C.NOT_FOUND},
    "AcquireLock": WRITE | {C.DEADLINE_EXCEEDED},
    "ReleaseLock": WRITE,
    "GetLock": REFUSED | {C.NOT_FOUND},
    "Campaign": WRITE | {C.DEADLINE_EXCEEDED},
    "Proclaim": WRITE,
    "Resign": WRITE,
    "GetLeader": REFUSED | {C.NOT_FOUND},
    "Observe": STREAM,
}

# ---- strategies ------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_odd_strings = st.sampled_from(
    [
        "",
        " ",
        "a" * 129,
        "k" * 513,
        "x" * 70_000,
        "/",
        "a//b",
        "../x",
        "./",
        "a/.",
        "\x00",
        "\x7f",
        "a*b",
        "{}",
        "\\",
        "é",
        "🙂" * 200,
        "\u202e",
        "%2F",
        "a/b/c/" * 50,
        "ünï/cødé",
        "0000000000000001",
        "ffffffffffffffff",
    ]
)
_ids = st.sampled_from([*POOL, SENTINEL.upper(), "missing"])
_strings = st.one_of(_ids, _ids, _text, _odd_strings)


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
).map(lambda v: json.dumps(v).encode())
_bytes = st.one_of(
    st.binary(max_size=64),
    _json,
    st.sampled_from(
        [
            b"",
            b"\xff\xfe\xfd",
            b'{"a": "\xc3\x28"}',
            b'{"a": 1',
            b"null",
            b'{"a": {"b": null}}',
            _deep_json(100),
            _deep_json(20_000),
            b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
            b"x" * (1 << 20),
            b"x" * ((1 << 20) + 1),
            b"1e999999",
            b'"\\ud800"',
        ]
    ),
)
_int64 = st.one_of(
    st.sampled_from([0, 1, -1, 2, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: _strings,
    FieldDescriptor.TYPE_BYTES: _bytes,
    FieldDescriptor.TYPE_INT64: _int64,
    FieldDescriptor.TYPE_SINT64: _int64,
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from([*known, -1, 7, 2**31 - 1])
    return _SCALARS[field.type]


_MESSAGES: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of `descriptor` with a random subset of its fields set to random values."""
    key = (descriptor.full_name, depth)
    if key not in _MESSAGES:
        _MESSAGES[key] = _message(descriptor, depth)
    return _MESSAGES[key]


def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    fields = [f for f in descriptor.fields if depth < 3 or f.type != FieldDescriptor.TYPE_MESSAGE]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for field in (
            draw(st.lists(st.sampled_from(fields), max_size=len(fields))) if fields else []
        ):
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entries = field.message_type.fields_by_name
                pairs = draw(
                    st.dictionaries(
                        _value(entries["key"], depth), _value(entries["value"], depth), max_size=70
                    )
                )
                getattr(msg, field.name).update(pairs)
            elif field.is_repeated:
                items = draw(st.lists(_value(field, depth), max_size=5))
                target = getattr(msg, field.name)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in items:
                        target.add().CopyFrom(item)
                else:
                    target.extend(items)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, field.name).CopyFrom(draw(_value(field, depth)))
            else:
                setattr(msg, field.name, draw(_value(field, depth)))
        return msg

    return build()


@dataclass(frozen=True, repr=False)
class Call:
    method: MethodDescriptor
    payload: bytes

    def __repr__(self) -> str:  # what a failure prints: enough to replay it
        more = "..." if len(self.payload) > 200 else ""
        return f"Call({self.method.name}, {self.payload[:200]!r}{more})"


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    if not data:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 16)))
    out = bytearray(data[: rnd.randrange(len(data) + 1)] if rnd.random() < 0.3 else data)
    for _ in range(rnd.randrange(1, 4)):
        if out:
            out[rnd.randrange(len(out))] = rnd.randrange(256)
    return bytes(out)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["message", "message", "message", "mutated", "raw"]))
    if kind == "raw":
        return Call(method, draw(st.binary(max_size=256)))
    payload = draw(message(method.input_type)).SerializeToString()
    if kind == "mutated":
        payload = _mutate(payload, random.Random(draw(st.integers(0, 2**32))))
    return Call(method, payload)


# ---- the server and the calls --------------------------------------------------------


@dataclass
class Target:
    process: ServerProcess
    loop: asyncio.AbstractEventLoop
    channel: grpc.aio.Channel
    outcomes: Counter[tuple[str, str]]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 120))

    def rss_kib(self) -> int:
        assert self.process.proc is not None
        status = Path(f"/proc/{self.process.proc.pid}/status").read_text()
        return int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )

    async def send_all(self, batch: list[Call], wait_s: float = 0.1) -> list[grpc.StatusCode]:
        return await asyncio.gather(*(self.send(c, wait_s) for c in batch))

    async def send(self, call: Call, wait_s: float = 0.1) -> grpc.StatusCode:
        """Sends the call; a stream is read until its first message or `wait_s`."""
        path = f"/{call.method.containing_service.full_name}/{call.method.name}"
        code = C.OK
        try:
            if call.method.server_streaming:
                if call.method.client_streaming:  # Write: the payload is its one message
                    stream = self.channel.stream_stream(path)(iter([call.payload]), timeout=wait_s)
                else:
                    stream = self.channel.unary_stream(path)(call.payload, timeout=wait_s)
                try:
                    await stream.read()
                finally:
                    stream.cancel()
                code = await stream.code()
                code = C.OK if code == C.CANCELLED else code  # our own cancel after a message
            else:
                await self.channel.unary_unary(path)(call.payload, timeout=30)
        except grpc.aio.AioRpcError as error:
            code = error.code()
        self.outcomes[(call.method.name, code.name)] += 1
        return code


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz")
    process = ServerProcess(
        workdir, "--log-level", "warning", "--max-wait-ms", str(MAX_WAIT_MS), "--uvloop", "false"
    ).start()
    loop = asyncio.new_event_loop()
    # grpc.aio looks the loop up as the current one: after other async tests closed
    # theirs, there is none unless this one is set.
    asyncio.set_event_loop(loop)
    channel = loop.run_until_complete(_open_channel(process.address))
    try:
        yield Target(process, loop, channel, Counter())
    finally:
        loop.run_until_complete(channel.close())
        asyncio.set_event_loop(None)
        loop.close()
        process.stop()
    log = (workdir / "server.log").read_text()
    assert "Traceback" not in log, log[-5000:]


async def _open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)])


async def _seed(channel: grpc.aio.Channel) -> str:
    """The sentinel conversation with entries, a session, a held lock and a leader."""
    bb, coord = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
    await bb.CreateConversation(pb.CreateConversationRequest(id=SENTINEL))
    for i in range(5):
        await bb.Put(
            pb.PutRequest(
                conversation_id=SENTINEL, key=f"k/{i}", value=pb.Value(data=b'{"n": %d}' % i)
            )
        )
    session = await coord.OpenSession(
        pb.OpenSessionRequest(conversation_id=SENTINEL, ttl_ms=300_000)
    )
    sid = session.session_id
    await coord.AcquireLock(
        pb.AcquireLockRequest(conversation_id=SENTINEL, name="l", session_id=sid)
    )
    await coord.Campaign(
        pb.CampaignRequest(conversation_id=SENTINEL, role="r", session_id=sid, value=b"v")
    )
    return sid


async def _sentinel_state(channel: grpc.aio.Channel) -> tuple[Any, ...]:
    bb, coord = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
    c = SENTINEL
    return (
        await bb.GetConversation(pb.GetConversationRequest(id=c)),
        await bb.Range(pb.RangeRequest(conversation_id=c, page_size=1000)),
        await bb.History(pb.HistoryRequest(conversation_id=c, prefix="", page_size=1000)),
        await coord.ListSessions(pb.ListSessionsRequest(conversation_id=c)),
        await coord.GetLock(pb.GetLockRequest(conversation_id=c, name="l")),
        await coord.GetLeader(pb.GetLeaderRequest(conversation_id=c, role="r")),
        await bb.ListGrants(pb.ListGrantsRequest(conversation_id=c)),
    )


# Makes a request to the sentinel one the server must refuse without touching it.
def _spoil(name: str, request: Any, session_id: str) -> None:
    if hasattr(request, "conversation_id"):
        request.conversation_id = SENTINEL
    if name in ("Put", "Delete", "Append", "Patch", "Get"):
        request.key = "bad key*"
    elif name == "Txn":
        request.compares.add(key="")
    elif name in ("Range", "History"):
        request.page_size = -1
    elif name in ("CreateConversation", "GetConversation", "DeleteConversation"):
        request.id = SENTINEL + "/"
    elif name == "OpenSession":
        request.ttl_ms = -1
    elif name in ("KeepAlive", "CloseSession"):
        request.session_id = "not-a-session"
    elif name in ("AcquireLock", "ReleaseLock", "GetLock"):
        request.name = ""
    elif name in ("Campaign", "Proclaim", "Resign", "GetLeader", "Observe"):
        request.role = ""
    elif name == "Subscribe":
        request.start_revision = -1
    elif name in ("ListSessions", "GrantRole", "RevokeRole", "ListGrants"):
        request.conversation_id = SENTINEL + "*"
    elif name == "ListConversations":
        request.page_size = -1
    elif name == "Write":
        for write in request.writes:
            op = write.WhichOneof("op")
            if op is not None:
                getattr(write, op).conversation_id = SENTINEL
                getattr(write, op).key = "bad key*"


# ---- the tests ------------------------------------------------------------------------


@pytest.mark.timeout(600)  # about 40 s on an idle 2-core machine
def test_fuzzed_calls_get_documented_codes_and_leave_memory_as_it_was(target: Target) -> None:
    sentinel_session = target.run(_seed(target.channel))
    before = target.run(_sentinel_state(target.channel))
    for conversation in POOL:
        target.run(
            pb_grpc.BlackboardStub(target.channel).CreateConversation(
                pb.CreateConversationRequest(id=conversation)
            )
        )
    # A warm-up with the same kind of traffic, so the baseline includes what the
    # server keeps for good (code paths imported, caches, pools).
    warm = random.Random(7)
    target.run(_flood(target, [_well_formed(warm) for _ in range(2_000)]))
    target.run(_reset_pool(target.channel))
    baseline = target.rss_kib()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.lists(calls(), min_size=BATCH, max_size=BATCH))
    def fuzz(batch: list[Call]) -> None:
        codes = target.run(target.send_all(batch))
        for call, code in zip(batch, codes, strict=True):
            assert code == C.OK or code in ALLOWED[call.method.name], (call, code)
        assert target.process.proc is not None and target.process.proc.poll() is None

    started = time.monotonic()
    fuzz()
    print(f"\nfuzz: {time.monotonic() - started:.1f} s")

    @settings(
        max_examples=max(EXAMPLES // 8, 10),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(calls(), min_size=BATCH, max_size=BATCH))
    def spoiled(batch: list[Call]) -> None:
        sent = []
        for call in batch:
            request = message_factory.GetMessageClass(call.method.input_type)()
            try:
                request.MergeFromString(call.payload)
            except Exception:
                request.Clear()
            _spoil(call.method.name, request, sentinel_session)
            sent.append(Call(call.method, request.SerializeToString()))
        # Refused streams answer at once; the long wait only keeps a busy machine from
        # turning a slow refusal into our own DEADLINE_EXCEEDED.
        codes = target.run(target.send_all(sent, wait_s=10.0))
        for call, code in zip(sent, codes, strict=True):
            if call.method.client_streaming:
                # Write refuses each bad write in its outcome, on an OK stream; the
                # sentinel's state below shows none was applied.
                assert code in ALLOWED["Write"] - {C.DEADLINE_EXCEEDED} | {C.OK}, (call, code)
            elif call.method.server_streaming:
                assert code in ALLOWED[call.method.name] - {C.DEADLINE_EXCEEDED}, (call, code)
            else:
                assert code != C.OK and code in ALLOWED[call.method.name], (call, code)

    spoiled()
    assert target.run(_sentinel_state(target.channel)) == before

    target.run(_reset_pool(target.channel))
    after = target.rss_kib()
    total = sum(target.outcomes.values())
    print(f"\nfuzz: {total} calls; RSS {baseline} KiB after warm-up, {after} KiB after the run")
    codes: Counter[str] = Counter()
    for (_, code), n in target.outcomes.items():
        codes[code] += n
    print("outcomes:", dict(sorted(codes.items())))
    assert total >= 10_000 or EXAMPLES < 170
    assert not {code for _, code in target.outcomes} & {"INTERNAL", "UNKNOWN"}
    # Back near the baseline: the fuzzed state is deleted; allocator slack remains.
    assert after <= baseline * 1.25 + 32 * 1024, (baseline, after)


def _well_formed(rnd: random.Random) -> Call:
    method = rnd.choice(METHODS)
    request = message_factory.GetMessageClass(method.input_type)()
    conversation = rnd.choice(POOL)
    if hasattr(request, "conversation_id"):
        request.conversation_id = conversation
    for name, value in (("key", f"k/{rnd.randrange(50)}"), ("prefix", "k/"), ("name", "l")):
        if name in method.input_type.fields_by_name:
            setattr(request, name, value)
    if "value" in method.input_type.fields_by_name and method.name in ("Put", "Append"):
        request.value.data = b"x" * rnd.choice([10, 1000, 100_000])
    return Call(method, request.SerializeToString())


async def _flood(target: Target, batch: list[Call]) -> None:
    for start in range(0, len(batch), BATCH):
        await asyncio.gather(*(target.send(c) for c in batch[start : start + BATCH]))


async def _reset_pool(channel: grpc.aio.Channel) -> None:
    """Deletes and re-creates the pool's conversations (and any the fuzzer made)."""
    bb = pb_grpc.BlackboardStub(channel)
    token = ""
    while True:
        page = await bb.ListConversations(pb.ListConversationsRequest(page_token=token))
        for conversation in page.conversations:
            if conversation.id != SENTINEL:
                await bb.DeleteConversation(pb.DeleteConversationRequest(id=conversation.id))
        token = page.next_page_token
        if not token:
            break
    for conversation in POOL:
        await bb.CreateConversation(pb.CreateConversationRequest(id=conversation))
