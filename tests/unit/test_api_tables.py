"""The tables between the proto and the code: error reasons, status codes, RPCs,
and the hand-rolled encoding of event batches."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api import convert, handlers
from blackboard_server.api import errors as api_errors
from blackboard_server.api.servicer import BlackboardServicer
from blackboard_server.domain import errors as e
from blackboard_server.domain.commit import plan
from blackboard_server.domain.model import (
    AppendChild,
    Delete,
    Entry,
    Event,
    Fence,
    FenceKind,
    Op,
    Put,
    WriteBatch,
)
from blackboard_server.services.subscription import (
    EventBatch,
    Progress,
    Reset,
    SnapshotChunk,
    Synced,
    resume_point,
)

PROTO = Path(pb.__file__).with_name("blackboard.proto").read_text()

# One instance of every concrete domain error.
SAMPLES: list[e.BlackboardError] = [
    e.InvalidArgument("key", "must not be empty"),
    e.RequestIdReused("req-1"),
    e.ConversationNotFound("conv"),
    e.KeyNotFound("tasks/1"),
    e.ConversationExists("conv"),
    e.ConditionFailed("tasks/1", 3, 17),
    e.Fenced("lock:writer", 4, 9),
    e.NotJson("doc"),
    e.RetriesExhausted("patch lost 32 races"),
    e.LimitExceeded("max_value_bytes", 2000, 1000),
    e.QuotaExceeded("bytes", 1_000_000, 1_000_042),
    e.RateLimited(20.0, 40, 50),
    e.SlowSubscriber(41, 10_001),
    e.RevisionCompacted(3, 10),
    e.BackendUnavailable("redis", "connection refused"),
    e.ShuttingDown(12),
    e.SessionNotFound("00000000000000ab"),
    e.NoHolder("task/42"),
    e.LockHeld("task/42", "worker-2", 1234),
    e.NotHolder("task/42", 1200),
    e.WaitExpired("task/42", 5000),
    e.CredentialsMissing(),
    e.CredentialsInvalid("unknown token"),
    e.CredentialsExpired(),
    e.RoleRequired("writer", "conv"),
    e.TenantMismatch("acme"),
    e.MethodNotAllowed("/blackboard.v1.Blackboard/Nope"),
]


def domain_error_classes() -> set[type[e.BlackboardError]]:
    return {
        cls
        for cls in vars(e).values()
        if inspect.isclass(cls)
        and issubclass(cls, e.BlackboardError)
        and cls is not e.BlackboardError
        and cls.__module__ == e.__name__
        and "reason" in vars(cls)  # not a grouping base (Unauthenticated, PermissionDenied)
    }


def proto_reasons() -> dict[str, tuple[str, list[str]]]:
    """reason -> (the gRPC code its comment names, the metadata keys it promises)."""
    found: dict[str, tuple[str, list[str]]] = {}
    pattern = re.compile(r"^\s*([A-Z_]+) = \d+;\s*//\s*([A-Z_]+)(?::\s*metadata has ([\w, ]+))?")
    enum = PROTO[
        PROTO.index("enum ErrorReason") : PROTO.index("}", PROTO.index("enum ErrorReason"))
    ]
    for line in enum.splitlines():
        m = pattern.match(line)
        if m:
            keys = [k.strip() for k in (m.group(3) or "").split(",") if k.strip()]
            found[m.group(1)] = (m.group(2), keys)
    return found


# --- error reasons -------------------------------------------------------------


def test_the_samples_cover_every_domain_error_class() -> None:
    assert {type(s) for s in SAMPLES} == domain_error_classes()


def test_every_proto_reason_is_raised_by_some_domain_error() -> None:
    reasons = set(pb.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert reasons == {cls.reason for cls in domain_error_classes()}


def test_every_domain_error_reason_is_in_the_proto_enum() -> None:
    for cls in domain_error_classes() | {e.BlackboardError}:
        assert cls.reason in set(pb.ErrorReason.keys()), cls
    assert len({cls.reason for cls in domain_error_classes()}) == len(domain_error_classes())


def test_the_proto_comments_were_read() -> None:
    reasons = proto_reasons()
    assert set(reasons) == set(pb.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert reasons["FENCED"] == ("FAILED_PRECONDITION", ["fence", "token", "current_token"])


@pytest.mark.parametrize("error", SAMPLES, ids=lambda x: type(x).__name__)
def test_metadata_has_what_the_proto_promises(error: e.BlackboardError) -> None:
    _, keys = proto_reasons()[error.reason]
    assert set(keys) <= set(error.metadata), (error.reason, dict(error.metadata))
    assert all(isinstance(v, str) for v in error.metadata.values())


# --- the status table ------------------------------------------------------------


@pytest.mark.parametrize("error", SAMPLES, ids=lambda x: type(x).__name__)
def test_every_domain_error_maps_to_the_code_the_proto_names(error: e.BlackboardError) -> None:
    code = api_errors.status_code(error)
    assert code is not grpc.StatusCode.INTERNAL
    assert code is not grpc.StatusCode.UNKNOWN
    assert code.name == proto_reasons()[error.reason][0]


def test_every_class_is_in_the_table_and_none_is_shadowed() -> None:
    classes = [cls for cls, _ in api_errors.TABLE]
    for cls in domain_error_classes():
        assert any(issubclass(cls, listed) for listed in classes), cls
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later} is unreachable after {earlier}"


def test_an_error_outside_the_table_is_internal() -> None:
    assert api_errors.status_code(e.BlackboardError("bug")) is grpc.StatusCode.INTERNAL


def decode(status: grpc.Status) -> status_pb2.Status:
    (name, raw), *rest = status.trailing_metadata
    assert not rest
    assert name == "grpc-status-details-bin"
    return status_pb2.Status.FromString(raw)


@pytest.mark.parametrize("error", SAMPLES, ids=lambda x: type(x).__name__)
def test_to_status_packs_error_info(error: e.BlackboardError) -> None:
    status = api_errors.to_status(error)
    code = api_errors.status_code(error)
    assert status.code is code
    assert status.details == error.message
    rich = decode(status)
    assert rich.code == code.value[0]
    assert code_pb2.Code.Name(rich.code) == code.name
    assert rich.message == error.message
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.domain == "blackboard.v1"
    assert info.reason == error.reason
    assert dict(info.metadata) == dict(error.metadata)
    if not isinstance(error, e.InvalidArgument):
        assert len(rich.details) == 1


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (e.InvalidArgument("compares[2].key", "must not be empty"), "compares[2].key"),
        (e.RequestIdReused("r-9"), "request_id"),
    ],
)
def test_to_status_adds_bad_request_for_invalid_arguments(
    error: e.InvalidArgument, field: str
) -> None:
    rich = decode(api_errors.to_status(error))
    assert len(rich.details) == 2
    bad = error_details_pb2.BadRequest()
    assert rich.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == list(error.violations)
    assert bad.field_violations[0].field == field
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.metadata["field"] == field


# --- RPCs and handlers -------------------------------------------------------------


def test_the_servicer_has_a_method_for_every_rpc() -> None:
    names = [m.name for m in handlers.BLACKBOARD.methods]
    assert "Subscribe" in names and "Txn" in names
    for name in names:
        method = getattr(BlackboardServicer, name, None)
        assert method is not None and inspect.iscoroutinefunction(method), name


def test_method_handlers_serve_every_rpc_of_the_descriptor() -> None:
    servicer = BlackboardServicer.__new__(BlackboardServicer)
    table = handlers.method_handlers(handlers.BLACKBOARD, servicer)
    assert set(table) == {m.name for m in handlers.BLACKBOARD.methods}
    for method in handlers.BLACKBOARD.methods:
        handler = table[method.name]
        assert handler.response_streaming is method.server_streaming
        assert handler.request_streaming is method.client_streaming
        behaviour = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[method.client_streaming, method.server_streaming]
        assert behaviour.__wrapped__ == getattr(servicer, method.name)  # type: ignore[union-attr]
        request = handler.request_deserializer(b"")
        assert request.DESCRIPTOR is method.input_type
        # Bytes that do not parse reach the handler as Malformed (INVALID_ARGUMENT), not
        # as a deserializer exception (which grpc would answer with UNKNOWN).
        assert isinstance(handler.request_deserializer(b"\xff\xff"), handlers.Malformed)
        assert handler.response_serializer(b"\x08\x01") == b"\x08\x01"
        assert handler.response_serializer(pb.Progress(revision=1)) == b"\x08\x01"


def test_method_handlers_refuse_a_servicer_missing_an_rpc() -> None:
    class Partial:
        async def Get(self, request: Any, context: Any) -> Any:
            return None

    with pytest.raises(TypeError, match=r"Partial does not implement blackboard\.v1\.Blackboard\."):
        handlers.method_handlers(handlers.BLACKBOARD, Partial())

    class AllButSubscribe:
        pass

    for method in handlers.BLACKBOARD.methods:
        if method.name != "Subscribe":
            setattr(AllButSubscribe, method.name, lambda self, r, c: None)
    with pytest.raises(TypeError, match=r"blackboard\.v1\.Blackboard\.Subscribe$"):
        handlers.method_handlers(handlers.BLACKBOARD, AllButSubscribe())


# --- the change stream's wire form -------------------------------------------------


def commit(state: dict[str, Entry], head: int, *ops: Op, fence: Fence | None = None) -> Event:
    p = plan(
        WriteBatch((), ops, agent_id="agent", request_id=f"r{head}", fence=fence),
        head=head,
        lookup=state.get,
        fence_mark=fence.token if fence else 0,  # the writer holds the current token
        now_ms=1_000 + head,
    )
    assert p.event is not None
    for change in p.event.changes:
        if change.entry is None:
            state.pop(change.key)
        else:
            state[change.key] = change.entry
    return p.event


def events_with_sizes(*sizes: int) -> list[Event]:
    state: dict[str, Entry] = {}
    out = [commit(state, 0, Put("doc", b"v0", "text/plain"), Put("gone", b"x"))]
    for i, size in enumerate(sizes, start=len(out)):
        out.append(
            commit(
                state,
                i,
                Put("doc", b"d" * size, "application/octet-stream", ttl_ms=60_000),
                AppendChild("log", b"m"),
                *([Delete("gone")] if "gone" in state else []),
                fence=Fence(FenceKind.LOCK, "w", i),
            )
        )
    return out


def expected_response(events: list[Event], with_previous: bool) -> pb.SubscribeResponse:
    batch = pb.EventBatch(events=[convert.event(ev, with_previous=with_previous) for ev in events])
    return pb.SubscribeResponse(events=batch)


@pytest.mark.parametrize(
    "sizes",
    [(), (10,), (200,), (20_000,), (5, 200, 20_000), (3_000_000,)],
    ids=["one-small", "small", "over-127", "over-16383", "mixed", "over-2MiB"],
)
def test_cached_wire_bytes_decode_to_the_same_events(sizes: tuple[int, ...]) -> None:
    events = events_with_sizes(*sizes)
    for ev, size in zip(events[1:], sizes, strict=True):
        assert len(convert.encode_event(ev)) > size
    cached = EventBatch(tuple(events), tuple(convert.encode_event(ev) for ev in events))
    raw = convert.stream_item(cached, with_previous=False)
    decoded = pb.SubscribeResponse.FromString(raw)
    expected = expected_response(events, with_previous=False)
    assert decoded == expected
    assert decoded.WhichOneof("message") == "events"
    assert raw == expected.SerializeToString()


def test_cached_and_uncached_events_mix_in_one_batch() -> None:
    events = events_with_sizes(300, 17_000, 1)
    wire = tuple(convert.encode_event(ev) if i % 2 else None for i, ev in enumerate(events))
    raw = convert.stream_item(EventBatch(tuple(events), wire), with_previous=False)
    assert pb.SubscribeResponse.FromString(raw) == expected_response(events, with_previous=False)


def test_uncached_events_carry_previous_entries_when_asked() -> None:
    events = events_with_sizes(200)
    item = EventBatch(tuple(events), (None,) * len(events))
    decoded = pb.SubscribeResponse.FromString(convert.stream_item(item, with_previous=True))
    assert decoded == expected_response(events, with_previous=True)
    changed = decoded.events.events[1].changes
    assert changed[0].previous.value.data == b"v0"  # the put of `doc` replaced v0
    assert changed[2].type == pb.Change.DELETE and changed[2].previous.key == "gone"


@pytest.mark.parametrize(
    "value", [1, 127, 128, 300, 16_383, 16_384, 2**21 - 1, 2**21, 2**28, 2**35, 2**63 - 1]
)
def test_varints_match_protobuf(value: int) -> None:
    # Progress.revision is field 1, varint: a one-byte tag, then the varint.
    assert convert._varint(value) == pb.Progress(revision=value).SerializeToString()[1:]
    assert convert._varint(0) == b"\x00"


def test_other_stream_items() -> None:
    entry = Entry("k", b"v", "text/plain", 2, 1, 5)
    snap = pb.SubscribeResponse.FromString(
        convert.stream_item(SnapshotChunk((entry,), 9), with_previous=False)
    )
    assert snap.snapshot.revision == 9
    assert [(x.key, x.value.data, x.version) for x in snap.snapshot.entries] == [("k", b"v", 2)]
    synced = pb.SubscribeResponse.FromString(convert.stream_item(Synced(9), with_previous=False))
    assert synced.WhichOneof("message") == "synced" and synced.synced.revision == 9
    progress = pb.SubscribeResponse.FromString(
        convert.stream_item(Progress(11), with_previous=True)
    )
    assert progress.WhichOneof("message") == "progress" and progress.progress.revision == 11
    reset = pb.SubscribeResponse.FromString(convert.stream_item(Reset(3, 10), with_previous=False))
    assert reset.WhichOneof("message") == "reset"
    assert (reset.reset.requested_revision, reset.reset.compact_revision) == (3, 10)
    empty = pb.SubscribeResponse.FromString(
        convert.stream_item(SnapshotChunk((), 0), with_previous=False)
    )
    assert empty.WhichOneof("message") == "snapshot"


# --- resume points ---------------------------------------------------------------


def test_resume_point_rules() -> None:
    events = events_with_sizes(1, 1)
    batch = EventBatch(tuple(events[1:]), (None, None))
    assert resume_point(batch, 0) == events[-1].revision
    assert resume_point(Synced(7), -1) == 7
    assert resume_point(Synced(7), 9) == 9
    assert resume_point(Progress(12), 10) == 12
    assert resume_point(Progress(8), 10) == 10  # progress never moves the point back
    assert resume_point(Reset(3, 10), 42) == -1  # what was seen is void: start over
    assert resume_point(SnapshotChunk((), 50), -1) == -1  # a snapshot counts once synced
    assert resume_point(SnapshotChunk((), 50), 4) == 4


def test_resume_point_over_a_whole_stream() -> None:
    events = events_with_sizes(1, 1, 1, 1, 1)  # revisions 1..6
    assert [ev.revision for ev in events] == [1, 2, 3, 4, 5, 6]
    stream = [
        (SnapshotChunk((), 3), -1),
        (SnapshotChunk((), 3), -1),
        (Synced(3), 3),
        (Progress(3), 3),
        (EventBatch(tuple(events[3:5]), (None, None)), 5),
        (Progress(6), 6),  # revision 6 was filtered out, and counts as sent
        (Reset(7, 9), -1),
        (SnapshotChunk((), 12), -1),
        (Synced(12), 12),
        (Progress(12), 12),
    ]
    resume = -1  # a subscribe with start_revision 0
    for item, want in stream:
        resume = resume_point(item, resume)
        assert resume == want, item
