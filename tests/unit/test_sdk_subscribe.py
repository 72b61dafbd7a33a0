"""Subscriptions: the pure resume bookkeeping, the local view, and resuming for real
against a scripted grpc.aio server that breaks its streams on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_client._subscribe import Cursor

FAST = bb.RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002, jitter=0.0)


def entry(key: str, revision: int, data: bytes = b"x") -> bb.Entry:
    return bb.Entry(key, bb.Value(data), 1, revision, revision, 0)


def put(revision: int, key: str) -> bb.Event:
    change = bb.Change(bb.ChangeType.PUT, entry(key, revision))
    return bb.Event(revision, 0, bb.Provenance(), (change,))


def delete(revision: int, key: str) -> bb.Event:
    change = bb.Change(bb.ChangeType.DELETE, entry(key, revision, b""))
    return bb.Event(revision, 0, bb.Provenance(), (change,))


# --- the cursor: pure ---------------------------------------------------------------


def test_a_snapshot_subscription_resumes_after_the_synced_revision() -> None:
    cursor = Cursor(0)
    assert cursor.resume_from() == 0
    list(cursor.accept(bb.Snapshot((entry("a", 1),), 5)))
    assert cursor.resume_from() == 0
    list(cursor.accept(bb.Synced(5)))
    assert cursor.resume_from() == 6
    list(cursor.accept(bb.Events((put(6, "a"), put(7, "b")))))
    assert cursor.resume_from() == 8


def test_a_start_revision_is_where_resuming_begins() -> None:
    cursor = Cursor(10)
    assert cursor.resume_from() == 10
    assert list(cursor.broken()) == []
    assert cursor.resume_from() == 10


def test_events_already_delivered_are_dropped() -> None:
    cursor = Cursor(3)
    assert list(cursor.accept(bb.Events((put(3, "a"),)))) == [bb.Events((put(3, "a"),))]
    again = list(cursor.accept(bb.Events((put(3, "a"), put(4, "b")))))
    assert again == [bb.Events((put(4, "b"),))]
    assert list(cursor.accept(bb.Events((put(4, "b"),)))) == []


def test_progress_moves_the_resume_point_but_never_back() -> None:
    cursor = Cursor(3)
    assert list(cursor.accept(bb.Progress(9))) == [bb.Progress(9)]
    assert cursor.resume_from() == 10
    assert list(cursor.accept(bb.Progress(7))) == []
    assert cursor.resume_from() == 10


def test_a_snapshot_cut_short_is_announced_with_a_reset() -> None:
    cursor = Cursor(0)
    list(cursor.accept(bb.Snapshot((entry("a", 1),), 5)))
    assert list(cursor.broken()) == [bb.Reset(0, 0)]
    assert cursor.resume_from() == 0


def test_a_server_reset_starts_over_from_a_snapshot() -> None:
    cursor = Cursor(4)
    assert list(cursor.accept(bb.Reset(4, 50))) == [bb.Reset(4, 50)]
    assert cursor.resume_from() == 0
    list(cursor.accept(bb.Snapshot((), 60)))
    list(cursor.accept(bb.Synced(60)))
    assert cursor.resume_from() == 61


def test_an_unannounced_snapshot_gets_a_reset_first() -> None:
    cursor = Cursor(4)
    items = list(cursor.accept(bb.Snapshot((), 9)))
    assert items == [bb.Reset(4, 0), bb.Snapshot((), 9)]


# --- the view: pure ----------------------------------------------------------------


def test_the_view_applies_a_snapshot_only_once_it_is_complete() -> None:
    view = bb.View()
    view.apply(bb.Snapshot((entry("a", 1),), 2))
    view.apply(bb.Snapshot((entry("b", 2),), 2))
    assert len(view) == 0 and not view.synced
    view.apply(bb.Synced(2))
    assert sorted(view) == ["a", "b"] and view.revision == 2


def test_the_view_follows_puts_and_deletes() -> None:
    view = bb.View()
    for item in (bb.Snapshot((entry("a", 1),), 1), bb.Synced(1)):
        view.apply(item)
    view.apply(bb.Events((put(2, "b"), delete(3, "a"))))
    assert list(view) == ["b"]
    assert view["b"].mod_revision == 2
    assert view.revision == 3
    view.apply(bb.Progress(8))
    assert view.revision == 8


def test_the_view_keeps_its_state_until_a_reset_snapshot_completes() -> None:
    view = bb.View()
    for item in (bb.Snapshot((entry("a", 1),), 1), bb.Synced(1), bb.Reset(2, 40)):
        view.apply(item)
    view.apply(bb.Snapshot((entry("z", 41),), 41))
    assert list(view) == ["a"]
    view.apply(bb.Synced(41))
    assert list(view) == ["z"] and view.revision == 41


# --- resuming against a scripted server ------------------------------------------------


def _pb_entry(key: str, revision: int) -> pb.Entry:
    return pb.Entry(key=key, version=1, create_revision=revision, mod_revision=revision)


def snapshot(revision: int, *keys: str) -> pb.SubscribeResponse:
    entries = [_pb_entry(k, revision) for k in keys]
    return pb.SubscribeResponse(snapshot=pb.Snapshot(entries=entries, revision=revision))


def synced(revision: int) -> pb.SubscribeResponse:
    return pb.SubscribeResponse(synced=pb.Synced(revision=revision))


def events(*revisions: int) -> pb.SubscribeResponse:
    batch = [
        pb.Event(
            revision=r,
            changes=[pb.Change(type=pb.Change.PUT, entry=_pb_entry(f"k{r}", r))],
        )
        for r in revisions
    ]
    return pb.SubscribeResponse(events=pb.EventBatch(events=batch))


def failure(code: grpc.StatusCode, reason: str, **metadata: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="blackboard.v1", metadata=metadata))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=reason, details=[info])
    )


@dataclass
class Script:
    messages: list[pb.SubscribeResponse]
    end: grpc.Status | None = None  # None: end the stream with OK
    hold: bool = False  # keep the stream open until the client goes away


@dataclass
class ScriptedBlackboard(pb_grpc.BlackboardServicer):
    """Plays one script per Subscribe call and records where each call started."""

    scripts: list[Script] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        self.starts.append(request.start_revision)
        script = self.scripts.pop(0)
        for message in script.messages:
            yield message
        if script.hold:
            await asyncio.Event().wait()
        if script.end is not None:
            await context.abort(script.end.code, script.end.details, script.end.trailing_metadata)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedBlackboard, bb.Client]]:
    servicer = ScriptedBlackboard()  # type: ignore[abstract]  # the stub marks every RPC abstract
    server = grpc.aio.server()
    pb_grpc.add_BlackboardServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with bb.connect(f"127.0.0.1:{port}", retry=FAST) as client:
            yield servicer, client
    finally:
        await server.stop(None)


async def take(subscription: bb.Subscription, count: int) -> list[bb.StreamItem]:
    items = []
    async for item in subscription:
        items.append(item)
        if len(items) == count:
            break
    await subscription.aclose()
    return items


def revisions(items: list[bb.StreamItem]) -> list[int]:
    return [e.revision for item in items if isinstance(item, bb.Events) for e in item.events]


async def test_a_slow_subscriber_resumes_after_the_last_event_delivered(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    servicer.scripts = [
        Script(
            [snapshot(2, "a"), synced(2), events(3, 4)],
            failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "SLOW_SUBSCRIBER", last_revision="4"),
        ),
        Script(
            [events(4, 5)], failure(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", last_revision="5")
        ),
        Script([events(6)]),  # ends with OK: a break like any other
        Script([events(7)]),
    ]
    items = await take(client.subscribe("c"), 6)
    assert servicer.starts == [0, 5, 6, 7]
    assert items[:2] == [bb.Snapshot((entry_of(_pb_entry("a", 2)),), 2), bb.Synced(2)]
    assert revisions(items) == [3, 4, 5, 6, 7]


def entry_of(message: pb.Entry) -> bb.Entry:
    return bb.Entry(message.key, bb.Value(), 1, message.create_revision, message.mod_revision)


async def test_a_stream_cut_mid_snapshot_restarts_behind_a_reset(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    servicer.scripts = [
        Script([snapshot(2, "a")], failure(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")),
        Script([snapshot(3, "a"), snapshot(3, "b"), synced(3), events(4)]),
    ]
    items = await take(client.subscribe("c", start_revision=0), 6)
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["Snapshot", "Reset", "Snapshot", "Snapshot", "Synced", "Events"]
    assert items[1] == bb.Reset(0, 0)
    assert servicer.starts == [0, 0]


async def test_errors_that_are_answers_end_the_subscription(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    servicer.scripts = [
        Script([], failure(grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND", conversation="c")),
    ]
    with pytest.raises(bb.ConversationNotFound):
        await take(client.subscribe("c"), 1)
    assert servicer.starts == [0]


async def test_reconnecting_gives_up_after_the_policys_attempts(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    down = failure(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    servicer.scripts = [Script([], down) for _ in range(FAST.attempts)]
    with pytest.raises(bb.BackendUnavailable):
        await take(client.subscribe("c", start_revision=9), 1)
    assert servicer.starts == [9] * FAST.attempts


async def test_the_mirror_follows_the_stream_through_a_reset(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    servicer.scripts = [
        Script(
            [snapshot(2, "a", "b"), synced(2)],
            failure(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"),
        ),
        Script(
            [
                pb.SubscribeResponse(reset=pb.Reset(requested_revision=3, compact_revision=9)),
                snapshot(10, "z"),
                synced(10),
                events(11),
            ],
            hold=True,
        ),
    ]
    async with client.mirror("c") as mirror:
        await mirror.wait_until(lambda view: view.revision == 11, timeout=10)
        assert sorted(mirror) == ["k11", "z"]
        assert mirror.revision == 11
        assert servicer.starts == [0, 3]


async def test_the_mirror_raises_what_ended_its_stream(
    scripted: tuple[ScriptedBlackboard, bb.Client],
) -> None:
    servicer, client = scripted
    servicer.scripts = [
        Script(
            [snapshot(2, "a"), synced(2)], failure(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        ),
        Script([], failure(grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")),
    ]
    with pytest.raises(bb.ConversationNotFound):
        async with client.mirror("c") as mirror:
            assert list(mirror) == ["a"]
            await mirror.wait_until(lambda view: "b" in view, timeout=10)
